"""XTR search over a token index (`token_index.py`): token retrieval, then XTR's document scores.

    searcher = Searcher("index_dir", exact=False)            # or exact=True (float vectors)
    run = search(searcher, encoder, {"q1": "what is t5"}, top_k=1000, token_k=500)

Each query token retrieves the `token_k` nearest document tokens (inner product) of the whole
index; the candidates are the documents with at least one retrieved token; each is scored with
XTR's missing-similarity imputation (Lee et al., 2023):

    f(Q, D) = 1/n * sum_i  ( max_{j in D, j retrieved by i} q_i . d_j   if i retrieved a token of D
                             m_i                                        otherwise )

over the query's n tokens, where m_i is the lowest similarity query token i retrieved (its
token_k-th, unless fewer exist). m_i is an upper bound of every similarity token i did not
retrieve, so a document is never scored below what its tokens could give, and a document
retrieved by many query tokens beats one retrieved by a single lucky token. (The training
score's 1/Z over the tokens that retrieved D would rank such a single lucky match first.)
A query token that retrieved nothing has m_i = 0 (it adds the same to every document).

Two token searches, one interface (`search_tokens(q [R, D]) -> (scores [R, k], docs [R, k])`):

* `ExactSearcher`: the float vectors, searched on the device with JAX: each block of
  `block_tokens` document tokens is one matmul against all query tokens of the batch and a
  `lax.top_k`, merged into a running top-k (so memory stays bounded whatever the index size);
  blocks stay on the device when they fit `device_bytes`, else they stream from the
  memory-mapped files. `dtype="bfloat16"` multiplies in bf16 (accumulating in float32).
* `CompressedSearcher`: the index's codec (`codecs.py`, a Faiss IVF index) over each shard's
  codes (`nprobe` inverted lists per query token, approximated similarities); shards are
  searched one by one and merged. `rescore` re-scores its candidates with the float vectors.

Shards are merged exactly: the global top-k of a query token is the top-k of the shards' top-ks.
Queries go in batches (`batch_queries`): their tokens are one matrix on the device.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rankt5_jax.data import progress as progress_lib
from rankt5_jax.errors import ConfigError
from rankt5_jax.retrieval import codecs, token_index
from rankt5_jax.retrieval.index_meta import IndexMeta, ShardMeta

DEFAULT_TOKEN_K = None  # None: default_token_k(tokens, passages) of the index searched
TOKEN_K_SHARE = 1 / 40
TOKEN_K_MAX = 16384


def default_token_k(num_tokens: int, num_passages: int) -> int:
    """The `token_k` a search uses unless given: a share of the index's tokens (1/40), at least
    its number of passages, at most TOKEN_K_MAX, at most its number of tokens.

    Why (docs/retrieval.md, "token_k"): training aligns each query token with k_train (52) of
    the ~500 document tokens of its batch, about a tenth; a search whose query tokens see a far
    smaller share of the corpus imputes most documents' similarities. On the generated collection
    (295k tokens) exact-search RR@10 rises from 0.48 at token_k 500 to 0.73 at 8,000 (f without
    imputation: 0.75); at 1/40 of the tokens it is within 0.02 of that. The cap bounds search
    cost at scale (MS MARCO's 0.6B tokens).
    """
    share = -(-int(num_tokens) // int(1 / TOKEN_K_SHARE))
    return max(1, min(TOKEN_K_MAX, max(int(num_passages), share), int(num_tokens)))


DEFAULT_NPROBE = 32


class TokenIndex:
    """A complete token index opened for reading: doc ids, and each shard's memory-mapped
    arrays (`codes`, `list_offsets`, `doc_index`, and `vectors` where stored). `meta` is its
    typed `index.json` (`index_meta.IndexMeta`)."""

    def __init__(self, index_dir: str):
        self.index_dir = index_dir
        self.meta = IndexMeta.read(index_dir)
        self.info = token_index.read_json(os.path.join(index_dir, token_index.INDEX_FILE))
        self.dim = self.meta.dim
        self.shards = []
        doc_ids: list[str] = []
        token_offset = 0
        for number in range(self.meta.num_shards):
            folder = token_index.shard_dir(index_dir, number)
            summary = ShardMeta.read(index_dir, number)
            with open(os.path.join(folder, token_index.DOC_IDS_FILE), encoding="utf-8") as handle:
                ids = handle.read().split("\n")[:-1]
            if len(ids) != summary.passages:
                raise ConfigError(f"{folder}: {len(ids)} doc ids for {summary.passages} passages")
            shard = {
                "folder": folder,
                "doc_offset": len(doc_ids),
                "token_offset": token_offset,
                "tokens": summary.tokens,
                "exact": summary.exact,
            }
            for name in ("codes", "list_offsets", "doc_index", "vectors"):
                path = os.path.join(folder, f"{name}.npy")
                if os.path.isfile(path):
                    shard[name] = np.load(path, mmap_mode="r")
            self.shards.append(shard)
            doc_ids += ids
            token_offset += summary.tokens
        self.doc_ids = doc_ids
        self.num_tokens = token_offset

    @property
    def exact(self) -> bool:
        return all(s["exact"] for s in self.shards)

    @property
    def encoder_fingerprint(self) -> dict:
        return self.meta.encoder


def _merge(scores: list[np.ndarray], docs: list[np.ndarray], k: int):
    """Row-wise top-k of concatenated (scores, docs) lists, highest first (stable)."""
    if len(scores) == 1:
        return scores[0], docs[0]
    all_scores = np.concatenate(scores, axis=1)
    all_docs = np.concatenate(docs, axis=1)
    order = np.argsort(-all_scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(all_scores, order, 1), np.take_along_axis(all_docs, order, 1)


@jax.jit
def _topk_block(queries, best_scores, best_docs, block, block_docs, valid):
    """One block of document tokens into the running top-k: `[R, k]` scores and doc numbers."""
    k = best_scores.shape[1]
    sims = jnp.dot(queries.astype(block.dtype), block.T, preferred_element_type=jnp.float32)
    sims = jnp.where(jnp.arange(block.shape[0])[None] < valid, sims, -jnp.inf)
    top_scores, top_index = jax.lax.top_k(sims, min(k, block.shape[0]))
    scores = jnp.concatenate([best_scores, top_scores], axis=1)
    docs = jnp.concatenate([best_docs, block_docs[top_index]], axis=1)
    scores, order = jax.lax.top_k(scores, k)
    return scores, jnp.take_along_axis(docs, order, axis=1)


class ExactSearcher:
    """Exact inner-product token search on the device (JAX), over the stored float vectors.

    Args:
      index: the opened `TokenIndex` (with vectors: built with exact="yes" or "auto").
      block_tokens: document tokens per matmul (the last block of a shard is padded).
      dtype: "float32", or "bfloat16" products (float32 accumulation and scores).
      device_bytes: keep the blocks on the device when they take at most this much.
    """

    def __init__(
        self,
        index: TokenIndex,
        block_tokens: int = 32768,
        dtype: str = "float32",
        device_bytes: int = 2 << 30,
    ):
        if not index.exact:
            raise ConfigError(
                f"{index.index_dir} has no float vectors (built with exact='no' or over "
                f"{token_index.EXACT_AUTO_PASSAGES} passages): search it without --exact_search"
            )
        if dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"dtype must be float32 or bfloat16, got {dtype!r}")
        self.index = index
        self.block_tokens = block_tokens
        self.dtype = jnp.dtype(dtype)
        itemsize = self.dtype.itemsize
        self.resident = index.num_tokens * index.dim * itemsize <= device_bytes
        self._cache: list | None = None

    def _blocks(self):
        """(vectors [block_tokens, D], doc numbers int32 [block_tokens], valid rows), on device."""
        if self._cache is not None:
            yield from self._cache
            return
        cache = [] if self.resident else None
        size = self.block_tokens
        for shard in self.index.shards:
            vectors, doc_index = shard["vectors"], shard["doc_index"]
            for start in range(0, shard["tokens"], size):
                rows = min(size, shard["tokens"] - start)
                block = np.zeros((size, self.index.dim), np.float32)
                block[:rows] = vectors[start : start + rows]
                docs = np.full(size, -1, np.int32)
                docs[:rows] = doc_index[start : start + rows] + shard["doc_offset"]
                item = (
                    jax.device_put(block.astype(self.dtype)),
                    jax.device_put(docs),
                    jnp.int32(rows),
                )
                if cache is not None:
                    cache.append(item)
                yield item
        if cache is not None:
            self._cache = cache

    def search_tokens(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The `k` most similar document tokens of each query token row: (scores float32
        [R, k], doc numbers int64 [R, k]); -inf and -1 past the index's last token."""
        rows = len(queries)
        # Rows padded to a multiple of 64: the device sees few distinct shapes.
        padded = -(-max(rows, 1) // 64) * 64
        matrix = np.zeros((padded, self.index.dim), np.float32)
        matrix[:rows] = queries
        best = jnp.full((padded, k), -jnp.inf, jnp.float32)
        best_docs = jnp.full((padded, k), -1, jnp.int32)
        q = jax.device_put(matrix)
        for block, docs, valid in self._blocks():
            best, best_docs = _topk_block(q, best, best_docs, block, docs, valid)
        return np.asarray(best)[:rows], np.asarray(best_docs)[:rows].astype(np.int64)


class CompressedSearcher:
    """Approximate token search with the index's codec (`codecs.py`; Faiss, `nprobe` inverted
    lists per query token) over each shard's codes. Faiss holds each shard's codes and an int64
    id per token in memory: the token's document number, or with `rescore` its row.

    `rescore` (an index with float vectors): each query token takes the `rescore` x k best
    tokens by the codec's approximate similarity, re-scores them exactly with the stored float32
    vectors (read from the memory-mapped `vectors.npy`: 4 x dim bytes per token on disk, the
    exact index's), and keeps the k best.
    """

    def __init__(self, index: TokenIndex, nprobe: int = DEFAULT_NPROBE, rescore: int = 0):
        if nprobe < 1:
            raise ConfigError(f"nprobe must be positive, got {nprobe}")
        if rescore < 0:
            raise ConfigError(f"rescore must be >= 0, got {rescore}")
        if rescore and not index.exact:
            raise ConfigError(
                f"{index.index_dir} has no float vectors to re-score with (built with "
                "--store_vectors no): rebuild it with --store_vectors yes, or search without --rescore"
            )
        self.index = index
        self.nprobe = nprobe
        self.rescore = rescore
        codec = codecs.load_codec(
            os.path.join(index.index_dir, token_index.QUANTIZER_FILE), index.meta.settings
        )
        self.codec = codec.name
        self.searches = []
        for shard in index.shards:
            if rescore:  # each token's row: the vectors are read by row
                ids = np.arange(shard["tokens"], dtype=np.int64)
            else:
                ids = np.asarray(shard["doc_index"], np.int64) + shard["doc_offset"]
            self.searches.append(
                codec.open_lists(shard["list_offsets"], shard["codes"], ids, nprobe)
            )

    def search_tokens(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = np.ascontiguousarray(queries, np.float32)
        scores, docs = [], []
        for shard, search in zip(self.index.shards, self.searches):
            if not self.rescore:
                found_scores, found = search(queries, k)
            else:
                found_scores, found = self._rescored(shard, search, queries, k)
            scores.append(found_scores)
            docs.append(found)
        return _merge(scores, docs, k)

    def _rescored(self, shard, search, queries, k, rows_per_block: int = 256):
        """One shard's `rescore` x k candidates per query token, re-scored exactly: the k
        best (scores, doc numbers)."""
        _, rows = search(queries, k * self.rescore)
        out_scores = np.full((len(queries), k), -np.inf, np.float32)
        out_docs = np.full((len(queries), k), -1, np.int64)
        vectors, doc_index = shard["vectors"], shard["doc_index"]
        for start in range(0, len(queries), rows_per_block):
            part = rows[start : start + rows_per_block]
            valid = part >= 0
            safe = np.where(valid, part, 0)
            order = np.unique(safe)  # read each row once, in file order
            table = np.asarray(vectors[order], np.float32)
            where = np.searchsorted(order, safe)
            sims = np.einsum("rd,rcd->rc", queries[start : start + len(part)], table[where])
            sims = np.where(valid, sims, -np.inf).astype(np.float32)
            best = np.argsort(-sims, axis=1, kind="stable")[:, :k]
            kept = np.take_along_axis(sims, best, 1)
            kept_rows = np.take_along_axis(safe, best, 1)
            docs = np.asarray(doc_index[kept_rows.reshape(-1)], np.int64).reshape(kept_rows.shape)
            docs = docs + shard["doc_offset"]
            width = kept.shape[1]
            out_scores[start : start + len(part), :width] = kept
            out_docs[start : start + len(part), :width] = np.where(np.isfinite(kept), docs, -1)
        return out_scores, out_docs


def xtr_score(
    scores: np.ndarray, docs: np.ndarray, row_query: np.ndarray, num_queries: int, top_k: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """XTR scores with missing-similarity imputation (module doc), per query.

    Args:
      scores: float32 `[R, k]`, each row a query token's retrieved similarities, highest first
        (-inf where nothing was retrieved).
      docs: int `[R, k]` document numbers of those tokens (-1 where nothing was retrieved).
      row_query: int `[R]`, each row's query (0 .. num_queries - 1).
      top_k: documents kept per query.

    Returns per query `(doc numbers, scores)`, best first (ties: lower document number first).
    """
    valid = docs >= 0
    counts = np.bincount(row_query, minlength=num_queries).astype(np.float64)
    found = valid.any(axis=1)
    last = np.where(valid, scores, np.inf).min(axis=1)
    impute = np.where(found, last, 0.0)  # m_i
    base = np.bincount(row_query, weights=impute, minlength=num_queries)  # sum_i m_i
    rows = np.broadcast_to(np.arange(len(docs))[:, None], docs.shape)[valid]
    doc_flat = docs[valid].astype(np.int64)
    sim_flat = scores[valid].astype(np.float64)
    span = int(doc_flat.max()) + 1 if len(doc_flat) else 1
    # The best similarity of each (query token, document): rows are sorted, so the first.
    _, first = np.unique(rows.astype(np.int64) * span + doc_flat, return_index=True)
    rows, doc_flat, gain = rows[first], doc_flat[first], sim_flat[first] - impute[rows[first]]
    pair = row_query[rows].astype(np.int64) * span + doc_flat
    pairs, inverse = np.unique(pair, return_inverse=True)
    gains = np.bincount(inverse, weights=gain, minlength=len(pairs))
    query_of = pairs // span
    doc_of = pairs % span
    totals = (base[query_of] + gains) / np.maximum(counts[query_of], 1.0)
    results = []
    bounds = np.searchsorted(query_of, np.arange(num_queries + 1))
    for q in range(num_queries):
        a, b = bounds[q], bounds[q + 1]
        order = np.lexsort((doc_of[a:b], -totals[a:b]))[:top_k]
        results.append((doc_of[a:b][order], totals[a:b][order].astype(np.float32)))
    return results


class Searcher:
    """An opened index and its token search (exact or compressed)."""

    def __init__(
        self,
        index_dir: str,
        exact: bool = False,
        nprobe: int = DEFAULT_NPROBE,
        dtype: str = "float32",
        block_tokens: int = 32768,
        rescore: int = 0,
    ):
        self.index = TokenIndex(index_dir)
        self.exact = exact
        if exact:
            self.tokens = ExactSearcher(self.index, block_tokens=block_tokens, dtype=dtype)
        else:
            self.tokens = CompressedSearcher(self.index, nprobe=nprobe, rescore=rescore)

    @property
    def default_token_k(self) -> int:
        return default_token_k(self.index.num_tokens, len(self.index.doc_ids))

    def search_vectors(
        self, query_vectors: Sequence[np.ndarray], top_k: int, token_k: int | None = None
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per query (its token embeddings `[n, D]`): (doc numbers, scores), best first
        (`token_k` None: `default_token_k` of the index)."""
        if token_k is None:
            token_k = self.default_token_k
        if top_k < 1 or token_k < 1:
            raise ConfigError(f"top_k and token_k must be positive, got {top_k}, {token_k}")
        for vectors in query_vectors:
            if vectors.ndim != 2 or vectors.shape[1] != self.index.dim:
                raise ConfigError(
                    f"query embeddings of shape {vectors.shape}; the index holds "
                    f"{self.index.dim}-dimensional tokens: another encoder?"
                )
        lengths = [len(v) for v in query_vectors]
        matrix = np.zeros((sum(lengths), self.index.dim), np.float32)
        if len(matrix):
            matrix[:] = np.concatenate(query_vectors)
        scores, docs = self.tokens.search_tokens(matrix, token_k)
        row_query = np.repeat(np.arange(len(lengths)), lengths)
        return xtr_score(scores, docs, row_query, len(lengths), top_k)


def search(
    searcher: Searcher,
    encoder,
    queries: Mapping[str, str],
    top_k: int = 1000,
    token_k: int | None = DEFAULT_TOKEN_K,
    batch_queries: int = 64,
    progress: bool = True,
) -> dict[str, dict[str, float]]:
    """Searches `queries` (`{qid: text}`); -> the run `{qid: {docid: score}}` (top_k each).
    `token_k` None: `default_token_k` of the index."""
    if token_k is None:
        token_k = searcher.default_token_k
    if batch_queries < 1:
        raise ConfigError(f"batch_queries must be positive, got {batch_queries}")
    check_encoder(searcher.index, encoder)
    qids = list(queries)
    run: dict[str, dict[str, float]] = {}
    bar = progress_lib.progress(len(qids), "search", "queries", enabled=progress)
    started = time.time()
    doc_ids = searcher.index.doc_ids
    with progress_lib.closing(bar):
        for start in range(0, len(qids), batch_queries):
            batch = qids[start : start + batch_queries]
            vectors = encoder.encode_queries([queries[qid] for qid in batch])
            found = searcher.search_vectors(vectors, top_k, token_k)
            for qid, (numbers, scores) in zip(batch, found):
                run[qid] = {doc_ids[n]: float(s) for n, s in zip(numbers, scores)}
            if bar is not None:
                bar.update(len(batch))
    if progress:
        elapsed = max(time.time() - started, 1e-9)
        kind = (
            "exact"
            if searcher.exact
            else f"{searcher.tokens.codec}, nprobe {searcher.tokens.nprobe}"
            + (f", rescored x{searcher.tokens.rescore}" if searcher.tokens.rescore else "")
        )
        print(
            f"searched {len(qids)} queries in {elapsed:.1f}s ({len(qids) / elapsed:.1f} "
            f"queries/s; {kind}, token_k {token_k}) over {searcher.index.num_tokens} tokens",
            file=sys.stderr,
        )
    return run


def check_encoder(index: TokenIndex, encoder) -> None:
    """The query encoder must be the one the index was built with."""
    built = index.encoder_fingerprint
    if encoder.fingerprint != built:
        differs = sorted(
            key
            for key in set(built) | set(encoder.fingerprint)
            if built.get(key) != encoder.fingerprint.get(key)
            and key not in ("checkpoint", "max_length", "dtype")
        )
        if differs:
            raise ConfigError(
                f"{index.index_dir} was built with another encoder (differs in "
                f"{', '.join(differs)}): give the checkpoint it was built with"
            )
