"""`rankt5 compare`: runs against a baseline with paired significance tests, as a table.

Reads the qrels and the runs (files or `irds:` ids), computes per-query values of the metrics
over every judged query (a judged query a run misses counts 0, as trec_eval -c), tests each run
against the baseline (`evaluation/compare.py`) and prints a Markdown table; `--output` writes it
as Markdown or, for a `.tex` file, LaTeX; `--json` prints one JSON object on the last line;
`--plot` draws the per-query differences. Imports no JAX.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from rankt5_jax.errors import ConfigError


def run_names(paths: Sequence[str]) -> list[str]:
    """Short names for runs: the file name without its extension where that is unique among
    `paths`, else the path as given (an `irds:` id stays whole)."""
    import os

    stems = [
        p if p.startswith("irds:") else os.path.splitext(os.path.basename(p.rstrip("/")))[0] or p
        for p in paths
    ]
    return [stem if stems.count(stem) == 1 else path for stem, path in zip(stems, paths)]


def compare_files(
    qrels_path: str,
    run_paths: Sequence[str],
    baseline_path: str | None = None,
    **kwargs,
):
    """`evaluation.compare.compare_runs` over files (TREC runs and qrels, or `irds:` ids). A
    baseline that is not one of `run_paths` goes first; runs are named by `run_names`."""
    from rankt5_jax.data import formats
    from rankt5_jax.evaluation import compare

    paths = list(dict.fromkeys(run_paths))
    if baseline_path is not None and baseline_path not in paths:
        paths.insert(0, baseline_path)
    if len(paths) < 2:
        raise ConfigError("compare needs at least two different runs (or a run and a --baseline)")
    names = run_names(paths)
    qrels = formats.read_qrels(qrels_path)
    runs = {name: formats.read_run(path) for name, path in zip(names, paths)}
    baseline = names[paths.index(baseline_path)] if baseline_path is not None else names[0]
    comparison = compare.compare_runs(runs, qrels, baseline=baseline, **kwargs)
    comparison.sources = dict(zip(names, paths))
    return comparison


def _compare(args: argparse.Namespace) -> int:
    from rankt5_jax.data import formats

    outputs = list(args.output or [])
    for path in outputs + ([args.plot] if args.plot else []):
        formats.check_output_path(path)
    comparison = compare_files(
        args.qrels,
        args.runs,
        args.baseline,
        metrics=[m for m in args.metrics.split(",") if m],
        test=args.test,
        alpha=args.alpha,
        correction=args.correction,
        permutations=args.permutations,
        seed=args.seed,
        rel=args.rel,
    )
    table = comparison.markdown()
    for path in outputs:
        text = comparison.latex() if path.endswith(".tex") else table
        with open(path, "w") as handle:
            handle.write(text)
    if args.plot:
        from rankt5_jax.evaluation import plots

        plots.plot_differences(comparison, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    print(table, end="")
    if args.json:
        print(json.dumps(comparison.to_json()))
    return 0


def add_parsers(sub) -> None:
    cp = sub.add_parser(
        "compare",
        help="compare runs against a baseline: per-query metrics, paired significance tests, "
        "Markdown/LaTeX table",
    )
    cp.add_argument(
        "--qrels", required=True, help="TREC qrels, BEIR TSV or irds:ID; its queries are tested"
    )
    cp.add_argument(
        "--runs", nargs="+", required=True, help="TREC runs (or irds:ID) to compare, in table order"
    )
    cp.add_argument(
        "--baseline",
        help="the run every other run is tested against (default: the first of --runs; added "
        "first if not among them)",
    )
    cp.add_argument(
        "--metrics",
        default="RR@10,nDCG@10,AP",
        help="comma-separated ir-measures names: RR@k, nDCG@k, AP, R@k, P@k, RR(rel=2)@10, ...",
    )
    cp.add_argument("--rel", type=int, default=1, help="minimum grade for binary measures")
    cp.add_argument(
        "--test",
        choices=["ttest", "randomization"],
        default="ttest",
        help="paired two-sided test: Student's t-test (scipy, as RankT5) or a sign-flip "
        "randomization test",
    )
    cp.add_argument("--alpha", type=float, default=0.05, help="significance level (p <= alpha)")
    cp.add_argument(
        "--correction",
        choices=["holm", "bonferroni", "none"],
        default="holm",
        help="multiple-comparison correction over the runs tested on one metric",
    )
    cp.add_argument(
        "--permutations",
        type=int,
        default=10_000,
        help="random sign assignments of the randomization test",
    )
    cp.add_argument("--seed", type=int, default=0, help="seed of the randomization test")
    cp.add_argument(
        "--json",
        action="store_true",
        help="also print one JSON object (means, tests, query counts) on the last line",
    )
    cp.add_argument(
        "--output",
        action="append",
        help="write the table to this file: LaTeX for .tex, else Markdown (repeatable)",
    )
    cp.add_argument(
        "--plot",
        help="draw the per-query differences (sorted bars per run and metric) to this PNG "
        "(needs matplotlib: the plots extra)",
    )
    cp.set_defaults(func=_compare)
