"""`Ranker`: load any RankT5 checkpoint and score query-document pairs.

    from rankt5_jax import Ranker
    ranker = Ranker.load("path/to/checkpoint")          # ours, Hugging Face T5 or T5X
    scores = ranker.score("what is t5", ["doc one", "doc two"])   # float32, in docs order

Scoring sorts the pairs by token length, pads them into a few bucket lengths (one compiled function
per bucket), gives each bucket a fixed number of rows (padding rows are dropped afterwards), and
puts the scores back in input order. With a token budget (`batch_tokens`, on by default on CPU),
a bucket's rows are `min(batch_size, batch_tokens // bucket)`: long pairs go in fewer rows.

List-aware models (FiT5) score a query's candidates together, so the ranker never splits a list
across calls: each list is padded to a list size (`list_sizes`) and a token bucket, lists of the
same padded shape share a call (as many as the row budget holds, at least one), and padded
candidates are masked. Their inputs carry the first-stage score as a feature:

    ranker.score("what is t5", ["doc one", "doc two"], features=[12.3, 10.1])

A model too large for one device serves on a `data x model` mesh of this process's devices:

    ranker = Ranker.load("path/to/3b_checkpoint", mesh_shape=(2, 4))   # data=2, model=4

Params are sharded on `model` by the trainer's rules (heads, MLP, vocabulary) and read from the
checkpoint straight into their shards; batches (and FiT5's list axis) split over `data`.

A UR2N checkpoint (an XTR layer, `t5.xtr_dim > 0`) is also its own first stage, over a token
index built with `rankt5 index`:

    run = ranker.search({"q1": "what is t5"}, k=100, index_dir="index")
    retrieved, reranked = ranker.retrieve_and_rerank(queries, "corpus.jsonl", 100, index_dir="index")
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import nullcontext
from typing import Any

import flax
import jax
import numpy as np

from rankt5_jax.checkpoints.loading import load_checkpoint
from rankt5_jax.data.batching import bucket_lengths, default_dtype  # noqa: F401 (re-exported)
from rankt5_jax.data.features import FeatureTemplate
from rankt5_jax.data.vocab import RANKT5_TEMPLATE, InputTemplate, Vocabulary
from rankt5_jax.errors import CheckpointError, ConfigError
from rankt5_jax.modeling import registry
from rankt5_jax.modeling.models import BaseRankingModel, config_from_spec


def default_batch_tokens() -> int | None:
    """2048 padded tokens per call on CPU; none (a fixed `batch_size`) on accelerators.

    On the 2-core CPU of `bench/RESULTS.md`, a 2048-token budget (at most 32 rows) scored the
    length mix 1.5x faster than fixed batches of 32: long pairs get fewer rows, so their
    `[rows, heads, T, T]` attention tensors shrink. 4096 was about as fast, 8192 no faster than
    fixed batches. Not measured on GPUs or TPUs.
    """
    return 2048 if jax.default_backend() == "cpu" else None


def list_sizes(max_size: int, multiple: int = 1) -> list[int]:
    """Padded list sizes up to `max_size`: 1, 2, 4, then multiples of 8 up to 128, of 32 up to
    512, of 128 beyond, each rounded up to a multiple of `multiple` (the mesh's data axis, so a
    long list's candidates shard over it). A top-100 list pads to 104 candidates."""
    sizes = [1, 2, 4] + list(range(8, 129, 8)) + list(range(160, 513, 32))
    sizes += list(range(640, max(max_size, 640) + 128, 128))
    rounded = sorted({-(-size // multiple) * multiple for size in sizes})
    return [size for size in rounded if size < max_size] + [
        next(size for size in rounded if size >= max_size)
    ]


def parse_mesh(text: str) -> tuple[int, int]:
    """`data=D,model=M` (either order; `model=M` alone leaves `data` to the device count, -1)
    -> `(D, M)`, the `mesh_shape` of `Ranker.load`."""
    sizes: dict[str, int] = {}
    for part in text.replace(" ", "").split(","):
        name, sep, value = part.partition("=")
        if not sep or name not in ("data", "model") or name in sizes or not value.isdigit():
            raise ConfigError(
                f"--mesh {text!r}: expected data=D,model=M with positive integers "
                "(e.g. data=2,model=4; D*M = the number of devices)"
            )
        sizes[name] = int(value)
    if "model" not in sizes or 0 in sizes.values():
        raise ConfigError(
            f"--mesh {text!r}: expected data=D,model=M with positive integers "
            "(e.g. data=2,model=4; D*M = the number of devices)"
        )
    return sizes.get("data", -1), sizes["model"]


def mesh_partitioner(mesh_shape: Sequence[int], devices: Sequence[Any] | None = None):
    """A `Partitioner` over `devices` (default: this process's) shaped `(data, model)`; `data`
    -1: the device count over `model`. The parameter rules are the trainer's (1-D: heads, MLP,
    vocabulary on `model`; replicated over `data`)."""
    from rankt5_jax.modeling.partitioning import Partitioner

    devices = list(devices if devices is not None else jax.local_devices())
    if len(mesh_shape) != 2 or not all(isinstance(n, (int, np.integer)) for n in mesh_shape):
        raise ConfigError(f"mesh_shape must be (data, model) integers, got {mesh_shape!r}")
    data, model = (int(n) for n in mesh_shape)
    if data == -1 and model > 0 and len(devices) % model == 0:
        data = len(devices) // model
    if data < 1 or model < 1 or data * model != len(devices):
        raise ConfigError(
            f"mesh data={data},model={model} needs {data * model if data > 0 else '?'} devices, "
            f"but {len(devices)} are visible: data x model must equal the device count"
        )
    return Partitioner(data_axis_size=data, model_axis_size=model, devices=devices)


class Ranker:
    """A loaded ranking model with its vocabulary and input template.

    Args:
      model: the ranking model (`RankT5EncDec`, `RankT5Enc` or `MonoT5`).
      params: its parameters.
      vocab: the SentencePiece vocabulary.
      max_length: tokens per pair, EOS included (documents are truncated, the query kept).
      batch_size: pairs per compiled call (at most, with a token budget).
      batch_tokens: at most this many padded tokens per call, so a bucket of length L gets
        `min(batch_size, batch_tokens // L)` rows; 0: `batch_size` rows whatever the length;
        None: `default_batch_tokens()` (2048 on CPU, 0 on accelerators).
    """

    def __init__(
        self,
        model: BaseRankingModel,
        params: Any,
        vocab: Vocabulary,
        max_length: int = 512,
        batch_size: int = 32,
        max_query_length: int = 64,
        partitioner=None,
        batch_tokens: int | None = None,
    ):
        self.model = model
        self.vocab = vocab
        self.list_aware = bool(getattr(model, "list_aware", False))
        # Without a vocabulary the ranker scores pre-tokenized pairs only (`score_tokens`).
        if not vocab:
            self.template = None
        elif self.list_aware:
            self.template = FeatureTemplate(vocab, model.features, max_length, max_query_length)
        else:
            # The family's pair template (`Query: {q} Document: {d}` where it has none).
            pair_template = getattr(model, "template", RANKT5_TEMPLATE)
            self.template = InputTemplate(
                vocab, max_length, max_query_length, template=pair_template
            )
        self.max_length = max_length
        self.batch_size = batch_size
        self.batch_tokens = default_batch_tokens() if batch_tokens is None else batch_tokens or None
        self.buckets = bucket_lengths(max_length)
        self.partitioner = partitioner
        if batch_size < 1 or (batch_tokens is not None and batch_tokens < 0):
            raise ConfigError(
                f"batch_size must be positive and batch_tokens >= 0: {batch_size}, {batch_tokens}"
            )

        def score_fn(p, tokens):  # [N, T] -> [N]
            return model.score_lists(p, {"encoder_input_tokens": tokens[:, None]})[:, 0]

        def list_score_fn(p, tokens, mask):  # [B, L, T], [B, L] -> [B, L]
            return model.score_lists(p, {"encoder_input_tokens": tokens, "mask": mask})

        if partitioner is None:
            self._param_shardings = None
            self._score_fn: Callable = jax.jit(score_fn)
            self._list_score_fn: Callable = jax.jit(list_score_fn)
            self._token_sharding = None
            self._list_shardings = None
        else:
            if batch_size % partitioner.data_size:
                raise ConfigError(
                    f"batch_size {batch_size} must be a multiple of the data axis "
                    f"({partitioner.data_size})"
                )
            shardings = jax.tree_util.tree_map(
                lambda x: x.sharding, self.abstract_params(model, partitioner)
            )
            self._param_shardings = shardings
            self._token_sharding = partitioner.batch_sharding(2)
            self._score_fn = jax.jit(
                score_fn,
                in_shardings=(shardings, self._token_sharding),
                out_shardings=partitioner.replicated(),
            )
            # Lists: the candidates (axis 1) over the data axis, so a long list spreads out.
            self._list_shardings = partitioner.list_shardings()
            self._list_score_fn = jax.jit(
                list_score_fn,
                in_shardings=(shardings, *self._list_shardings),
                out_shardings=partitioner.replicated(),
            )
        self._compiled: set = set()  # the shapes each scoring function has compiled
        self.set_params(params)

    @staticmethod
    def abstract_params(model: BaseRankingModel, partitioner) -> Any:
        """The model's params as `jax.ShapeDtypeStruct`s (float32) with their shardings on the
        partitioner's mesh (the trainer's rules: heads, MLP and vocabulary on `model`)."""
        shapes = {"encoder_input_tokens": (1, 1, 8)}
        abstract = jax.eval_shape(
            lambda: model.get_initial_variables(jax.random.PRNGKey(0), shapes)
        )
        shardings = partitioner.params_shardings(abstract["params"], abstract["params_axes"])
        return jax.tree_util.tree_map(
            lambda x, sharding: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
            flax.core.unfreeze(abstract["params"]),
            shardings,
        )

    def set_params(self, params: Any) -> None:
        """Replaces the weights (same shapes); the compiled scoring functions are kept."""
        if self._param_shardings is None:
            self.params = jax.device_put(params)
        else:
            self.params = jax.device_put(params, self._param_shardings)

    # -- loading ----------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        variant: str | None = None,
        dtype: str | None = None,
        vocab: str | os.PathLike | None = None,
        max_length: int = 512,
        batch_size: int = 32,
        score_token: str = registry.SCORE_TOKEN,
        step: int | None = None,
        partitioner=None,
        batch_tokens: int | None = None,
        allow_pickle: bool = False,
        mesh_shape: Sequence[int] | None = None,
    ) -> Ranker:
        """Loads our checkpoint dir, a Hugging Face T5 dir, a T5X checkpoint dir, or a FiT5
        authors' checkpoint (their PyTorch state dict, or a directory holding it).

        Args:
          path: the directory.
          variant: a registered variant (`registry.NAMES`); read from the checkpoint where it says.
          dtype: activation dtype (`float32` or `bfloat16`); default: float32 on CPU, else bf16.
          vocab: SentencePiece model, where the directory has no `spiece.model`.
          max_length: tokens per pair; batch_size, batch_tokens: at most this many pairs and
            padded tokens per compiled call (see the class).
          score_token: the EncDec score token (looked up in the vocabulary).
          step: for our training directories, the step to load (default: the latest).
          partitioner: shard params and batches over a mesh (default: one device).
          allow_pickle: read a FiT5 authors' `.bin`/`.pt` (a pickle; read with
            `torch.load(weights_only=True)`); `.safetensors` needs no flag.
          mesh_shape: `(data, model)`: serve on a mesh of this process's devices (data x model
            of them; data -1: the rest), params sharded on `model` by the trainer's rules and
            batches split over `data` (a 3B/11B ranker across devices). The checkpoint is read
            straight into its shards: no device holds the whole model (see
            `checkpoints.loading`).
        """
        if mesh_shape is not None:
            if partitioner is not None:
                raise ConfigError("give mesh_shape or partitioner, not both")
            partitioner = mesh_partitioner(mesh_shape)
        target = None
        if partitioner is not None:

            def target(spec):  # the params' layout on the mesh, known once the spec is read
                return cls.abstract_params(registry.build_model(spec), partitioner)

        spec, params, vocabulary = load_checkpoint(
            path, variant, vocab, score_token, step, allow_pickle=allow_pickle, target=target
        )
        config = config_from_spec(spec).replace(dtype=dtype or default_dtype(), dropout_rate=0.0)
        spec = dict(spec, t5=config)
        if vocabulary.size > config.vocab_size:
            raise CheckpointError(
                f"vocabulary {vocabulary.path} has {vocabulary.size} ids but the model embeds "
                f"only {config.vocab_size}: wrong vocabulary?"
            )
        model = registry.build_model(spec)
        return cls(
            model,
            params,
            vocabulary,
            max_length=max_length,
            batch_size=batch_size,
            partitioner=partitioner,
            batch_tokens=batch_tokens,
        )

    # -- first stage (UR2N: the checkpoint's XTR layer over a token index) ------------------
    def xtr_encoder(self, max_length: int = 512, max_query_length: int = 64):
        """This model's XTR layer as a `retrieval.xtr_encoder.TokenEncoder` (its own params;
        built once per lengths). The model needs an XTR layer (`t5.xtr_dim > 0`)."""
        from rankt5_jax.retrieval import xtr_encoder

        cache = self.__dict__.setdefault("_xtr_encoders", {})
        key = (max_length, max_query_length)
        if key not in cache:
            cache[key] = xtr_encoder.encoder_from_model(
                self.model, self.params, self.vocab, max_length, max_query_length
            )
        return cache[key]

    def search(
        self,
        queries: Mapping[str, str] | Sequence[str],
        k: int = 1000,
        index_dir: str | os.PathLike | None = None,
        token_k: int | None = None,
        exact: bool = False,
        nprobe: int = 32,
        max_query_length: int = 64,
        progress: bool = False,
        rescore: int = 0,
    ) -> dict[str, dict[str, float]]:
        """UR2N's first stage: the top `k` documents of each query from the token index in
        `index_dir` (built from this checkpoint by `rankt5 index`), searched with this model's
        XTR layer: a thin convenience over `retrieval.xtr_retriever.XTRRetriever` (`token_k`
        tokens per query token, XTR's imputation; `exact` searches the float vectors on the
        device, else the index's codec with `nprobe` lists, `rescore` re-scoring its
        candidates with the float vectors).

        `queries`: `{qid: text}`, or texts (keyed "0", "1", ...). -> `{qid: {docid: score}}`.
        """
        if isinstance(queries, str):
            raise ConfigError("queries must be {qid: text} or a sequence of texts, not one string")
        if not isinstance(queries, Mapping):
            queries = {str(i): text for i, text in enumerate(queries)}
        retriever = self.retriever(
            index_dir, token_k, exact, nprobe, max_query_length, rescore, progress
        )
        return retriever.search(queries, k)

    def retriever(
        self,
        index_dir: str | os.PathLike | None,
        token_k: int | None = None,
        exact: bool = False,
        nprobe: int = 32,
        max_query_length: int = 64,
        rescore: int = 0,
        progress: bool = False,
    ):
        """This model's XTR layer over the token index in `index_dir` as a
        `retrieval.base.Retriever` (the opened index is kept per folder and search settings)."""
        from rankt5_jax.retrieval import xtr_retriever, xtr_search

        if index_dir is None:
            raise ConfigError("search needs index_dir: a token index built by `rankt5 index`")
        searchers = self.__dict__.setdefault("_xtr_searchers", {})
        key = (os.path.abspath(index_dir), exact, nprobe, rescore)
        if key not in searchers:
            searchers[key] = xtr_search.Searcher(
                os.fspath(index_dir), exact=exact, nprobe=nprobe, rescore=rescore
            )
        searcher = searchers[key]
        built = searcher.index.encoder_fingerprint.get("max_length", self.max_length)
        encoder = self.xtr_encoder(built, max_query_length)
        return xtr_retriever.XTRRetriever(searcher, encoder, token_k, progress=progress)

    def retrieve_and_rerank(
        self,
        queries: Mapping[str, str] | Sequence[str],
        corpus: Any,
        k: int = 100,
        index_dir: str | os.PathLike | None = None,
        **search_args: Any,
    ) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
        """One model, both stages: `search` each query's top `k` with this model's XTR layer,
        then re-rank them with this same model. `corpus`: the texts of the indexed documents, a
        corpus file path, a `data.formats.Corpus`, or `{docid: text or {"title", "text"}}`.
        `search_args` go to `search` (`token_k`, `exact`, `nprobe`, ...).

        -> `(retrieved, reranked)`, both `{qid: {docid: score}}` over the same documents.
        """
        from rankt5_jax.data import formats

        if not isinstance(queries, Mapping):
            queries = {str(i): text for i, text in enumerate(queries)}
        retrieved = self.search(queries, k, index_dir=index_dir, **search_args)
        opened = isinstance(corpus, (str, os.PathLike))
        source = formats.Corpus(os.fspath(corpus)) if opened else corpus

        def text_of(docid: str) -> str:
            if isinstance(source, formats.Corpus):
                return source.text(docid)
            doc = source[docid]
            if isinstance(doc, Mapping):
                return f"{doc.get('title') or ''} {doc['text']}".strip()
            return doc

        try:
            order = [(qid, list(docs)) for qid, docs in retrieved.items()]
            lists = [self.tokenize(queries[qid], [text_of(d) for d in ids]) for qid, ids in order]
        except KeyError as err:
            raise ConfigError(f"document {err} of the index is not in the corpus given") from err
        finally:
            if opened:
                source.close()
        scores = self.score_token_lists(lists) if lists else []
        reranked = {
            qid: dict(zip(ids, map(float, values))) for (qid, ids), values in zip(order, scores)
        }
        return retrieved, reranked

    # -- scoring ----------------------------------------------------------------------------
    @property
    def needs_features(self) -> bool:
        """Whether inputs carry the first-stage score (FiT5 with a feature mode other than none)."""
        return self.list_aware and self.model.features.uses_features

    def tokenize(
        self,
        query: str,
        docs: Sequence[str],
        features: Sequence[float] | None = None,
        titles: Sequence[str] | None = None,
    ) -> list[list[int]]:
        """One query's inputs. Pairwise models read `title text` as the document (give titles
        inside `docs`, or as `titles`); FiT5 reads titles apart, and `features` (the first-stage
        scores) where its feature mode needs them."""
        if isinstance(docs, str):
            raise ConfigError("docs must be a sequence of strings, not one string")
        if self.list_aware:
            return self.template.encode_list(query, docs, titles, features)
        if titles is not None:
            if len(titles) != len(docs):
                raise ConfigError(f"{len(titles)} titles for {len(docs)} documents")
            docs = [f"{t} {d}".strip() if t else d for t, d in zip(titles, docs)]
        return self.template.encode_pairs(query, docs)

    def score(
        self,
        query: str,
        docs: Sequence[str],
        features: Sequence[float] | None = None,
        titles: Sequence[str] | None = None,
    ) -> np.ndarray:
        """Scores of `docs` for `query`: float32 `[len(docs)]`, in the order of `docs`.

        `features`: the candidates' first-stage scores, for FiT5 models with features (the
        saved feature settings normalise them); `titles`: the documents' titles.
        """
        tokens = self.tokenize(query, docs, features, titles)
        return self.score_token_lists([tokens])[0]

    def score_token_lists(
        self,
        lists: Sequence[Sequence[Sequence[int]]],
        on_scored: Callable[[int, float], None] | None = None,
    ) -> list[np.ndarray]:
        """Scores pre-tokenized candidate lists, one array per list in input order. Pairwise
        models score all pairs together (bucketed across lists); list-aware models score each
        list whole. `on_scored(n, compiling)` follows each batch's `n` pairs read back, with the
        seconds spent compiling new shapes since the last call (progress rates leave them out)."""
        if not self.list_aware:
            flat = [seq for candidates in lists for seq in candidates]
            scores = self.score_tokens(flat, on_scored)
            bounds = np.cumsum([0] + [len(c) for c in lists])
            return [scores[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        results = [np.zeros(len(c), np.float32) for c in lists]
        with self._mesh_context():
            self._score_lists(lists, results, on_scored)
        return results

    def _mesh_context(self):
        return self.partitioner.context() if self.partitioner is not None else nullcontext()

    def _score_lists(self, lists, results: list[np.ndarray], on_scored=None) -> None:
        batches = self.list_batches(lists)
        if self._list_shardings is not None:  # (tokens, mask) each laid out by its sharding
            batches = ((i, *jax.device_put((t, m), self._list_shardings)) for i, t, m in batches)

        def store(indices, result) -> int:
            values = np.asarray(result)
            for row, index in enumerate(indices):
                results[index][:] = values[row, : len(lists[index])]
            return sum(len(lists[index]) for index in indices)

        self._pipeline(self._list_score_fn, batches, store, on_scored)

    def _pipeline(self, fn, batches, store, on_scored) -> None:
        """`fn(params, *arrays)` for each `(indices, *arrays)` of `batches`, dispatched without
        waiting, read (`store(indices, result) -> pairs`) two batches later, then
        `on_scored(pairs, seconds spent compiling new shapes since the last call)`."""
        pending, compiling, report = [], 0.0, on_scored or (lambda pairs, seconds: None)

        def read(indices, result) -> None:
            nonlocal compiling
            report(store(indices, result), compiling)
            compiling = 0.0

        for indices, *arrays in batches:
            key, started = (fn is self._score_fn, *(a.shape for a in arrays)), time.perf_counter()
            pending.append((indices, fn(self.params, *arrays)))
            if key not in self._compiled:
                self._compiled.add(key)
                compiling += time.perf_counter() - started
            if len(pending) > 2:
                read(*pending.pop(0))
        for item in pending:
            read(*item)

    def list_batches(
        self, lists: Sequence[Sequence[Sequence[int]]]
    ) -> Iterable[tuple[list[int], np.ndarray, np.ndarray]]:
        """Whole lists grouped by padded shape: (list indices, tokens [B, size, bucket], mask
        [B, size]). A call holds as many lists as `rows(bucket) // size` (at least one)."""
        multiple = self.partitioner.data_size if self.partitioner is not None else 1
        longest = max((len(c) for c in lists), default=1)
        sizes = np.asarray(list_sizes(longest, multiple))
        buckets = np.asarray(self.buckets)
        shapes = {}
        for index, candidates in enumerate(lists):
            if not len(candidates):
                continue
            length = max(len(seq) for seq in candidates)
            if length > self.max_length:
                raise ConfigError(
                    f"list {index} has a candidate of {length} tokens, more than "
                    f"max_length={self.max_length}"
                )
            size = int(sizes[np.searchsorted(sizes, len(candidates))])
            bucket = int(buckets[np.searchsorted(buckets, length)])
            shapes.setdefault((size, bucket), []).append(index)
        for (size, bucket), indices in sorted(shapes.items()):
            per_call = max(1, self.rows(bucket) // size)
            for start in range(0, len(indices), per_call):
                chunk = indices[start : start + per_call]
                tokens = np.zeros((len(chunk), size, bucket), np.int32)
                mask = np.zeros((len(chunk), size), bool)
                for row, index in enumerate(chunk):
                    for slot, seq in enumerate(lists[index]):
                        tokens[row, slot, : len(seq)] = seq
                    mask[row, : len(lists[index])] = True
                yield chunk, tokens, mask

    def score_tokens(self, sequences: Sequence[Sequence[int]], on_scored=None) -> np.ndarray:
        """Scores pre-tokenized pairs (each ending in EOS), in input order. A list-aware model
        (FiT5) takes `sequences` as one list. `on_scored`: as `score_token_lists`'."""
        if self.list_aware:
            return self.score_token_lists([sequences], on_scored)[0]
        scores = np.zeros(len(sequences), np.float32)
        with self._mesh_context():
            return self._score_all(sequences, scores, on_scored)

    def _score_all(self, sequences, scores: np.ndarray, on_scored=None) -> np.ndarray:
        batches = self.batches(sequences)
        if self._token_sharding is not None:
            batches = ((i, jax.device_put(t, self._token_sharding)) for i, t in batches)

        def store(indices, result) -> int:
            scores[indices] = np.asarray(result)[: len(indices)]
            return len(indices)

        self._pipeline(self._score_fn, batches, store, on_scored)
        return scores

    def rows(self, bucket: int) -> int:
        """Rows of a batch padded to `bucket` tokens: `batch_size`, or with `batch_tokens`
        `min(batch_size, batch_tokens // bucket)` rounded down to a multiple of the mesh's
        data axis (at least one multiple)."""
        if self.batch_tokens is None:
            return self.batch_size
        multiple = self.partitioner.data_size if self.partitioner is not None else 1
        rows = min(self.batch_size, self.batch_tokens // bucket) // multiple * multiple
        return max(rows, multiple)

    def batches(
        self, sequences: Sequence[Sequence[int]]
    ) -> Iterable[tuple[np.ndarray, np.ndarray]]:
        """Length-sorted, bucket-padded batches: (original indices, tokens [rows, bucket])."""
        lengths = np.fromiter((len(s) for s in sequences), np.int64, len(sequences))
        if len(lengths) and lengths.max() > self.max_length:
            raise ConfigError(
                f"pair {int(lengths.argmax())} has {int(lengths.max())} tokens, more than "
                f"max_length={self.max_length}"
            )
        order = np.argsort(lengths, kind="stable")
        buckets = np.asarray(self.buckets)
        rows_of = np.array([self.rows(b) for b in self.buckets])
        start = 0
        while start < len(order):
            # Ascending lengths: the first c pairs pad to the bucket of the c-th, which allows
            # rows_of[slot] rows; take the largest c that fits its own bucket's rows.
            slots = np.searchsorted(buckets, lengths[order[start : start + self.batch_size]])
            fits = rows_of[slots]
            count = int(np.nonzero(np.arange(1, len(slots) + 1) <= fits)[0].max()) + 1
            end = start + count
            indices = order[start:end]
            tokens = np.zeros((fits[count - 1], buckets[slots[count - 1]]), np.int32)
            for row, idx in enumerate(indices):
                tokens[row, : lengths[idx]] = sequences[idx]
            start = end
            yield indices, tokens
