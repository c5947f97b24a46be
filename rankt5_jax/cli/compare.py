"""`rankt5 compare`: runs against a baseline with paired significance tests, as a table.

Reads the qrels and the runs (files, `-` for stdin, or `irds:` ids), computes per-query values
of the metrics over every judged query (`--missing zero`, the default here: a judged query a run
misses counts 0, as trec_eval -c; `--missing skip`: it is left out, as `rankt5 evaluate` does),
tests each run against the baseline (`evaluation/compare.py`) and prints a Markdown table;
`--output` writes it as Markdown or, for a `.tex` file, LaTeX, or for a `.json` file as JSON with
the per-query values and what ranx needs to give the same values and p-values
(`Comparison.table_json`); `--json` prints one JSON object on the last line; `--plot` draws the per-query differences. A run that lacks more than
`WARN_MISSING` of the judged queries is named on stderr. Imports no JAX.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from rankt5_jax.cli import flags
from rankt5_jax.errors import ConfigError

WARN_MISSING = 0.10  # a run lacking more than this share of the judged queries is named


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
    strict: bool = True,
    **kwargs,
):
    """`evaluation.compare.compare_runs` over files (TREC runs and qrels, `-` for stdin, or
    `irds:` ids). A baseline that is not one of `run_paths` goes first; runs are named by
    `run_names`. `strict=False` skips malformed lines and reports them on stderr."""
    from rankt5_jax.data import formats
    from rankt5_jax.evaluation import compare

    paths = list(dict.fromkeys(run_paths))
    if baseline_path is not None and baseline_path not in paths:
        paths.insert(0, baseline_path)
    if len(paths) < 2:
        raise ConfigError("compare needs at least two different runs (or a run and a --baseline)")
    if [qrels_path, *paths].count(formats.STDIN) > 1:
        raise ConfigError("only one of --qrels, --runs and --baseline can be '-' (stdin)")
    names = run_names(paths)
    skips = formats.Skips()
    qrels = formats.read_qrels(qrels_path, strict=strict, skips=skips)
    runs = {
        name: formats.read_run(path, strict=strict, skips=skips) for name, path in zip(names, paths)
    }
    if skips.total:
        print(f"rankt5: {skips.summary()}", file=sys.stderr)
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
        strict=not args.lenient,
        missing=args.missing,
        metrics=flags.metric_names(args.metrics),
        test=args.test,
        alpha=args.alpha,
        correction=args.correction,
        permutations=args.permutations,
        seed=args.seed,
        rel=args.rel,
    )
    for line in coverage_lines(comparison):
        print(f"rankt5: {line}", file=sys.stderr)
    table = comparison.markdown()
    for path in outputs:
        if path.endswith(".json"):
            text = json.dumps(comparison.table_json(), indent=1) + "\n"
        else:
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


def coverage_lines(comparison) -> list[str]:
    """Per run: over how many queries its means are and how many judged queries it lacks; a
    warning for a run lacking more than `WARN_MISSING` of them."""
    judged = len(comparison.qids)
    lines = []
    for name, values in comparison.runs.items():
        how = "counted 0" if comparison.missing == "zero" else "left out"
        lines.append(
            f"{name}: mean over {values.evaluated} queries (--missing {comparison.missing}); "
            f"lacks {values.missing} of the {judged} judged queries ({how})"
        )
        if judged and values.missing > WARN_MISSING * judged:
            lines.append(
                f"warning: run {name} lacks {values.missing} of the {judged} judged queries "
                f"({values.missing / judged:.0%}); with --missing zero they count 0 in its mean "
                "and in every test, with --missing skip they are left out"
            )
    return lines


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
        "--runs",
        nargs="+",
        required=True,
        help="TREC runs (or irds:ID; one may be '-' for stdin) to compare, in table order",
    )
    cp.add_argument(
        "--baseline",
        help="the run every other run is tested against (default: the first of --runs; added "
        "first if not among them)",
    )
    flags.add_metrics(cp, missing="zero")
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
        type=flags.positive_int,
        default=10_000,
        help="random sign assignments of the randomization test",
    )
    cp.add_argument("--seed", type=int, default=0, help="seed of the randomization test")
    flags.add_json(cp, "the means, tests and query counts")
    flags.add_lenient(cp)
    cp.add_argument(
        "--output",
        action="append",
        help="write the table to this file: LaTeX for .tex; for .json the --json object "
        "with the per-query values, the tie order, and the qrels and runs as ranx reads them "
        "(ties broken in trec_eval's order); else Markdown (repeatable)",
    )
    cp.add_argument(
        "--plot",
        help="draw the per-query differences (sorted bars per run and metric) to this PNG "
        "(needs matplotlib: the plots extra)",
    )
    cp.set_defaults(func=_compare)
