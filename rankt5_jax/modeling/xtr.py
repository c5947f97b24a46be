"""UR2N's first stage: XTR token embeddings from a ranker's own encoder, and their training.

UR2N (Bhat et al., IBM Research) makes one T5 ranker its own retriever: a parallel copy of the
encoder's last layer (`encoder/xtr_layer`, initialised from `encoder/layers_{L-1}`), the
encoder's final norm and a projection to `xtr_dim` (`encoder/xtr_projection/kernel`) give
L2-normalised token embeddings (`ur2n.XTREncoder`, the family's network branch); only those two
are trained, with XTR's in-batch token retrieval loss (Lee et al., NeurIPS 2023). The ranker's own paths never read
them, so a checkpoint with an XTR layer re-ranks exactly as before.

  token_embeddings(model, params, tokens [N, T]) -> (emb [N, T, xtr_dim] float32, mask [N, T])
  xtr_scores(query_emb, query_mask, doc_emb, doc_mask, k_train, normalizer) -> f [B, N]
  xtr_loss(query_emb, query_mask, doc_emb, doc_mask, targets, k_train, temperature,
           normalizer) -> (loss, f [B, N])
  XTRModel(base, xtr_dim, k_train)    the training model: `loss_fn` is `xtr_loss` over the batch
  make_xtr_model (gin `xtr.make_xtr_model`)

The score, with `P_ij = q_i . d_j` over the query's tokens `i` and the tokens `j` of all
documents of the batch:

  A_ij = 1[P_ij >= tau_i]            tau_i: the k_train-th largest P_ij' over all real document
                                     tokens j' of the batch (all of them when there are fewer)
  f(Q, D) = 1/max(Z, 1) * sum_i max_{j in D} A_ij P_ij
  Z = #{i : A_ij = 1 for some j in D}

* Ties: every token tied with the k_train-th largest similarity is retrieved (a threshold, so
  the alignment does not depend on the order of the documents or tokens).
* Padding: padded document tokens are never retrieved, take no part in `tau` and are not
  tokens of D (the max runs over D's real tokens); padded query tokens add nothing to the sum
  or to Z. So f does not depend on how much padding either side has.
* A query token that retrieves no token of D adds nothing to the sum and is not counted in Z.
  A document that no query token retrieves (Z = 0) scores 0: the sum is empty, Z is taken as 1.
  A retrieved similarity below 0 counts as itself only when every real token of D is retrieved
  (otherwise `max_j A_ij P_ij` is 0, as the formula says).
* A document with no real token at all (an all-padding row) is left out of the softmax.
* `normalizer="positive"` (Lightning IR's XTR, PyLate): an aligned similarity <= 0 counts as
  not retrieved, so Z counts only the query tokens with a positive retrieved similarity in D.

The loss is the cross-entropy over the batch's documents, `-log softmax_n f(Q_b, D_n)` at the
query's positive `targets[b]`, averaged over queries. Under `jax.jit` on a mesh the batch axis is
split over `data`; the top-k over all documents' tokens makes XLA gather the document embeddings
across it (tests compare 8 devices with 1).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

import gin
from rankt5_jax.errors import ConfigError
from rankt5_jax.modeling import registry
from rankt5_jax.modeling.base import BaseRankingModel
from rankt5_jax.modeling.metrics import in_graph_metrics
from rankt5_jax.modeling.ur2n import xtr_embeddings

XTR_PARAMS = ("encoder/xtr_layer/", "encoder/xtr_projection/")
# With `train_encoder`: the layers below the XTR layer and the token embeddings train too (the
# encoder's own last layer gets no gradient from the XTR loss: the XTR layer is its parallel copy).
ENCODER_PARAMS = ("encoder/", "token_embedder/")
DEFAULT_XTR_DIM = 128
DEFAULT_K_TRAIN = 52
NORMALIZERS = ("aligned", "positive")
DEFAULT_NORMALIZER = "aligned"


def check_normalizer(normalizer: str) -> str:
    if normalizer not in NORMALIZERS:
        raise ConfigError(f"normalizer must be one of {', '.join(NORMALIZERS)}, got {normalizer!r}")
    return normalizer


def token_embeddings(model: Any, params: Any, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
    """UR2N token embeddings of `tokens` int32 `[N, T]` (0 = padding).

    Returns `(emb, mask)`: `emb` float32 `[N, T, xtr_dim]`, L2-normalised per token, zeros at
    padding; `mask` bool `[N, T]`, True at real tokens. `model` is a `BaseRankingModel` whose
    config has `xtr_dim > 0` (e.g. `registry.build_model(spec)` of a UR2N model directory);
    deterministic (no dropout). jit-able with the model closed over:
    `jax.jit(lambda p, t: token_embeddings(model, p, t))`.
    """
    if not model.config.xtr_dim:
        raise ConfigError(
            f"this {model.variant or type(model).__name__} model has no XTR layer "
            "(its spec's t5.xtr_dim is 0): train one with gin/experiments/msmarco_ur2n.gin"
        )
    tokens = jnp.asarray(tokens, jnp.int32)
    emb = model.module.apply({"params": params}, tokens, method=xtr_embeddings)
    return emb.astype(jnp.float32), tokens > 0


def xtr_scores(
    query_emb: jax.Array,
    query_mask: jax.Array,
    doc_emb: jax.Array,
    doc_mask: jax.Array,
    k_train: int = DEFAULT_K_TRAIN,
    normalizer: str = DEFAULT_NORMALIZER,
) -> jax.Array:
    """XTR's training score `f [B, N]` of every query against every document of the batch.

    Args:
      query_emb: `[B, Tq, D]` query token embeddings.
      query_mask: `[B, Tq]` bool, True at real query tokens.
      doc_emb: `[N, Td, D]` document token embeddings.
      doc_mask: `[N, Td]` bool, True at real document tokens.
      k_train: tokens each query token retrieves from all `N * Td` document tokens.
      normalizer: Z. "aligned": the query tokens that retrieved a token of D (the notes'
        formula); "positive": only those whose retrieved similarity in D is above 0, an aligned
        similarity <= 0 counting as not retrieved (Lightning IR's XTR and PyLate).

    See the module docstring for the definition (ties, padding, Z = 0).
    """
    if k_train < 1:
        raise ConfigError(f"k_train must be positive, got {k_train}")
    check_normalizer(normalizer)
    num_docs, doc_len, _ = doc_emb.shape
    query_mask = query_mask.astype(bool)
    doc_mask = doc_mask.astype(bool)
    sims = jnp.einsum(
        "bid,njd->binj", query_emb.astype(jnp.float32), doc_emb.astype(jnp.float32)
    )  # [B, Tq, N, Td]
    real = doc_mask[None, None]  # [1, 1, N, Td]
    flat = jnp.where(real, sims, -jnp.inf).reshape(sims.shape[:2] + (num_docs * doc_len,))
    k = min(k_train, num_docs * doc_len)
    # The k-th largest similarity over the batch's real document tokens (-inf when fewer).
    threshold = jax.lax.stop_gradient(jax.lax.top_k(flat, k)[0][..., k - 1])  # [B, Tq]
    aligned = (sims >= threshold[..., None, None]) & real  # A_ij
    if normalizer == "positive":
        aligned = aligned & (sims > 0)
    products = jnp.where(aligned, sims, 0.0)  # A_ij P_ij
    best = jnp.max(jnp.where(real, products, -jnp.inf), axis=-1)  # max over D's real tokens
    has_tokens = jnp.any(doc_mask, axis=-1)  # [N]
    best = jnp.where(has_tokens[None, None], best, 0.0)  # [B, Tq, N]
    counted = query_mask[..., None]  # [B, Tq, 1]
    total = jnp.sum(jnp.where(counted, best, 0.0), axis=1)  # [B, N]
    retrieves = jnp.any(aligned, axis=-1) & counted  # [B, Tq, N]
    z = jnp.sum(retrieves.astype(jnp.float32), axis=1)  # [B, N]
    return total / jnp.maximum(z, 1.0)


def xtr_loss(
    query_emb: jax.Array,
    query_mask: jax.Array,
    doc_emb: jax.Array,
    doc_mask: jax.Array,
    targets: jax.Array,
    k_train: int = DEFAULT_K_TRAIN,
    temperature: float = 1.0,
    normalizer: str = DEFAULT_NORMALIZER,
) -> tuple[jax.Array, jax.Array]:
    """XTR's in-batch loss: `mean_b -log softmax_n (f(Q_b, D_n) / temperature)[targets[b]]`
    (float32; `temperature` 1 is the formula as the notes give it).

    `targets` int `[B]`: each query's positive among the `N` documents. Documents without a
    real token are left out of the softmax. Returns `(loss, f [B, N])`.
    """
    if temperature <= 0:
        raise ConfigError(f"temperature must be positive, got {temperature}")
    scores = xtr_scores(query_emb, query_mask, doc_emb, doc_mask, k_train, normalizer)
    present = jnp.any(doc_mask.astype(bool), axis=-1)  # [N]
    logits = jnp.where(present[None], scores / temperature, -jnp.inf)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(log_probs, targets.astype(jnp.int32)[:, None], axis=-1)[:, 0]
    return -jnp.mean(picked), scores


class XTRModel(BaseRankingModel):
    """Trains UR2N's XTR layer of a ranking model (`base`: monoT5, RankT5-EncDec or RankT5-Enc).

    Batches (`data.feature_converters.XTRFeatureConverter`): `query_tokens [B, Tq]` and
    `doc_tokens [B, M, Td]`, the query's positive first and `M - 1` hard negatives (UR2N: one),
    all-zero rows for missing ones. `loss_fn` is `xtr_loss` over all `B * M` documents of the
    batch; only the XTR params (`XTR_PARAMS`) are trained. Everything else is the base model's:
    the spec (with `t5.xtr_dim`), the params, the re-ranking scores (`score_lists`), so the
    model directory training writes is a plain `base` model directory with an XTR layer.

    Args:
      base: the ranking model; rebuilt with `config.xtr_dim = xtr_dim` if it differs.
      xtr_dim: token embedding width (UR2N: 128).
      k_train: tokens retrieved per query token in the loss (XTR: 52 ... 320; UR2N: 52).
      temperature: the softmax's temperature over f (1: the formula as the notes give it;
        f lies in [-1, 1], so lower values sharpen the in-batch softmax).
      normalizer: Z of the score ("aligned" or "positive", see `xtr_scores`).

    With `grad_accum_steps > 1` the in-batch documents are those of each micro-batch.
    """

    batch_features: ClassVar[dict[str, int]] = {"query_tokens": 2, "doc_tokens": 3}
    trainable_prefixes: ClassVar[tuple[str, ...]] = XTR_PARAMS

    def __init__(
        self,
        base: BaseRankingModel,
        xtr_dim: int | None = None,
        k_train: int = DEFAULT_K_TRAIN,
        temperature: float = 1.0,
        normalizer: str = DEFAULT_NORMALIZER,
        train_encoder: bool = False,
    ):
        if isinstance(base, XTRModel):
            base = base.base
        if getattr(base, "list_aware", False):
            raise ConfigError("an XTR layer over FiT5's list-aware encoder is not supported")
        if xtr_dim is None:
            xtr_dim = base.config.xtr_dim or DEFAULT_XTR_DIM
        if xtr_dim < 1:
            raise ConfigError(f"xtr_dim must be positive, got {xtr_dim}")
        if k_train < 1:
            raise ConfigError(f"k_train must be positive, got {k_train}")
        if temperature <= 0:
            raise ConfigError(f"temperature must be positive, got {temperature}")
        if base.config.xtr_dim != xtr_dim:
            base = registry.build_model(dict(base.spec(), t5=base.config.replace(xtr_dim=xtr_dim)))
        self.base = base
        self.k_train = int(k_train)
        self.temperature = float(temperature)
        self.normalizer = check_normalizer(normalizer)
        self.train_encoder = bool(train_encoder)
        if self.train_encoder:  # the XTR loss also trains the shared encoder and embeddings
            self.trainable_prefixes = XTR_PARAMS + ENCODER_PARAMS
        self.variant = base.variant
        super().__init__(base.config, module=base.module)

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> XTRModel:
        return cls(registry.build_model(spec))

    def spec(self) -> dict[str, Any]:
        return self.base.spec()

    def get_initial_variables(self, rng, input_shapes, input_types=None):
        return self.base.get_initial_variables(rng, input_shapes, input_types)

    def score_lists(self, params, batch, dropout_rng=None):
        return self.base.score_lists(params, batch, dropout_rng)

    def embed(self, params, tokens, dropout_rng=None) -> jax.Array:
        """`tokens [N, T] -> [N, T, xtr_dim]` (dropout iff `dropout_rng`)."""
        return self._apply(
            params, xtr_embeddings, tokens, dropout_rng is None, dropout_rng=dropout_rng
        )

    def loss_fn(self, params, batch, dropout_rng):
        """`xtr_loss` of the batch's queries against all its documents, and in-batch metrics
        (`mrr@10`, ... of each query's positive among the `B * M` documents)."""
        queries = jnp.asarray(batch["query_tokens"], jnp.int32)
        docs = jnp.asarray(batch["doc_tokens"], jnp.int32)
        batch_size, per_query, doc_len = docs.shape
        docs = docs.reshape(batch_size * per_query, doc_len)
        rngs = (None, None) if dropout_rng is None else tuple(jax.random.split(dropout_rng))
        query_emb = self.embed(params, queries, rngs[0])
        doc_emb = self.embed(params, docs, rngs[1])
        targets = jnp.arange(batch_size) * per_query
        loss, scores = xtr_loss(
            query_emb,
            queries > 0,
            doc_emb,
            docs > 0,
            targets,
            self.k_train,
            self.temperature,
            self.normalizer,
        )
        num_docs = batch_size * per_query
        labels = jax.nn.one_hot(targets, num_docs, dtype=jnp.float32)
        present = jnp.broadcast_to(jnp.any(docs > 0, axis=-1)[None], (batch_size, num_docs))
        metrics = in_graph_metrics(jax.lax.stop_gradient(scores), labels, present)
        metrics["loss"] = loss
        return loss, metrics


@gin.configurable(module="xtr")
def make_xtr_model(
    base: BaseRankingModel = gin.REQUIRED,
    xtr_dim: int = DEFAULT_XTR_DIM,
    k_train: int = DEFAULT_K_TRAIN,
    temperature: float = 1.0,
    normalizer: str = DEFAULT_NORMALIZER,
    train_encoder: bool = False,
) -> XTRModel:
    """gin: `MODEL = @xtr.make_xtr_model()` with `xtr.make_xtr_model.base = @trainer.make_model()`
    (monoT5, RankT5-EncDec or RankT5-Enc); see gin/experiments/msmarco_ur2n.gin."""
    return XTRModel(
        base,
        xtr_dim=xtr_dim,
        k_train=k_train,
        temperature=temperature,
        normalizer=normalizer,
        train_encoder=train_encoder,
    )
