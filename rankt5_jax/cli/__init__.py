"""The `rankt5` command (also `python -m rankt5_jax`): train, rerank, evaluate, prepare, convert, ...

A thin layer: every subcommand parses flags and calls a library function. The commands of a
later pipeline stage live in their own modules here (`rankt5_jax/cli/<name>.py`, each with
`add_parsers(sub)`), listed in `_COMMAND_MODULES`. User errors
(`RankT5Error`) print one line to stderr and exit with status 2. Nothing heavy (JAX, TensorFlow)
is imported before a subcommand needs it, and their start-up logs are silenced first.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

from rankt5_jax import quiet
from rankt5_jax.cli import flags
from rankt5_jax.errors import RankT5Error

# seqio and tf.data; the other commands never import it. `train` imports it once its flags are
# checked (`training/gin_flags.py`), so a mistyped flag is refused in well under 2 s.
_USES_TENSORFLOW = ("prepare",)
# Modules of rankt5_jax.cli whose `add_parsers(sub)` add more subcommands (in this order).
_COMMAND_MODULES: tuple[str, ...] = ("compare", "retrieve", "sweep", "token_index")


def _evaluate(args: argparse.Namespace) -> int:
    from rankt5_jax.data import formats
    from rankt5_jax.errors import ConfigError
    from rankt5_jax.evaluation import measures as measures_lib

    measures = flags.metric_names(args.metrics)
    if not measures:
        raise ConfigError("--metrics: no metric given")
    for measure in measures:
        measures_lib.Measure.parse(measure, default_rel=args.rel)
    if args.plot:
        formats.check_output_path(args.plot)
    skips = formats.Skips()
    run = formats.read_run(args.run, strict=not args.lenient, skips=skips)
    qrels = formats.read_qrels(args.qrels, strict=not args.lenient, skips=skips)
    if skips.total:
        print(f"rankt5: {skips.summary()}", file=sys.stderr)
    counts = measures_lib.query_counts(run, qrels, args.missing)
    if counts.judged and counts.ranked and counts.missing == counts.judged:
        raise ConfigError(
            f"the run {args.run} shares no query with the qrels {args.qrels} ({counts.ranked} "
            f"ranked, {counts.judged} judged queries; e.g. run {sorted(run)[0]!r}, qrels "
            f"{sorted(qrels)[0]!r})"
        )
    result = measures_lib.evaluate_run(run, qrels, measures, rel=args.rel, missing=args.missing)
    if args.plot:
        from rankt5_jax.evaluation import plots

        plots.plot_score_distributions(run, qrels, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    print(f"rankt5: {counts.describe()}", file=sys.stderr)
    if args.json:
        print(json.dumps(result))
    else:
        for name, value in result.items():
            print(f"{name}\t{value:.4f}")
        print(f"queries\t{counts.evaluated}")
    return 0


def _rerank(args: argparse.Namespace) -> int:
    flags.start_processes(args)  # before anything touches a JAX device
    from rankt5_jax.inference import journal, rerank
    from rankt5_jax.inference.ranker import parse_mesh

    load = rerank.LoadOptions(
        variant=args.variant,
        dtype=args.dtype,
        vocab=args.vocab,
        max_length=args.max_length,
        batch_size=args.batch_size,
        batch_tokens=args.batch_tokens,
        allow_pickle=args.allow_pickle,
        mesh_shape=parse_mesh(args.mesh) if args.mesh is not None else None,
    )
    search = rerank.SearchOptions(args.token_k, args.exact_search, args.nprobe)
    options = rerank.RerankOptions(
        top_k=args.top_k,
        keep_rest=args.keep_rest,
        chunk_pairs=args.chunk_pairs,
        tag=args.tag,
        strict=not args.lenient,
        json_metrics=args.json,
        missing=args.missing,
    )
    if args.fuse is not None:  # the retrieval fused with --fuse (RRF) is the run re-ranked
        from rankt5_jax.retrieval.xtr_retriever import fused_first_stage

        args.run, args.index_dir = fused_first_stage(
            args.index_dir, args.queries, args.fuse, args.output, args.checkpoint, args.top_k,
            args.token_k, args.exact_search, args.nprobe, strict=not args.lenient,
        ), None  # fmt: skip
    try:
        rerank.rerank_files(
            args.checkpoint,
            args.queries,
            args.corpus,
            args.run,
            args.output,
            args.qrels,
            index_dir=args.index_dir,
            load=load,
            search=search,
            options=options,
        )
    except journal.Stopped as stopped:  # SIGTERM: the finished chunks are journaled
        print(f"rankt5: {stopped}", file=sys.stderr)
        return journal.STOPPED_EXIT
    return 0


def _convert(args: argparse.Namespace) -> int:
    from rankt5_jax.checkpoints import convert

    convert.convert(
        args.source,
        args.input,
        args.output,
        args.variant,
        args.vocab,
        args.allow_pickle,
        to=args.to,
        step=args.step,
    )
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from rankt5_jax.data import formats, prepare

    formats.check_output_dir(args.output_dir)
    prepare.prepare(
        args.queries,
        args.corpus,
        args.qrels,
        args.run,
        args.output_dir,
        split=args.split,
        top_k=args.top_k,
        num_shards=args.num_shards,
        include_title=not args.no_title,
        require_positive=not args.keep_queries_without_positive,
        strict=not args.lenient,
        random_negatives=args.random_negatives,
    )
    return 0


def _train(argv: list[str], verbose: bool = False) -> int:
    from rankt5_jax.training import gin_flags

    if any(arg in ("-h", "--help") for arg in argv):
        print(gin_flags.HELP)
        return 0
    gin_flags.main_from_flags(argv, verbose=verbose)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = flags.Parser(prog="rankt5", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--version", action="version", version=f"rankt5 {version()}", help="print the version"
    )
    flags.add_verbose(parser)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=flags.Parser)

    sub.add_parser(
        "train",
        help="train with gin configs: --gin_file=FILE [--gin_file=...] [--gin.NAME=VALUE ...] "
        "(rankt5 train --help for more)",
        add_help=False,
    )

    ev = sub.add_parser("evaluate", help="evaluate a TREC run against qrels (trec_eval-equal)")
    ev.add_argument(
        "--run", required=True, help="TREC run: qid Q0 docid rank score tag ('-' for stdin)"
    )
    ev.add_argument(
        "--qrels", required=True, help="TREC qrels (qid 0 docid rel), BEIR TSV or irds:ID"
    )
    flags.add_metrics(ev, missing="skip")
    flags.add_json(ev)
    flags.add_lenient(ev)
    ev.add_argument(
        "--plot", help="draw the score distribution per relevance grade to this PNG (plots extra)"
    )
    ev.set_defaults(func=_evaluate)

    rr = sub.add_parser("rerank", help="re-rank a TREC run with a ranking checkpoint")
    rr.add_argument(
        "--checkpoint",
        required=True,
        help="our model dir, a Hugging Face T5 dir, a T5X dir, or a FiT5 authors' checkpoint",
    )
    rr.add_argument("--queries", required=True, help="queries.jsonl (_id, text) or qid<TAB>text")
    rr.add_argument(
        "--corpus", required=True, help="corpus.jsonl (_id, title, text) or docid<TAB>text"
    )
    first_stage = rr.add_mutually_exclusive_group(required=True)
    first_stage.add_argument(
        "--run",
        help="the run to re-rank ('-' for stdin): TREC 'qid Q0 docid rank score tag', or MS "
        "MARCO 'qid docid rank' (not for FiT5 with features: it reads the scores)",
    )
    first_stage.add_argument(
        "--index_dir",
        help="instead of --run (UR2N): retrieve each query's top_k from this token index "
        "(`rankt5 index`) with the checkpoint's XTR layer, then re-rank with the same checkpoint",
    )
    flags.add_search_flags(rr)  # with --index_dir
    rr.add_argument(
        "--fuse",
        metavar="RUN",
        help="--index_dir: fuse the retrieval with this TREC run (RRF, k 60) and re-rank that "
        "(kept as OUTPUT.fused.run)",
    )
    rr.add_argument("--output", required=True, help="where to write the re-ranked TREC run")
    rr.add_argument("--qrels", help="also print the metrics of both runs against these qrels")
    flags.add_missing(rr, "skip")
    rr.add_argument(
        "--top_k", type=flags.positive_int, default=1000, help="re-rank the top k of each query"
    )
    rr.add_argument(
        "--keep_rest",
        action="store_true",
        help="also write the first stage's candidates below top_k, in their first-stage order, "
        "scored below the re-ranked ones (as TREC submissions do)",
    )
    rr.add_argument("--tag", help="the run tag (default: the model's variant name)")
    rr.add_argument(
        "--chunk_pairs",
        type=flags.positive_int,
        default=8192,
        help="pairs scored per chunk (whole queries); finished chunks are journaled in "
        "OUTPUT.journal, so the same command after a kill or SIGTERM continues from them",
    )
    flags.add_scoring_flags(rr)
    flags.add_lenient(rr)
    flags.add_json(rr)
    rr.add_argument(
        "--mesh",
        metavar="data=D,model=M",
        help="serve across D x M devices (all of them): params sharded over the M of the "
        "model axis (3B/11B rankers), batches over D (default: batches over every device)",
    )
    flags.add_process_flags(rr)
    rr.set_defaults(func=_rerank)

    pp = sub.add_parser("prepare", help="write per-query TFRecords for training/evaluation")
    pp.add_argument("--queries", required=True, help="queries.jsonl or qid<TAB>text")
    pp.add_argument("--corpus", required=True, help="corpus.jsonl or docid<TAB>text")
    pp.add_argument("--qrels", required=True, help="TREC qrels or BEIR TSV")
    pp.add_argument("--run", required=True, help="first-stage TREC run (candidates, negatives)")
    pp.add_argument("--output_dir", required=True, help="where the TFRecord shards go")
    pp.add_argument("--split", default="train", help="split name of the shards (train, dev, ...)")
    pp.add_argument(
        "--top_k", type=flags.positive_int, default=1000, help="candidates kept per query"
    )
    pp.add_argument(
        "--num_shards", type=flags.positive_int, default=16, help="TFRecord shards to write"
    )
    pp.add_argument("--no_title", action="store_true", help="do not prepend titles")
    pp.add_argument(
        "--keep_queries_without_positive",
        action="store_true",
        help="keep queries whose candidates hold no relevant document (for evaluation splits)",
    )
    pp.add_argument(
        "--random_negatives",
        type=flags.non_negative_int,
        default=0,
        help="passages drawn from the whole corpus added to each query's candidates",
    )
    flags.add_lenient(pp)
    pp.set_defaults(func=_prepare)

    cv = sub.add_parser(
        "convert",
        help="convert a checkpoint to a Hugging Face T5 directory (--to hf: our model "
        "directories, hf, t5x) or to our model directory (--to rankt5: fit5, the FiT5 authors' "
        "PyTorch state dict, and any other kind)",
    )
    cv.add_argument(
        "--from",
        dest="source",
        choices=["rankt5", "hf", "t5x", "fit5"],
        help="the input's format: rankt5 (our model directory), hf, t5x, fit5 (default: "
        "detected from the input)",
    )
    cv.add_argument(
        "--to",
        choices=["hf", "rankt5"],
        help="the output's format: hf (config.json, model.safetensors, spiece.model and "
        "tokenizer files for transformers) or rankt5 (our model directory) (default: rankt5 "
        "for fit5, else hf)",
    )
    cv.add_argument(
        "--input",
        required=True,
        help="the checkpoint directory to read (fit5: the .safetensors/.bin file or its directory)",
    )
    cv.add_argument(
        "--output",
        required=True,
        help="the directory to write (Hugging Face, or our model directory with --to rankt5)",
    )
    cv.add_argument(
        "--step", type=int, help="our model directory's checkpoint step (default: the latest)"
    )
    flags.add_variant(cv, extra="; fit5 for --from fit5")
    cv.add_argument("--vocab", help="spiece.model to copy alongside (default: the input's)")
    flags.add_allow_pickle(cv)
    cv.set_defaults(func=_convert)

    for name in _COMMAND_MODULES:
        importlib.import_module(f"rankt5_jax.cli.{name}").add_parsers(sub)
    for name, command in sub.choices.items():
        if name != "train" and "--verbose" not in command._option_string_actions:
            flags.add_verbose(command)
    return parser


def version() -> str:
    """The installed distribution's version (setup.py), else the package's `__version__`."""
    from importlib import metadata

    try:
        return metadata.version("rankt5_jax")
    except metadata.PackageNotFoundError:
        from rankt5_jax import __version__

        return __version__


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in argv
    if verbose:
        quiet.verbose_logs()
    else:
        quiet.silence_startup_logs()
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    if command in _USES_TENSORFLOW and not {"-h", "--help"} & set(argv):
        quiet.import_tensorflow(verbose=verbose)
    try:
        if command == "train":  # its flags are checked before TensorFlow or JAX is imported
            rest = argv[argv.index("train") + 1 :]
            return _train([arg for arg in rest if arg != "--verbose"], verbose)
        args = build_parser().parse_args(argv)
        return args.func(args)
    except RankT5Error as err:
        print(f"rankt5: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rankt5: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `rankt5 compare ... | head`: the reader left; say nothing more
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
