"""The XTR token index as a `Retriever` (UR2N's first stage), and `rankt5 search`.

    retriever = Retriever.load("index_dir")                 # the checkpoint the index records
    retriever = XTRRetriever.open("index_dir", encoder=ranker.xtr_encoder(), token_k=500)
    run = retriever.search({"q1": "what is t5"}, k=100)

`search_files` is `rankt5 search`: queries file -> TREC run, optionally fused with another run
(`fuse`, reciprocal rank fusion, `retrieval.fusion`) and searched by several processes
(`multihost`: each JAX process searches a contiguous part of the queries over the whole index,
the parts are gathered with one collective, and process 0 alone writes the run, which equals
one process's).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

from rankt5_jax.errors import ConfigError
from rankt5_jax.retrieval import xtr_search
from rankt5_jax.retrieval.base import Retriever, Run, local_index
from rankt5_jax.retrieval.xtr_search import DEFAULT_NPROBE, DEFAULT_TOKEN_K


class XTRRetriever(Retriever):
    """XTR search over a token index with a token encoder (`xtr_encoder.TokenEncoder`).

    Args (of `open`):
      index_dir: a token index built by `rankt5 index`.
      encoder: the query encoder (None: the checkpoint the index records, or `checkpoint`).
      token_k: document tokens per query token (None: the index's default); exact: search
      the float vectors on the device;
      nprobe: inverted lists per query token (compressed); rescore: re-score rescore x token_k
      compressed candidates with the float vectors (0: off); dtype: exact search's products.
      batch_queries: queries searched together; progress: a bar and a summary on stderr.
      checkpoint, vocab, max_query_length: for loading the encoder.
    """

    kind = "xtr"

    def __init__(
        self,
        searcher: xtr_search.Searcher,
        encoder,
        token_k: int | None = DEFAULT_TOKEN_K,
        batch_queries: int = 64,
        progress: bool = False,
    ):
        xtr_search.check_encoder(searcher.index, encoder)
        self.searcher = searcher
        self.encoder = encoder
        self.token_k = token_k
        self.batch_queries = batch_queries
        self.progress = progress

    @classmethod
    def open(
        cls,
        index_dir: str,
        encoder=None,
        token_k: int | None = DEFAULT_TOKEN_K,
        exact: bool = False,
        nprobe: int = DEFAULT_NPROBE,
        rescore: int = 0,
        dtype: str = "float32",
        batch_queries: int = 64,
        progress: bool = False,
        checkpoint: str | None = None,
        vocab: str | None = None,
        max_query_length: int = 64,
    ) -> XTRRetriever:
        searcher = xtr_search.Searcher(
            index_dir, exact=exact, nprobe=nprobe, dtype=dtype, rescore=rescore
        )
        if encoder is None:
            encoder = _load_encoder(searcher, checkpoint, vocab, max_query_length)
        return cls(searcher, encoder, token_k, batch_queries, progress)

    def search(self, queries: Mapping[str, str], k: int = 1000) -> Run:
        return xtr_search.search(
            self.searcher,
            self.encoder,
            queries,
            k,
            self.token_k,
            self.batch_queries,
            self.progress,
        )


def _load_encoder(searcher, checkpoint, vocab, max_query_length):
    from rankt5_jax.modeling import registry
    from rankt5_jax.retrieval import xtr_encoder

    built = searcher.index.encoder_fingerprint
    checkpoint = checkpoint or built.get("checkpoint")
    if not checkpoint:
        raise ConfigError(f"{searcher.index.index_dir} records no checkpoint: give --checkpoint")
    return xtr_encoder.load_encoder(
        checkpoint,
        vocab=vocab,
        variant=built.get("variant") if built.get("variant") in registry.NAMES else None,
        dtype=built.get("dtype"),
        max_length=built.get("max_length", 512),
        max_query_length=max_query_length,
    )


def query_part(count: int, processes: int, index: int) -> tuple[int, int]:
    """Process `index`'s queries `[first, last)` of `count`: contiguous, about equal parts."""
    return count * index // processes, count * (index + 1) // processes


def search_multihost(retriever: Retriever, queries: Mapping[str, str], k: int) -> Run:
    """`retriever.search` with every JAX process searching its part of `queries` (contiguous,
    in order); the parts are gathered (one collective per array) and every process returns the
    whole run, in the queries' order. One process: `retriever.search`."""
    import jax

    from rankt5_jax.modeling import multihost

    processes = jax.process_count()
    if processes == 1:
        return retriever.search(queries, k)
    qids = list(queries)
    first, last = query_part(len(qids), processes, jax.process_index())
    mine = retriever.search({q: queries[q] for q in qids[first:last]}, k)
    doc_number = {d: n for n, d in enumerate(_doc_ids(retriever))}
    counts = np.asarray([len(mine[q]) for q in qids[first:last]], np.int32)
    docs = np.asarray([doc_number[d] for q in qids[first:last] for d in mine[q]], np.int32)
    scores = np.asarray([s for q in qids[first:last] for s in mine[q].values()], np.float32)
    counts = multihost.allgather_rows(counts)
    docs = multihost.allgather_rows(docs)
    scores = multihost.allgather_rows(scores)
    names = _doc_ids(retriever)
    run: Run = {}
    position = 0
    for qid, count in zip(qids, counts.tolist()):
        part = slice(position, position + count)
        run[qid] = {names[n]: float(s) for n, s in zip(docs[part].tolist(), scores[part])}
        position += count
    return run


def _doc_ids(retriever: Retriever) -> list[str]:
    if not isinstance(retriever, XTRRetriever):
        raise ConfigError(f"multi-process search is built for XTR indexes, not {retriever.kind}")
    return retriever.searcher.index.doc_ids


def search_files(
    index_dir: str,
    queries_path: str,
    output_path: str,
    checkpoint: str | None = None,
    top_k: int = 1000,
    token_k: int | None = DEFAULT_TOKEN_K,
    exact: bool = False,
    nprobe: int = DEFAULT_NPROBE,
    batch_queries: int = 64,
    max_query_length: int = 64,
    vocab: str | None = None,
    dtype: str | None = None,
    strict: bool = True,
    progress: bool = True,
    rescore: int = 0,
    fuse: str | None = None,
    fuse_k: float = 60,
) -> Run:
    """`rankt5 search`: queries file -> TREC run of the index's documents (module doc).

    `fuse`: a TREC run file fused with the XTR run by reciprocal rank fusion (`fuse_k`), each
    cut to `top_k`; the fused run is written. Several JAX processes (joined before, `rankt5
    search --multihost`) search their parts of the queries; process 0 writes.
    """
    import jax

    from rankt5_jax.data import formats

    writer = jax.process_index() == 0
    if writer:
        formats.check_output_path(output_path)
    skips = formats.Skips()
    options: dict[str, Any] = dict(
        token_k=token_k,
        exact=exact,
        nprobe=nprobe,
        rescore=rescore,
        dtype=dtype or "float32",
        batch_queries=batch_queries,
        progress=progress and writer,
        checkpoint=checkpoint,
        vocab=vocab,
        max_query_length=max_query_length,
    )
    retriever = XTRRetriever.open(index_dir, **options)
    queries = formats.read_queries(queries_path, strict=strict, skips=skips)
    run = search_multihost(retriever, queries, top_k)
    if fuse is not None:
        from rankt5_jax.retrieval import fusion

        run = fusion.fuse_with_file(run, fuse, k=fuse_k, top_k=top_k, strict=strict)
    if writer:
        formats.write_trec_run(output_path, run, tag="rankt5-xtr-rrf" if fuse else "rankt5-xtr")
        if fuse is not None and progress:
            print(f"fused with {fuse} (RRF, k {fuse_k:g}) -> {output_path}", file=sys.stderr)
    if skips.total and writer:
        print(f"warning: {skips.summary()}", file=sys.stderr)
    if jax.process_count() > 1:  # the run is on disk before any process reads it
        from rankt5_jax.modeling import multihost

        multihost.barrier("rankt5-search-written")
    return run


def fused_first_stage(
    index_dir: str,
    queries_path: str,
    fuse: str,
    output_path: str,
    checkpoint: str,
    top_k: int,
    token_k: int | None = DEFAULT_TOKEN_K,
    exact: bool = False,
    nprobe: int = DEFAULT_NPROBE,
    strict: bool = True,
) -> str:
    """`rankt5 rerank --index_dir ... --fuse RUN`: the checkpoint's XTR run of the queries fused
    with `fuse` (RRF, k = 60, both cut to `top_k`), written to `{output_path}.fused.run` (kept:
    the first stage that was re-ranked); -> that path, for `rerank --run`."""
    if index_dir is None:
        raise ConfigError("--fuse fuses the retrieval of a token index: give --index_dir")
    path = f"{output_path}.fused.run"
    search_files(
        local_index(index_dir),  # a bucket index: its copy on this host
        queries_path,
        path,
        checkpoint=checkpoint,
        top_k=top_k,
        token_k=token_k,
        exact=exact,
        nprobe=nprobe,
        strict=strict,
        fuse=fuse,
    )
    return path
