"""`rankt5 sweep`: zero-shot re-ranking over BEIR-layout folders, one table with the average
(`experiments/sweep.py`). JAX is imported only when a dataset is re-ranked."""

from __future__ import annotations

import argparse
import json


def _sweep(args: argparse.Namespace) -> int:
    from rankt5_jax.experiments import sweep

    result = sweep.sweep(
        checkpoint=args.checkpoint,
        datasets=args.datasets,
        output_dir=args.output_dir,
        first_stage=args.first_stage,
        split=args.split,
        top_k=args.top_k,
        metrics=[m for m in args.metrics.split(",") if m],
        rerank_options={
            "batch_size": args.batch_size,
            "batch_tokens": args.batch_tokens,
            "max_length": args.max_length,
            "vocab": args.vocab,
            "variant": args.variant,
            "dtype": args.dtype,
            "allow_pickle": args.allow_pickle or None,
        },
        progress=not args.quiet,
        missing=args.missing,
    )
    print(result.markdown(), end="")
    if args.json:
        print(json.dumps(result.to_json()))
    return 0


def add_parsers(sub) -> None:
    from rankt5_jax.cli import flags

    sw = sub.add_parser(
        "sweep",
        help="zero-shot sweep: first stage, re-rank, evaluate over BEIR-layout folders; one "
        "table with the average (resumes per dataset)",
    )
    sw.add_argument(
        "--checkpoint",
        required=True,
        help="our model dir, a Hugging Face T5 dir, a T5X dir, or a FiT5 authors' checkpoint",
    )
    sw.add_argument(
        "--datasets",
        nargs="+",
        required=True,
        help="BEIR-layout folders (corpus.jsonl, queries.jsonl, qrels/<split>.tsv), named by "
        "their folder names",
    )
    sw.add_argument(
        "--first_stage",
        default="bm25",
        help="'bm25' (retrieve with BM25), or a TREC run file: inside each dataset folder, or "
        "a path with {dataset} for the folder's name",
    )
    sw.add_argument(
        "--output_dir",
        required=True,
        help="per-dataset runs and metrics in OUT/<dataset>/, the table in OUT/table.md (with "
        "the datasets earlier calls finished in OUT with the same settings)",
    )
    sw.add_argument("--split", default="test", help="the qrels split: qrels/<split>.tsv")
    sw.add_argument(
        "--top_k",
        type=flags.positive_int,
        default=1000,
        help="documents retrieved and re-ranked per query",
    )
    flags.add_metrics(sw, rel=False, missing=None)  # the one default (RankT5's Table 2: nDCG@10)
    flags.add_scoring_flags(sw)
    flags.add_missing(sw, "zero")
    sw.add_argument("--quiet", action="store_true", help="no progress lines")
    sw.add_argument(
        "--json",
        action="store_true",
        help="also print one JSON object (per-dataset means, tests, average) on the last line",
    )
    sw.set_defaults(func=_sweep)
