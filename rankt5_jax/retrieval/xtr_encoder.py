"""Token encoders for the XTR index and search: a checkpoint's XTR layer, bucketed and batched.

    encoder = load_encoder("model_dir")                  # a UR2N checkpoint (t5.xtr_dim > 0)
    vectors = encoder.encode(encoder.tokenize_queries(["what is t5"]))   # [[n_tokens, xtr_dim]]

`TokenEncoder` wraps any `encode_fn(tokens int32 [N, T]) -> (emb float32 [N, T, D] unit
length, mask bool [N, T])`: it sorts sequences by length, pads them to a few bucket lengths with
a fixed number of rows per bucket (one compiled shape each, rows = `batch_tokens // bucket`),
keeps two calls in flight, and returns each sequence's real tokens' embeddings. The token inputs
are UR2N's (`data.xtr_inputs`: `Query: {q}` and `Document: {title} {text}`, each ending in EOS).

`load_encoder` / `encoder_from_model` build it from a checkpoint (or a `Ranker`'s model and
params) with `modeling.xtr.token_embeddings`; `table_encoder` is a model-free one (a seeded
random token table with a context term) for tests and benchmarks of the index machinery.

`fingerprint` (JSON) identifies what produced the vectors: an index records it, and resuming a
build with another encoder is refused.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rankt5_jax.checkpoints.loading import load_checkpoint
from rankt5_jax.data import xtr_inputs
from rankt5_jax.data.batching import bucket_lengths, default_dtype
from rankt5_jax.data.vocab import Vocabulary
from rankt5_jax.errors import ConfigError
from rankt5_jax.modeling import registry
from rankt5_jax.modeling.models import config_from_spec


def default_batch_tokens() -> int:
    """Padded tokens per encoder call: 8192 on CPU, 65536 on accelerators."""
    return 8192 if jax.default_backend() == "cpu" else 65536


class TokenEncoder:
    """Token embeddings of many sequences through one `encode_fn`, length-bucketed.

    Args:
      encode_fn: `tokens int32 [N, T] -> (emb [N, T, dim], mask bool [N, T])`, unit-length rows
        (jit-compiled by the caller; called with numpy arrays).
      dim: the embedding width.
      vocab: the vocabulary of `tokenize_documents` / `tokenize_queries`.
      max_length: tokens per document (EOS included; longer ones are cut).
      max_query_length: tokens per query (EOS included).
      batch_tokens: padded tokens per call (None: `default_batch_tokens()`).
      max_rows: at most this many sequences per call.
      fingerprint: JSON-able identity of the encoder (what produced the vectors).
    """

    def __init__(
        self,
        encode_fn: Callable[[np.ndarray], tuple[Any, Any]],
        dim: int,
        vocab: Vocabulary | None,
        max_length: int = 512,
        max_query_length: int = 64,
        batch_tokens: int | None = None,
        max_rows: int = 256,
        fingerprint: dict | None = None,
    ):
        if dim < 1 or max_length < 2 or max_query_length < 2 or max_rows < 1:
            raise ConfigError(
                f"bad encoder settings: dim={dim}, max_length={max_length}, "
                f"max_query_length={max_query_length}, max_rows={max_rows}"
            )
        self.encode_fn = encode_fn
        self.dim = int(dim)
        self.vocab = vocab
        self.max_length = int(max_length)
        self.max_query_length = int(max_query_length)
        self.batch_tokens = int(batch_tokens or default_batch_tokens())
        self.max_rows = int(max_rows)
        self.buckets = bucket_lengths(max(self.max_length, self.max_query_length))
        self.fingerprint = dict(fingerprint or {})
        self.fingerprint.setdefault("dim", self.dim)
        self.fingerprint.setdefault("max_length", self.max_length)

    # -- tokens ---------------------------------------------------------------------------
    def tokenize_documents(self, titles: Sequence[str], texts: Sequence[str]) -> list[list[int]]:
        """`Document: {title} {text}` + EOS per document, cut to `max_length`."""
        return xtr_inputs.document_tokens_batch(self.vocab, titles, texts, self.max_length)

    def tokenize_queries(self, texts: Sequence[str]) -> list[list[int]]:
        """`Query: {text}` + EOS per query, cut to `max_query_length`."""
        return xtr_inputs.query_tokens_batch(self.vocab, texts, self.max_query_length)

    # -- embeddings -----------------------------------------------------------------------
    def rows(self, bucket: int) -> int:
        return max(1, min(self.max_rows, self.batch_tokens // bucket))

    def batches(self, sequences: Sequence[Sequence[int]]):
        """Length-sorted, bucket-padded batches: (indices, tokens int32 [rows(bucket), bucket])."""
        lengths = np.fromiter((len(s) for s in sequences), np.int64, len(sequences))
        if len(lengths) and lengths.max() > self.buckets[-1]:
            raise ConfigError(
                f"sequence {int(lengths.argmax())} has {int(lengths.max())} tokens, more than "
                f"{self.buckets[-1]}"
            )
        order = np.argsort(lengths, kind="stable")
        buckets = np.asarray(self.buckets)
        start = 0
        while start < len(order):
            # The next sequences padded to the bucket of the first; as many as its rows hold,
            # then the batch's bucket is the one of its longest.
            rows = self.rows(int(buckets[np.searchsorted(buckets, lengths[order[start]])]))
            while True:
                chunk = order[start : start + rows]
                bucket = int(buckets[np.searchsorted(buckets, lengths[chunk[-1]])])
                if self.rows(bucket) >= len(chunk):
                    break
                rows = self.rows(bucket)
            tokens = np.zeros((self.rows(bucket), bucket), np.int32)
            for row, index in enumerate(chunk):
                tokens[row, : lengths[index]] = sequences[index]
            start += len(chunk)
            yield chunk, tokens

    def encode(self, sequences: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """Each sequence's real tokens' embeddings, float32 `[n_i, dim]`, in input order."""
        out: list[np.ndarray] = [np.zeros((0, self.dim), np.float32)] * len(sequences)
        pending: list = []

        def store(indices, result):
            emb, mask = result
            emb = np.asarray(emb, np.float32)
            mask = np.asarray(mask, bool)
            for row, index in enumerate(indices):
                real = mask[row, : len(sequences[index])]
                out[index] = emb[row, : len(sequences[index])][real]

        for indices, tokens in self.batches(sequences):
            pending.append((indices, self.encode_fn(tokens)))
            if len(pending) > 2:
                store(*pending.pop(0))
        for item in pending:
            store(*item)
        return out

    def encode_queries(self, texts: Sequence[str]) -> list[np.ndarray]:
        return self.encode(self.tokenize_queries(texts))


class CachedEncoder:
    """A token encoder (`TokenEncoder`'s interface) whose `encode` runs once per distinct token
    sequence: indexes of one corpus built with several codecs (or settings) share the vectors,
    so the encoder's time is spent once."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.cache: dict[tuple, np.ndarray] = {}
        self.dim = inner.dim
        self.fingerprint = inner.fingerprint

    def tokenize_documents(self, titles, texts):
        return self.inner.tokenize_documents(titles, texts)

    def encode_queries(self, texts):
        return self.inner.encode_queries(texts)

    def encode(self, sequences):
        missing = [s for s in {tuple(s) for s in sequences} if s not in self.cache]
        for key, vectors in zip(missing, self.inner.encode([list(s) for s in missing])):
            self.cache[key] = vectors
        return [self.cache[tuple(s)] for s in sequences]


def params_digest(params: Any) -> str:
    """A short hash of every parameter array (paths, shapes, dtypes and bytes)."""
    digest = hashlib.blake2b(digest_size=12)
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    for path, leaf in sorted(leaves, key=lambda item: jax.tree_util.keystr(item[0])):
        array = np.asarray(leaf)
        digest.update(f"{jax.tree_util.keystr(path)}{array.shape}{array.dtype}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _file_digest(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.blake2b(handle.read(), digest_size=12).hexdigest()


def encoder_from_model(
    model: Any,
    params: Any,
    vocab: Vocabulary,
    max_length: int = 512,
    max_query_length: int = 64,
    batch_tokens: int | None = None,
    source: str | None = None,
) -> TokenEncoder:
    """The XTR layer of `model` (a `BaseRankingModel` with `config.xtr_dim > 0`) as a
    `TokenEncoder`; `params` are put on the default device once (a `Ranker`'s may be reused)."""
    from rankt5_jax.modeling.xtr import token_embeddings

    if not model.config.xtr_dim:
        raise ConfigError(
            f"{source or 'this model'} has no XTR layer (its spec's t5.xtr_dim is 0): "
            "train one with gin/experiments/msmarco_ur2n.gin (smoke: smoke_cpu_ur2n.gin)"
        )
    fingerprint = {
        "checkpoint": os.path.abspath(source) if source else None,
        "variant": getattr(model, "variant", "") or type(model).__name__,
        "xtr_dim": int(model.config.xtr_dim),
        "dtype": str(jnp.dtype(model.config.dtype)),
        "params": params_digest(params),
        "vocab": _file_digest(vocab.path),
    }
    jitted = jax.jit(lambda p, t: token_embeddings(model, p, t))
    return TokenEncoder(
        functools.partial(jitted, jax.device_put(params)),
        model.config.xtr_dim,
        vocab,
        max_length=max_length,
        max_query_length=max_query_length,
        batch_tokens=batch_tokens,
        fingerprint=fingerprint,
    )


def load_encoder(
    checkpoint: str,
    vocab: str | None = None,
    variant: str | None = None,
    dtype: str | None = None,
    step: int | None = None,
    max_length: int = 512,
    max_query_length: int = 64,
    batch_tokens: int | None = None,
) -> TokenEncoder:
    """The XTR encoder of a UR2N checkpoint (any kind `load_checkpoint` reads)."""
    spec, params, vocabulary = load_checkpoint(checkpoint, variant, vocab, step=step)
    config = config_from_spec(spec).replace(dtype=dtype or default_dtype(), dropout_rate=0.0)
    model = registry.build_model(dict(spec, t5=config))
    return encoder_from_model(
        model,
        params,
        vocabulary,
        max_length=max_length,
        max_query_length=max_query_length,
        batch_tokens=batch_tokens,
        source=checkpoint,
    )


def table_encoder(
    vocab: Vocabulary,
    dim: int = 32,
    seed: int = 0,
    max_length: int = 512,
    max_query_length: int = 64,
    batch_tokens: int | None = None,
) -> TokenEncoder:
    """A model-free encoder: each token's row of a seeded random table, plus half of its left
    neighbour's row of a second table and the sequence's mean over a third, normalised to unit
    length (so equal tokens in different contexts differ). For tests and benchmarks of the
    index and search, which take any encoder."""
    rng = np.random.default_rng(seed)
    size = max(vocab.size, 1)
    tables = jnp.asarray(rng.standard_normal((3, size, dim)).astype(np.float32))

    @jax.jit
    def encode_fn(tokens):
        tokens = jnp.asarray(tokens, jnp.int32)
        mask = tokens > 0
        left = jnp.pad(tokens[:, :-1], ((0, 0), (1, 0)))
        weights = mask[..., None].astype(jnp.float32)
        context = (tables[2][tokens] * weights).sum(1) / jnp.maximum(weights.sum(1), 1.0)
        emb = tables[0][tokens] + 0.5 * tables[1][left] + context[:, None]
        emb = emb / jnp.linalg.norm(emb, axis=-1, keepdims=True)
        return jnp.where(mask[..., None], emb, 0.0), mask

    return TokenEncoder(
        encode_fn,
        dim,
        vocab,
        max_length=max_length,
        max_query_length=max_query_length,
        batch_tokens=batch_tokens,
        fingerprint={"table": {"seed": seed, "dim": dim, "vocab": _file_digest(vocab.path)}},
    )
