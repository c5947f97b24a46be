"""Re-ranking a candidate run with a RankT5 checkpoint (`rankt5 rerank`).

Reads queries, the run and the corpus (on-disk index), tokenizes every (query, candidate) pair of
the top-k, scores them with `Ranker` (pairwise models: across query boundaries, length-sorted,
bucketed batches over all local devices; list-aware FiT5 models: each query's top-k whole, with
the run's scores as the feature), and writes a TREC run with ranks 1..n and scores descending.
Queries go in chunks of about `chunk_pairs` pairs (never splitting a query); the next chunk is read
and tokenized in a background thread while one is scored. With qrels it also prints RR@10,
nDCG@5, nDCG@10 and AP of the input run and of the re-ranked run. With a token index
(`index_dir`) in place of the run, the input run is the checkpoint's own retrieval (UR2N: its
XTR layer over the index, `Ranker.search`), and the same checkpoint re-ranks it.

Several processes (`rankt5 rerank --multihost`, one per host or per GPU): every process reads the
queries, the run and the corpus, and scores a contiguous part of the run's queries (about equal
numbers of pairs) on its own devices; there is no communication while scoring. The scores are
then gathered (one collective) and process 0 alone writes the run and prints the metrics, so the
output is one run with every query once, as from one process.
"""

from __future__ import annotations

import json
import os
import sys
import time

import jax
import numpy as np

from rankt5_jax.data import formats
from rankt5_jax.errors import ConfigError, InputFormatError
from rankt5_jax.evaluation import measures
from rankt5_jax.inference.ranker import Ranker
from rankt5_jax.modeling import multihost
from rankt5_jax.modeling.partitioning import Partitioner


def rerank_files(
    checkpoint: str,
    queries_path: str,
    corpus_path: str,
    run_path: str | None,
    output_path: str,
    qrels_path: str | None = None,
    top_k: int = 1000,
    batch_size: int = 64,
    batch_tokens: int | None = None,
    max_length: int = 512,
    vocab: str | None = None,
    variant: str | None = None,
    dtype: str | None = None,
    strict: bool = True,
    json_metrics: bool = False,
    chunk_pairs: int = 8192,
    progress: bool = True,
    allow_pickle: bool = False,
    mesh_shape: tuple[int, int] | None = None,
    index_dir: str | None = None,
    token_k: int = 500,
    exact_search: bool = False,
    nprobe: int = 32,
) -> dict[str, dict[str, float]]:
    """Re-ranks `run_path` and writes `output_path`; returns the new run.

    `index_dir` in place of `run_path` (UR2N, one model for both stages): the candidates are
    the top `top_k` of each query retrieved from that token index with the checkpoint's own XTR
    layer (`Ranker.search`: `token_k` tokens per query token; `exact_search` over the float
    vectors, else Faiss with `nprobe` lists), then re-ranked by the same checkpoint; with qrels
    the metrics of both stages are printed ("input" is the retrieval).

    `mesh_shape`: `(data, model)` to serve a large model across devices (`Ranker.load`'s
    `mesh_shape`, `--mesh data=D,model=M`); by default the batches are split over all local
    devices with the params replicated.

    The output folder is made and checked before anything is read or scored; if writing the run
    still fails, the scores are written to a temporary file whose path the error names. With
    several JAX processes each scores its part of the queries on its own devices and process 0
    writes the run (every process returns all of it).
    """
    if (run_path is None) == (index_dir is None):
        raise ConfigError("give either a run to re-rank (--run) or a token index (--index_dir)")
    formats.check_output_path(output_path)
    skips = formats.Skips()
    devices = jax.local_devices()
    partitioner = None
    if mesh_shape is None and len(devices) > 1 and batch_size % len(devices) == 0:
        partitioner = Partitioner(data_axis_size=len(devices), devices=devices)
    # The model first: whether it reads the run's scores decides how the run is read.
    ranker = Ranker.load(
        checkpoint,
        variant=variant,
        dtype=dtype,
        vocab=vocab,
        max_length=max_length,
        batch_size=batch_size,
        batch_tokens=batch_tokens,
        partitioner=partitioner,
        allow_pickle=allow_pickle,
        mesh_shape=mesh_shape,
    )
    queries = formats.read_queries(queries_path, strict=strict, skips=skips)
    corpus = formats.Corpus(corpus_path, strict=strict)
    if index_dir is not None:  # the first stage with the same checkpoint's XTR layer
        run = ranker.search(
            queries, top_k, index_dir, token_k, exact_search, nprobe, progress=progress
        )
        unknown = next((d for docs in run.values() for d in docs if d not in corpus), None)
        if unknown is not None:
            raise ConfigError(
                f"{index_dir} retrieved document {unknown!r}, which {corpus_path} does not "
                "hold: give the corpus the index was built from"
            )
    else:
        run = formats.read_run(
            run_path,
            strict=strict,
            skips=skips,
            known_queries=queries,
            corpus=corpus,
            need_scores="the model reads the first-stage scores as a feature (FiT5)"
            if ranker.needs_features
            else None,
        )
    qrels = formats.read_qrels(qrels_path, strict=strict, skips=skips) if qrels_path else None

    candidates: list[tuple[str, list[str]]] = []
    for qid, doc_scores in run.items():
        ranked = measures.rank_documents(doc_scores)[:top_k]
        if not ranked:
            raise InputFormatError(run_path or index_dir, None, f"query {qid!r} has no candidates")
        candidates.append((qid, ranked))
    everyone = candidates
    first, last = process_part([len(ranked) for _, ranked in candidates])
    candidates = candidates[first:last]  # this process's queries (all of them in one process)
    writer = jax.process_index() == 0

    reranked: dict[str, dict[str, float]] = {qid: {} for qid in run}
    total = sum(len(ranked) for _, ranked in candidates)
    started = time.time()
    bar = _progress(total) if progress and writer else None

    def tokenize(qid: str, ranked: list[str]) -> list[list[int]]:
        if not ranker.list_aware:
            return ranker.tokenize(queries[qid], [corpus.text(docid) for docid in ranked])
        title_body = [corpus.get(docid) for docid in ranked]
        return ranker.tokenize(
            queries[qid],
            [body for _, body in title_body],
            features=[run[qid][docid] for docid in ranked] if ranker.needs_features else None,
            titles=[title for title, _ in title_body] if corpus.include_title else None,
        )

    def tokenized_chunks():
        chunk: list[tuple[str, list[str], list[list[int]]]] = []
        size = 0
        for qid, ranked in candidates:
            chunk.append((qid, ranked, tokenize(qid, ranked)))
            size += len(ranked)
            if size >= chunk_pairs:
                yield chunk
                chunk, size = [], 0
        if chunk:
            yield chunk

    # The next chunk is read and tokenized in a background thread while this one is scored.
    for chunk in formats.prefetch(tokenized_chunks()):
        scores = ranker.score_token_lists([tokens for _, _, tokens in chunk])
        for (qid, ranked, _), values in zip(chunk, scores):
            reranked[qid].update(zip(ranked, map(float, values)))
            if bar is not None:
                bar.update(len(ranked))
    if bar is not None:
        bar.close()
    if jax.process_count() > 1:  # every process's scores, in the run's query order
        mine = [reranked[qid][docid] for qid, ranked in candidates for docid in ranked]
        gathered = iter(multihost.allgather_rows(np.asarray(mine, np.float32)).tolist())
        for qid, ranked in everyone:
            reranked[qid] = {docid: next(gathered) for docid in ranked}
        total = sum(len(ranked) for _, ranked in everyone)
    elapsed = max(time.time() - started, 1e-9)
    corpus.close()
    if not writer:
        return reranked
    _write_or_keep(output_path, reranked)
    processes = f" on {jax.process_count()} processes" if jax.process_count() > 1 else ""
    print(
        f"reranked {total} candidates of {len(run)} queries{processes} in {elapsed:.1f}s "
        f"({total / elapsed:.0f} docs/s) -> {output_path}",
        file=sys.stderr,
    )
    if skips.total:
        print(f"warning: {skips.summary()}", file=sys.stderr)
    if qrels is not None:
        before = measures.evaluate_run({q: {d: run[q][d] for d in reranked[q]} for q in run}, qrels)
        after = measures.evaluate_run(reranked, qrels)
        if json_metrics:
            print(json.dumps({"input": before, "reranked": after}))
        else:
            for name in after:
                print(f"{name}\tinput {before[name]:.4f}\treranked {after[name]:.4f}")
    return reranked


def process_part(
    sizes: list[int], processes: int | None = None, index: int | None = None
) -> tuple[int, int]:
    """Process `index`'s queries `[first, last)` (default: this process's) of queries with
    `sizes` pairs: contiguous parts in process order with about equal numbers of pairs (a query
    is never split)."""
    processes = jax.process_count() if processes is None else processes
    index = jax.process_index() if index is None else index
    if processes == 1:
        return 0, len(sizes)
    starts = np.cumsum([0] + list(sizes))[:-1]
    total = max(int(sum(sizes)), 1)
    owner = np.minimum(starts * processes // total, processes - 1)
    mine = np.nonzero(owner == index)[0]
    if mine.size == 0:
        first = int(np.searchsorted(owner, index))
        return first, first
    return int(mine[0]), int(mine[-1]) + 1


def _progress(total: int):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=total, unit="doc", unit_scale=True, desc="rerank", file=sys.stderr)


def _write_or_keep(output_path: str, run: dict[str, dict[str, float]]) -> None:
    """Writes the run; on failure keeps it in a temporary file and names it in the error."""
    try:
        formats.write_trec_run(output_path, run, tag="rankt5")
    except OSError as err:
        import tempfile

        handle, kept = tempfile.mkstemp(prefix="rankt5_", suffix=".run")
        os.close(handle)
        formats.write_trec_run(kept, run, tag="rankt5")
        raise ConfigError(
            f"cannot write {output_path} ({err.strerror}); the scores are kept in {kept}"
        ) from err
