"""`rankt5 rerank`: files in, a run file out (`rerank_files`), around `run_scoring.rerank_run`
(a loaded `Ranker`, runs in memory; re-exported here with `process_part`).

`rerank_files` checks the output (a new file, not one of the inputs), loads the checkpoint, reads
the queries, the run (or retrieves it from a token index with the same checkpoint: UR2N) and the
corpus, calls `rerank_run` with the journal `<output>.journal` (a killed or SIGTERMed call
continues from its finished chunks: `inference.journal`), writes the run, removes the journal and
prints the metrics of both runs against qrels.

Several processes (`rankt5 rerank --multihost`, one per host or per GPU): every process reads the
queries, the run and the corpus and scores its part of the queries (`rerank_run`); process 0
alone writes the run and prints the metrics, so the output is one run with every query once, as
from one process.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

import jax

from rankt5_jax.data import formats, paths
from rankt5_jax.errors import ConfigError
from rankt5_jax.evaluation import measures
from rankt5_jax.inference import journal as journal_lib
from rankt5_jax.inference.ranker import Ranker
from rankt5_jax.inference.run_scoring import (  # noqa: F401 (re-exported)
    Run,
    model_fingerprint,
    process_part,
    rerank_run,
)
from rankt5_jax.modeling import multihost
from rankt5_jax.modeling.partitioning import Partitioner
from rankt5_jax.retrieval import base as retrieval_base


@dataclasses.dataclass(frozen=True)
class LoadOptions:
    """How `rerank_files` loads the checkpoint (`Ranker.load`'s arguments of the same names;
    `mesh_shape`: `(data, model)` to serve a large model across devices, else the batches split
    over all local devices with the params replicated)."""

    variant: str | None = None
    dtype: str | None = None
    vocab: str | None = None
    max_length: int = 512
    batch_size: int = 64
    batch_tokens: int | None = None
    allow_pickle: bool = False
    mesh_shape: tuple[int, int] | None = None

    def load(self, checkpoint: str) -> Ranker:
        devices = jax.local_devices()
        partitioner = None
        if self.mesh_shape is None and len(devices) > 1 and self.batch_size % len(devices) == 0:
            partitioner = Partitioner(data_axis_size=len(devices), devices=devices)
        return Ranker.load(
            checkpoint,
            partitioner=partitioner,
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)},
        )


@dataclasses.dataclass(frozen=True)
class SearchOptions:
    """The first stage with a token index (`index_dir`, UR2N): `token_k` tokens per query token;
    `exact_search` over the float vectors, else Faiss with `nprobe` lists."""

    token_k: int | None = None  # None: xtr_search.default_token_k of the index
    exact_search: bool = False
    nprobe: int = 32


@dataclasses.dataclass(frozen=True)
class RerankOptions:
    """What `rerank_files` re-ranks and writes.

    Attributes:
      top_k, keep_rest, chunk_pairs, progress: as `rerank_run`'s.
      resume: journal the finished chunks in `<output>.journal` (removed once the run is
        written) and continue from them.
      tag: the run tag (default: the model's variant name).
      strict: raise on malformed input lines (else skip and count them).
      json_metrics: print the metrics as one JSON object.
      missing: judged queries the run does not rank: `skip` leaves them out of the means
        (trec_eval's default, as `rankt5 evaluate`), `zero` counts them 0 (trec_eval -c).
    """

    top_k: int = 1000
    keep_rest: bool = False
    chunk_pairs: int = 8192
    progress: bool = True
    resume: bool = True
    tag: str | None = None
    strict: bool = True
    json_metrics: bool = False
    missing: str = "skip"


def split_options(
    load: LoadOptions | None = None,
    search: SearchOptions | None = None,
    options: RerankOptions | None = None,
    **overrides: Any,
) -> tuple[LoadOptions, SearchOptions, RerankOptions]:
    """The three option groups, with `overrides` (any of their fields, by name) applied."""
    groups = [load or LoadOptions(), search or SearchOptions(), options or RerankOptions()]
    for index, group in enumerate(groups):
        names = {f.name for f in dataclasses.fields(group)}
        mine = {key: overrides.pop(key) for key in list(overrides) if key in names}
        groups[index] = dataclasses.replace(group, **mine)
    if overrides:
        raise TypeError(f"rerank_files got unexpected keyword arguments {sorted(overrides)}")
    return groups[0], groups[1], groups[2]


def check_paths(output_path: str, inputs: Mapping[str, str | None]) -> None:
    """Refuses an output that is one of the inputs (before any work), then makes and checks
    its folder."""
    target = os.path.realpath(output_path)
    for flag, path in inputs.items():
        if path and path != "-" and os.path.realpath(path) == target:
            raise ConfigError(
                f"--output {output_path} is the {flag} file (--{flag}): it would be overwritten; "
                "give another output path"
            )
    formats.check_output_path(output_path)


def rerank_files(
    checkpoint: str,
    queries_path: str,
    corpus_path: str,
    run_path: str | None = None,
    output_path: str | None = None,
    qrels_path: str | None = None,
    *,
    index_dir: str | None = None,
    ranker: Ranker | None = None,
    **options: Any,
) -> Run:
    """Re-ranks `run_path` (or the top k retrieved from the token index `index_dir` with the
    checkpoint's own XTR layer: UR2N, one model for both stages) and writes `output_path`;
    returns the new run. With qrels the metrics of both runs are printed ("input": the whole
    input run).

    `options`: `load=LoadOptions(...)`, `search=SearchOptions(...)`, `options=RerankOptions(...)`,
    or any of their fields by name (`top_k=100, batch_size=32, ...`). `ranker`: an already
    loaded `Ranker` for `checkpoint` (`rankt5 sweep` loads once for every dataset).

    The output (not one of the inputs) and its folder are checked before anything is read or
    scored. The finished chunks are journaled in `<output>.journal` (`rerank_run`): the same call
    after a kill continues from them; the journal goes once the run is written. If writing the
    run fails, the scores are written to a temporary file whose path the error names. With
    several JAX processes each scores its part of the queries and process 0 writes the run.
    """
    load, search, opts = split_options(**options)
    if (run_path is None) == (index_dir is None):
        raise ConfigError("give either a run to re-rank (--run) or a token index (--index_dir)")
    if output_path is None:
        raise ConfigError("give the output path (--output)")
    inputs = {"run": run_path, "corpus": corpus_path, "queries": queries_path, "qrels": qrels_path}
    check_paths(output_path, inputs)
    if opts.top_k < 1:
        raise ConfigError(f"--top_k must be at least 1, got {opts.top_k}")
    measures.check_missing(opts.missing)
    # a token index in a bucket is searched in its copy on this host (before the model loads:
    # a missing index fails at once)
    searched = retrieval_base.local_index(index_dir) if index_dir is not None else None
    skips = formats.Skips()
    # The model first: whether it reads the run's scores decides how the run is read.
    ranker = ranker if ranker is not None else load.load(checkpoint)
    queries = formats.read_queries(queries_path, strict=opts.strict, skips=skips)
    corpus = formats.Corpus(corpus_path, strict=opts.strict)
    try:
        if index_dir is not None:
            run = _retrieve(ranker, queries, corpus, index_dir, searched, search, opts)
        else:
            run = _read_run(run_path, ranker, queries, corpus, skips, opts.strict)
        qrels = (
            formats.read_qrels(qrels_path, strict=opts.strict, skips=skips) if qrels_path else None
        )
        started = time.time()
        reranked = rerank_run(
            ranker,
            run,
            corpus,
            queries,
            top_k=opts.top_k,
            keep_rest=opts.keep_rest,
            chunk_pairs=opts.chunk_pairs,
            journal=f"{output_path}.journal" if opts.resume else None,
            progress=opts.progress,
            keep_journal=True,
            journal_settings=_file_settings(checkpoint, corpus_path, index_dir, search),
        )
        elapsed = max(time.time() - started, 1e-9)
    finally:
        corpus.close()
    if jax.process_index() == 0:
        tag = opts.tag or ranker.model.spec().get("variant") or "rankt5"
        _write_or_keep(output_path, reranked, tag)
    if opts.resume:  # the run is written: every process removes its part of the journal
        multihost.barrier("rankt5-rerank-written")
        journal_lib.discard(f"{output_path}.journal", jax.process_index())
    if jax.process_index() == 0:
        _report(output_path, run, reranked, opts, elapsed, skips)
        if qrels is not None:
            _print_metrics(run, reranked, qrels, opts.json_metrics, opts.missing)
    return reranked


def _file_settings(checkpoint, corpus_path, index_dir, search: SearchOptions) -> dict:
    settings = {
        "checkpoint": os.path.abspath(checkpoint) if os.path.exists(checkpoint) else checkpoint,
        "corpus": os.path.abspath(corpus_path) if os.path.exists(corpus_path) else corpus_path,
    }
    if index_dir is not None:
        settings.update(index_dir=paths.abspath(index_dir), **dataclasses.asdict(search))
    return settings


def _read_run(run_path, ranker: Ranker, queries, corpus, skips, strict: bool) -> Run:
    return formats.read_run(
        run_path,
        strict=strict,
        skips=skips,
        known_queries=queries,
        corpus=corpus,
        need_scores="the model reads the first-stage scores as a feature (FiT5)"
        if ranker.needs_features
        else None,
    )


def _retrieve(
    ranker: Ranker, queries, corpus, index_dir: str, folder: str, search: SearchOptions, opts
) -> Run:
    """The first stage with the same checkpoint's XTR layer over the token index `index_dir`
    (opened from `folder`: the same, or its copy on this host)."""
    run = ranker.search(
        queries,
        opts.top_k,
        folder,
        search.token_k,
        search.exact_search,
        search.nprobe,
        progress=opts.progress,
    )
    unknown = next((d for docs in run.values() for d in docs if d not in corpus), None)
    if unknown is not None:
        raise ConfigError(
            f"{index_dir} retrieved document {unknown!r}, which {corpus.path} does not hold: "
            "give the corpus the index was built from"
        )
    return run


def _report(output_path, run, reranked, opts: RerankOptions, elapsed: float, skips) -> None:
    total = sum(min(len(docs), opts.top_k) for docs in run.values())
    processes = f" on {jax.process_count()} processes" if jax.process_count() > 1 else ""
    print(
        f"reranked {total} pairs of {len(run)} queries{processes} in {elapsed:.1f}s "
        f"({total / elapsed:.0f} pairs/s, compilation and resumed chunks included) -> "
        f"{output_path}",
        file=sys.stderr,
    )
    if skips.total:
        print(f"warning: {skips.summary()}", file=sys.stderr)


def _print_metrics(run: Run, reranked: Run, qrels, json_metrics: bool, missing: str) -> None:
    """Both runs' metrics ("input": the whole input run, not only its top k), and on stderr
    over how many queries their means are (`missing`: as `rankt5 evaluate --missing`)."""
    before = measures.evaluate_run(run, qrels, missing=missing)
    after = measures.evaluate_run(reranked, qrels, missing=missing)
    counts = measures.query_counts(reranked, qrels, missing)  # the same queries as the input's
    print(f"rankt5: {counts.describe('the re-ranked run')}", file=sys.stderr)
    if json_metrics:
        print(json.dumps({"input": before, "reranked": after}))
    else:
        for name in after:
            print(f"{name}\tinput {before[name]:.4f}\treranked {after[name]:.4f}")


def _write_or_keep(output_path: str, run: Run, tag: str = "rankt5") -> None:
    """Writes the run; on failure keeps it in a temporary file and names it in the error."""
    try:
        formats.write_trec_run(output_path, run, tag=tag)
    except OSError as err:
        import tempfile

        handle, kept = tempfile.mkstemp(prefix="rankt5_", suffix=".run")
        os.close(handle)
        formats.write_trec_run(kept, run, tag=tag)
        raise ConfigError(
            f"cannot write {output_path} ({err.strerror}); the scores are kept in {kept}"
        ) from err
