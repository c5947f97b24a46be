"""RankT5 model classes with the T5X model interface.

Batches are lists of candidates per query:

  encoder_input_tokens  int32 [B, L, T]   "Query: q Document: d" + EOS, 0-padded
  decoder_input_tokens  int32 [B, L, 1]   zeros (start token); optional, ignored by RankT5-Enc
  label                 float32 [B, L]    relevance grade
  mask                  bool [B, L]       False for padded list items

Scores are `[B, L]` float32. Every model reshapes `[B, L, T] -> [B*L, T]`, scores the pairs, and
reshapes back. Interface methods (as T5X calls them):

  get_initial_variables(rng, input_shapes, input_types=None) -> {"params", "params_axes"}
  score_batch(params, batch) -> scores [B, L]
  loss_fn(params, batch, dropout_rng) -> (loss, metrics)
  eval_fn(params, batch) -> (loss, metrics)
  predict_batch_with_aux(params, batch, rng=None) -> (scores [B, L], {"scores": scores})
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rankt5_jax import losses as losses_lib
from rankt5_jax import metrics as metrics_lib
from rankt5_jax.errors import ConfigError
from rankt5_jax.network import T5Config, Transformer

Batch = Mapping[str, jax.Array]
VARIANTS = ("encdec", "enc", "monot5")


class BaseRankingModel:
    """Shared logic: list reshaping, loss, metrics, init. Subclasses define `_pair_scores`."""

    variant: str = ""

    def __init__(
        self,
        config: T5Config,
        loss: str = "softmax",
        loss_kwargs: Mapping[str, Any] | None = None,
        score_token_id: int | None = None,
    ):
        self.config = config
        self.loss_name = loss
        self.loss_kwargs = dict(loss_kwargs or {})
        self._loss_fn = losses_lib.get_loss_fn(loss, **self.loss_kwargs)
        self.score_token_id = score_token_id
        self.module = self._make_module()

    # -- construction -----------------------------------------------------------------------
    def _make_module(self) -> Transformer:
        return Transformer(self.config)

    def spec(self) -> dict[str, Any]:
        """What is needed to rebuild this model (saved beside checkpoints)."""
        return {
            "variant": self.variant,
            "t5": self.config.to_dict(),
            "loss": self.loss_name,
            "loss_kwargs": self.loss_kwargs,
            "score_token_id": self.score_token_id,
        }

    def get_initial_variables(
        self,
        rng: jax.Array,
        input_shapes: Mapping[str, tuple[int, ...]],
        input_types: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Initialises params (float32) from the shape of `encoder_input_tokens` `[B, L, T]`."""
        del input_types
        shape = tuple(input_shapes["encoder_input_tokens"])
        tokens = jnp.ones((int(np.prod(shape[:-1])) or 1, shape[-1]), jnp.int32)
        return self.module.init({"params": rng, "dropout": rng}, tokens, enable_dropout=False)

    # -- scoring ----------------------------------------------------------------------------
    def _pair_scores(
        self, params: Any, tokens: jax.Array, dropout_rng: jax.Array | None
    ) -> jax.Array:
        """`tokens [N, T] -> scores [N]` float32."""
        raise NotImplementedError

    def _apply(self, params, method, *args, dropout_rng=None):
        rngs = {"dropout": dropout_rng} if dropout_rng is not None else {}
        return self.module.apply({"params": params}, *args, method=method, rngs=rngs)

    def list_scores(
        self, params: Any, batch: Batch, dropout_rng: jax.Array | None = None
    ) -> jax.Array:
        """`encoder_input_tokens [B, L, T] -> scores [B, L]` (dropout on iff `dropout_rng`)."""
        tokens = batch["encoder_input_tokens"]
        batch_size, list_size, length = tokens.shape
        flat = tokens.reshape(batch_size * list_size, length)  # [B, L, T] -> [B*L, T]
        scores = self._pair_scores(params, flat, dropout_rng)
        return scores.reshape(batch_size, list_size).astype(jnp.float32)

    def score_batch(self, params: Any, batch: Batch, return_intermediates: bool = False):
        """Scores `[B, L]` float32 (deterministic). Padded items get finite, meaningless scores."""
        if return_intermediates:
            raise ConfigError(f"{type(self).__name__}.score_batch has no intermediates to return")
        return self.list_scores(params, batch)

    def predict_batch_with_aux(
        self, params: Any, batch: Batch, rng: jax.Array | None = None, **kwargs: Any
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Ranking models predict scores, not text: returns `(scores [B, L], {"scores": ...})`."""
        del rng
        if kwargs.get("decoder_params") or kwargs.get("return_all_decodes"):
            raise ConfigError(
                f"{type(self).__name__} scores candidates; it does not decode text, so "
                "decoder_params/return_all_decodes do not apply"
            )
        scores = self.score_batch(params, batch)
        return scores, {"scores": scores}

    # -- training ---------------------------------------------------------------------------
    def _labels_and_mask(self, batch: Batch) -> tuple[jax.Array, jax.Array]:
        labels = batch["label"].astype(jnp.float32)
        mask = batch.get("mask")
        mask = jnp.ones_like(labels, bool) if mask is None else mask.astype(bool)
        return labels, mask

    def compute_loss(self, scores: jax.Array, batch: Batch) -> jax.Array:
        labels, mask = self._labels_and_mask(batch)
        return self._loss_fn(scores, labels, mask)

    def loss_fn(
        self, params: Any, batch: Batch, dropout_rng: jax.Array | None
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Rax loss of the lists' scores (float32) and the in-graph ranking metrics."""
        scores = self.list_scores(params, batch, dropout_rng)
        loss = self.compute_loss(scores, batch)
        labels, mask = self._labels_and_mask(batch)
        metrics = metrics_lib.in_graph_metrics(jax.lax.stop_gradient(scores), labels, mask)
        metrics["loss"] = loss
        return loss, metrics

    def eval_fn(self, params: Any, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        return self.loss_fn(params, batch, dropout_rng=None)


class RankT5EncDec(BaseRankingModel):
    """RankT5-EncDec: score = decoder step-0 logit of the score token (`<extra_id_10>`).

    Only the score token's column of the output projection is computed.
    """

    variant = "encdec"

    def __init__(self, config: T5Config, score_token_id: int, **kwargs: Any):
        if not config.has_decoder:
            raise ConfigError("RankT5EncDec needs a decoder (config.has_decoder=True)")
        if not 0 <= score_token_id < config.vocab_size:
            raise ConfigError(f"score token id {score_token_id} outside vocab {config.vocab_size}")
        super().__init__(config, score_token_id=score_token_id, **kwargs)

    def _pair_scores(self, params, tokens, dropout_rng):
        columns = self._apply(
            params,
            Transformer.encdec_score_columns,
            tokens,
            (self.score_token_id,),
            dropout_rng is None,
            dropout_rng=dropout_rng,
        )
        return columns[:, 0]


class RankT5Enc(BaseRankingModel):
    """RankT5-Enc: score = Dense(Pool(Encoder(s))); pooling `first` (default) or `mean`.

    The model has no decoder parameters.
    """

    variant = "enc"

    def __init__(self, config: T5Config, **kwargs: Any):
        kwargs.pop("score_token_id", None)
        super().__init__(config.replace(has_decoder=False, num_decoder_layers=0), **kwargs)

    def _make_module(self) -> Transformer:
        return Transformer(self.config, with_score_head=True)

    def _pair_scores(self, params, tokens, dropout_rng):
        return self._apply(
            params, Transformer.pooled_score, tokens, dropout_rng is None, dropout_rng=dropout_rng
        )


class MonoT5(BaseRankingModel):
    """monoT5 baseline: target "true" for relevant, "false" otherwise; full-vocabulary
    cross-entropy on the first decoder step (as monoT5 is trained); score = log-softmax of
    "true" over {"true", "false"}. The `loss` argument is unused (always cross-entropy).
    """

    variant = "monot5"

    def __init__(self, config: T5Config, true_token_id: int, false_token_id: int, **kwargs):
        kwargs.pop("score_token_id", None)
        self.true_token_id = true_token_id
        self.false_token_id = false_token_id
        super().__init__(config, **kwargs)

    def spec(self) -> dict[str, Any]:
        out = super().spec()
        out.update(true_token_id=self.true_token_id, false_token_id=self.false_token_id)
        return out

    def _pair_scores(self, params, tokens, dropout_rng):
        columns = self._apply(
            params,
            Transformer.encdec_score_columns,
            tokens,
            (self.true_token_id, self.false_token_id),
            dropout_rng is None,
            dropout_rng=dropout_rng,
        )
        return jax.nn.log_softmax(columns, axis=-1)[:, 0]

    def compute_loss(self, scores, batch):
        raise ConfigError("MonoT5 trains with token cross-entropy; use loss_fn")

    def loss_fn(self, params, batch, dropout_rng):
        tokens = batch["encoder_input_tokens"]
        batch_size, list_size, length = tokens.shape
        flat = tokens.reshape(batch_size * list_size, length)
        labels, mask = self._labels_and_mask(batch)

        def forward(module, flat_tokens):
            deterministic = dropout_rng is None
            encoded = module.encode(flat_tokens, deterministic)
            start = jnp.zeros((flat_tokens.shape[0], 1), jnp.int32)
            hidden, kernel = module.decode_hidden(encoded, flat_tokens, start, deterministic)
            logits = module.full_logits(hidden[:, 0], kernel)  # [B*L, vocab]
            log_probs = jax.nn.log_softmax(logits, axis=-1)
            pair = log_probs[:, (self.true_token_id, self.false_token_id)]
            return log_probs, pair

        rngs = {"dropout": dropout_rng} if dropout_rng is not None else {}
        log_probs, pair = self.module.apply({"params": params}, flat, method=forward, rngs=rngs)
        targets = jnp.where(labels.reshape(-1) > 0, self.true_token_id, self.false_token_id)
        token_nll = -jnp.take_along_axis(log_probs, targets[:, None], axis=-1)[:, 0]
        weights = mask.reshape(-1).astype(jnp.float32)
        loss = jnp.sum(token_nll * weights) / jnp.maximum(jnp.sum(weights), 1.0)
        scores = jax.nn.log_softmax(pair, axis=-1)[:, 0].reshape(batch_size, list_size)
        metrics = metrics_lib.in_graph_metrics(jax.lax.stop_gradient(scores), labels, mask)
        metrics["loss"] = loss
        return loss, metrics


def build_model(spec: Mapping[str, Any]) -> BaseRankingModel:
    """Rebuilds a model from `BaseRankingModel.spec()` output."""
    variant = spec.get("variant")
    if variant not in VARIANTS:
        raise ConfigError(f"variant must be one of {VARIANTS}, got {variant!r}")
    config = spec["t5"] if isinstance(spec["t5"], T5Config) else T5Config.from_dict(spec["t5"])
    common = dict(loss=spec.get("loss", "softmax"), loss_kwargs=spec.get("loss_kwargs"))
    if variant == "encdec":
        return RankT5EncDec(config, score_token_id=int(spec["score_token_id"]), **common)
    if variant == "enc":
        return RankT5Enc(config, **common)
    return MonoT5(
        config,
        true_token_id=int(spec["true_token_id"]),
        false_token_id=int(spec["false_token_id"]),
        **common,
    )
