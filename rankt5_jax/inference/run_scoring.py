"""`rerank_run`: re-rank a run in memory with a loaded `Ranker` (the model-owning half of
`rankt5 rerank`; `inference.rerank` is the file layer around it).

It cuts each query's candidates to the top k, tokenizes every (query, candidate) pair
(list-aware FiT5 models: each query's top k whole, with the run's scores as the feature), and
scores them with the `Ranker` (pairwise models: across query boundaries, length-sorted, bucketed
batches). Queries go in chunks of about `chunk_pairs` pairs (never splitting a query); the next
chunk is read and tokenized in a background thread while one is scored. With a journal folder
(`journal=`) each finished chunk's scores are recorded on disk (`inference.journal`), so a
killed call resumes from its last finished chunk, and SIGTERM finishes the current chunk and
stops (`journal.Stopped`).

With several JAX processes each scores a contiguous part of the run's queries (about equal
numbers of pairs, `process_part`) on its own devices, with no communication while scoring; the
scores are then gathered (one collective) and every process returns the whole run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from rankt5_jax.data import formats
from rankt5_jax.data import progress as progress_lib
from rankt5_jax.errors import ConfigError
from rankt5_jax.evaluation import measures
from rankt5_jax.inference import journal as journal_lib
from rankt5_jax.inference.ranker import Ranker
from rankt5_jax.modeling import multihost

Run = dict[str, dict[str, float]]


class _Documents:
    """`(title, body)` of candidates from a `formats.Corpus` or `{docid: text or {title, text}}`."""

    def __init__(self, corpus: Any):
        self.corpus = corpus
        self.on_disk = isinstance(corpus, formats.Corpus)
        self.include_title = corpus.include_title if self.on_disk else True

    def get(self, docid: str) -> tuple[str, str]:
        try:
            doc = self.corpus.get(docid) if self.on_disk else self.corpus[docid]
        except KeyError:
            raise ConfigError(f"candidate document {docid!r} is not in the corpus") from None
        if isinstance(doc, tuple):
            return doc
        if isinstance(doc, Mapping):
            return doc.get("title") or "", doc["text"]
        return "", doc

    def text(self, docid: str) -> str:
        title, body = self.get(docid)
        return f"{title} {body}".strip() if self.include_title and title else body


def _candidates(run: Mapping[str, Mapping[str, float]], top_k: int):
    candidates = []
    for qid, doc_scores in run.items():
        ranked = measures.rank_documents(doc_scores)[:top_k]
        if not ranked:
            raise ConfigError(f"query {qid!r} of the run has no candidates")
        candidates.append((qid, ranked))
    return candidates


def _chunk_bounds(sizes: Sequence[int], chunk_pairs: int) -> list[tuple[int, int]]:
    """Queries `[start, end)` of each chunk: whole queries until `chunk_pairs` pairs or more."""
    bounds, start, pairs = [], 0, 0
    for index, size in enumerate(sizes):
        pairs += size
        if pairs >= chunk_pairs:
            bounds.append((start, index + 1))
            start, pairs = index + 1, 0
    if start < len(sizes):
        bounds.append((start, len(sizes)))
    return bounds


def model_fingerprint(ranker: Ranker) -> str:
    """A short hash of the model: its spec and the sum of |param| of every array (one small
    compiled reduction on the devices that hold the params)."""
    import jax.numpy as jnp

    leaves = jax.tree_util.tree_leaves(ranker.params)
    sums = jax.jit(lambda xs: jnp.stack([jnp.abs(x.astype(jnp.float32)).sum() for x in xs]))
    digest = hashlib.sha256(json.dumps(ranker.model.spec(), sort_keys=True, default=str).encode())
    digest.update(np.asarray(sums(leaves), np.float32).tobytes())
    return digest.hexdigest()[:16]


def _scoring_settings(ranker: Ranker, queries, run, top_k, chunk_pairs) -> dict:
    """What the scores depend on (the journal refuses a rerun where any of it differs); `input`
    is a hash of the queries' texts and the whole input run (candidates in order; their scores
    too where the model reads them)."""
    digest = hashlib.sha256()
    for qid, doc_scores in run.items():
        ranked = measures.rank_documents(doc_scores)
        digest.update(json.dumps([qid, queries[qid], ranked]).encode())
        if ranker.needs_features:
            digest.update(np.asarray([doc_scores[d] for d in ranked], np.float64).tobytes())
    partitioner = ranker.partitioner
    return {
        "model": model_fingerprint(ranker),
        "variant": ranker.model.spec().get("variant"),
        "dtype": str(getattr(getattr(ranker.model, "config", None), "dtype", None)),
        "max_length": ranker.max_length,
        "batch_size": ranker.batch_size,
        "batch_tokens": ranker.batch_tokens,
        "mesh": None if partitioner is None else dict(partitioner.mesh.shape),
        "devices": len(jax.local_devices()),
        "top_k": top_k,
        "chunk_pairs": chunk_pairs,
        "input": digest.hexdigest()[:16],
    }


def _tokenizer(ranker: Ranker, queries, run, docs: _Documents):
    def tokenize(qid: str, ranked: list[str]) -> list[list[int]]:
        if not ranker.list_aware:
            return ranker.tokenize(queries[qid], [docs.text(docid) for docid in ranked])
        title_body = [docs.get(docid) for docid in ranked]
        return ranker.tokenize(
            queries[qid],
            [body for _, body in title_body],
            features=[run[qid][docid] for docid in ranked] if ranker.needs_features else None,
            titles=[title for title, _ in title_body] if docs.include_title else None,
        )

    return tokenize


def _score_chunks(ranker, mine, bounds, tokenize, log, progress: bool) -> np.ndarray:
    """This process's scores (float32, candidate order): the journal's finished chunks, then the
    rest scored chunk by chunk (each recorded in the journal before the next)."""
    done = log.done_chunks if log is not None else 0
    sizes = [len(ranked) for _, ranked in mine]
    if done > len(bounds):
        raise ConfigError(f"{log.folder} records more chunks than this run has: remove it")
    parts = [log.scores()] if done else []
    done_pairs = sum(sizes[: bounds[done - 1][1]]) if done else 0
    if parts and parts[0].size != done_pairs:
        raise ConfigError(
            f"{log.scores_path} does not match its progress file: remove {log.folder}"
        )
    bar = None
    if progress and jax.process_index() == 0:
        part = " (this process's part)" if jax.process_count() > 1 else ""
        bar = progress_lib.Progress(sum(sizes), f"rerank{part}", "pairs", initial=done_pairs)
    stop = journal_lib.StopSignal()

    def tokenized():
        for start, end in bounds[done:]:
            yield [tokenize(qid, ranked) for qid, ranked in mine[start:end]]

    with stop.active() if log is not None else contextlib.nullcontext(), progress_lib.closing(bar):
        for number, lists in enumerate(formats.prefetch(tokenized()), start=done + 1):
            # The bar counts pairs as each batch is read back, not once per chunk.
            scores = (
                ranker.score_token_lists(lists, on_scored=bar.update)
                if bar is not None
                else ranker.score_token_lists(lists)
            )
            values = (
                np.concatenate(scores).astype(np.float32) if scores else np.zeros(0, np.float32)
            )
            if log is not None:
                log.record(values)
            parts.append(values)
            if stop.requested and number < len(bounds):
                raise journal_lib.Stopped(
                    f"stopped by SIGTERM after chunk {number} of {len(bounds)}; the same command "
                    f"continues it (journal {log.folder})"
                )
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def _keep_rest(reranked: Run, run: Mapping[str, Mapping[str, float]]) -> None:
    """Appends each query's first-stage candidates below its top k, in first-stage order, with
    scores below the re-ranked ones (lowest re-ranked score - 1, - 2, ...)."""
    for qid, scores in reranked.items():
        rest = [d for d in measures.rank_documents(run[qid]) if d not in scores]
        low = min(scores.values())
        for offset, docid in enumerate(rest, start=1):
            scores[docid] = float(np.float32(low - offset))


def rerank_run(
    ranker: Ranker,
    run: Mapping[str, Mapping[str, float]],
    corpus: Any,
    queries: Mapping[str, str],
    *,
    top_k: int = 1000,
    keep_rest: bool = False,
    chunk_pairs: int = 8192,
    journal: str | os.PathLike | None = None,
    journal_settings: Mapping[str, Any] | None = None,
    keep_journal: bool = False,
    progress: bool = True,
) -> Run:
    """Re-ranks the top `top_k` of each query of `run` with `ranker`: `{qid: {docid: score}}`,
    the queries in `run`'s order (with several JAX processes each scores its part and every
    process returns all of it).

    Args:
      ranker: a loaded `Ranker` (pairwise, or list-aware FiT5: its features are `run`'s scores).
      run: `{qid: {docid: first-stage score}}`.
      corpus: a `data.formats.Corpus`, or `{docid: text or {"title", "text"}}`.
      queries: `{qid: text}` for every query of `run`.
      top_k: candidates re-ranked per query (the first stage's top k).
      keep_rest: also return the candidates below `top_k`, in first-stage order, scored below
        the re-ranked ones.
      chunk_pairs: pairs per chunk (whole queries), the unit of the journal and of prefetching.
      journal: a folder recording the finished chunks (`inference.journal`): a call with the same
        arguments after a kill continues from the last finished chunk and returns the same scores
        bit for bit; other settings are refused, naming the setting. SIGTERM finishes the current
        chunk and raises `journal.Stopped`. The journal is removed when the call completes.
      journal_settings: more settings the journal checks (`rerank_files`: the checkpoint path).
      keep_journal: leave the complete journal to the caller to remove (`rerank_files` removes
        it once the run is written).
    """
    if top_k < 1:
        raise ConfigError(f"top_k must be at least 1, got {top_k}")
    if chunk_pairs < 1:
        raise ConfigError(f"chunk_pairs must be at least 1, got {chunk_pairs}")
    missing = next((qid for qid in run if qid not in queries), None)
    if missing is not None:
        raise ConfigError(f"query {missing!r} of the run has no text in the queries given")
    candidates = _candidates(run, top_k)
    first, last = process_part([len(ranked) for _, ranked in candidates])
    mine = candidates[first:last]  # this process's queries (all of them in one process)
    log = None
    if journal is not None:
        settings = _scoring_settings(ranker, queries, run, top_k, chunk_pairs)
        settings = {**(journal_settings or {}), **settings}
        log = journal_lib.Journal(
            os.fspath(journal), settings, jax.process_index(), jax.process_count()
        )
    bounds = _chunk_bounds([len(ranked) for _, ranked in mine], chunk_pairs)
    tokenize = _tokenizer(ranker, queries, run, _Documents(corpus))
    scores = _score_chunks(ranker, mine, bounds, tokenize, log, progress)
    if jax.process_count() > 1:  # every process's scores, in the run's query order
        scores = multihost.allgather_rows(scores)
    values = iter(scores.tolist())
    reranked = {qid: {docid: next(values) for docid in ranked} for qid, ranked in candidates}
    if keep_rest:
        _keep_rest(reranked, run)
    if log is not None and not keep_journal:
        multihost.barrier("rankt5-rerank-journal")
        log.remove()
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
