"""rankt5_jax's models as T5X model classes, for t5x's own train.py / eval.py / infer.py.

Imported only where t5x is installed (`pip install --no-deps -e t5x`; see docs/t5x.md). The
scoring, loss and metrics are those of `rankt5_jax.models`; this module only adapts them to the
methods t5x calls, each one deliberately:

  get_initial_variables  `[B, L, T]` shapes -> params + params_axes (of `[B*L, T]` pairs)
  _compute_logits        scores `[B, L]` (float32)
  loss_fn / eval_fn      Rax loss, and MRR@10 / NDCG@5 / NDCG@10 / MAP as clu metrics
  score_batch            scores `[B, L]` (infer.py score mode writes them per document)
  predict_batch_with_aux scores `[B, L]` and {"scores": ...}; decoding options raise

The module may be rankt5_jax's `network.Transformer` (score columns only, never full logits) or
t5x's `examples/t5/network.Transformer` (EncDec/MonoT5: full step-0 logits, then the columns).
The Enc head's parameter axis `score` needs `('score', None)` in the partitioner's rules and
`score: NONE` in Adafactor's factor rules: `gin/t5x/rankt5.gin` binds both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import clu.metrics as clu_metrics
import flax
import jax
import jax.numpy as jnp
import seqio
from t5x import adafactor
from t5x import metrics as t5x_metrics
from t5x import models as t5x_models

import gin
from rankt5_jax import losses as losses_lib
from rankt5_jax import metrics as metrics_lib
from rankt5_jax.errors import ConfigError
from rankt5_jax.feature_converters import RankingFeatureConverter
from rankt5_jax.network import T5Config, Transformer, get_config


@gin.configurable
def make_config(name: str = "t5_1_0_base", **overrides: Any) -> T5Config:
    """gin entry for `network.get_config` (e.g. the module's `config`)."""
    return get_config(name, **overrides)


@gin.configurable
def logical_factor_rules():
    """T5X Adafactor's standard factor rules plus the Enc head's `score` axis (not factored)."""
    rules = flax.core.unfreeze(adafactor.standard_logical_factor_rules())
    rules["score"] = adafactor.FactorDim.NONE
    return flax.core.freeze(rules)


def _token_id(vocabulary: seqio.Vocabulary, token: str) -> int:
    ids = vocabulary.encode(token)
    if len(ids) != 1:
        raise ConfigError(f"{token!r} is not one token of the vocabulary (got {ids})")
    return int(ids[0])


class _RankingMixin:
    """Shared list handling; subclasses define `_pair_scores(params, tokens [N,T], rng)`."""

    FEATURE_CONVERTER_CLS = RankingFeatureConverter

    def _setup_ranking(self, loss: str, loss_kwargs: Mapping[str, Any] | None):
        self._loss_name = loss
        self._rank_loss = losses_lib.get_loss_fn(loss, **dict(loss_kwargs or {}))

    def _compute_logits(self, params, batch, dropout_rng=None, **unused):
        """Scores `[B, L]` in float32 (the ranking 'logits')."""
        tokens = batch["encoder_input_tokens"]
        batch_size, list_size, length = tokens.shape
        scores = self._pair_scores(params, tokens.reshape(-1, length), dropout_rng)
        return scores.reshape(batch_size, list_size).astype(jnp.float32)

    def _labels_mask(self, batch):
        labels = batch["label"].astype(jnp.float32)
        mask = batch.get("mask")
        return labels, (jnp.ones_like(labels, bool) if mask is None else mask.astype(bool))

    def _loss_value(self, scores, batch):
        labels, mask = self._labels_mask(batch)
        return self._rank_loss(scores, labels, mask)

    def loss_fn(self, params, batch, dropout_rng):
        scores = self._compute_logits(params, batch, dropout_rng)
        loss = self._loss_value(scores, batch)
        labels, mask = self._labels_mask(batch)
        ranking = metrics_lib.in_graph_metrics(jax.lax.stop_gradient(scores), labels, mask)
        lists = jnp.sum(jnp.any(mask, axis=-1)).astype(jnp.float32)
        metrics = {
            "loss": t5x_metrics.AveragePerStep(total=loss),
            "lists": clu_metrics.Average.from_model_output(lists),
            **{
                f"ranking/{name}": clu_metrics.Average.from_model_output(value)
                for name, value in ranking.items()
            },
        }
        return loss, metrics

    def eval_fn(self, params, batch):
        return self.loss_fn(params, batch, dropout_rng=None)

    def score_batch(self, params, batch, return_intermediates: bool = False):
        if return_intermediates:
            raise ConfigError(f"{type(self).__name__}.score_batch has no intermediates")
        return self._compute_logits(params, batch)

    def predict_batch_with_aux(
        self,
        params,
        batch,
        rng=None,
        decoder_params=None,
        return_all_decodes=False,
        num_decodes=1,
        prompt_with_targets=False,
    ):
        if decoder_params or return_all_decodes or num_decodes != 1 or prompt_with_targets:
            raise ConfigError(
                f"{type(self).__name__} ranks candidates and never decodes text: decoder_params, "
                "return_all_decodes, num_decodes and prompt_with_targets do not apply"
            )
        scores = self._compute_logits(params, batch)
        return scores, {"scores": scores}

    def _flat_shapes(self, input_shapes):
        shape = tuple(input_shapes["encoder_input_tokens"])
        pairs = 1
        for dim in shape[:-1]:
            pairs *= int(dim) if dim else 1  # the list size may be unknown (None)
        return max(pairs, 1), int(shape[-1])


class _ColumnsMixin(_RankingMixin):
    """EncDec-style scoring from decoder step 0 (columns of the output projection)."""

    def _init_encdec(self, module, input_vocabulary, output_vocabulary, optimizer_def, kwargs):
        """`EncoderDecoderModel.__init__` with the list feature converter (never another)."""
        kwargs.pop("feature_converter_cls", None)
        t5x_models.EncoderDecoderModel.__init__(
            self,
            module,
            input_vocabulary,
            output_vocabulary,
            optimizer_def,
            feature_converter_cls=RankingFeatureConverter,
            **kwargs,
        )

    def _columns(self, params, tokens, token_ids, dropout_rng):
        rngs = {"dropout": dropout_rng} if dropout_rng is not None else None
        if isinstance(self.module, Transformer):
            return self.module.apply(
                {"params": params},
                tokens,
                tuple(token_ids),
                dropout_rng is None,
                method=Transformer.encdec_score_columns,
                rngs=rngs,
            )
        start = jnp.zeros((tokens.shape[0], 1), jnp.int32)
        logits = self.module.apply(  # t5x's network: full logits of step 0, then the columns
            {"params": params},
            tokens,
            start,
            start,
            decode=False,
            enable_dropout=dropout_rng is not None,
            rngs=rngs,
        )
        return logits[:, 0, jnp.asarray(token_ids)].astype(jnp.float32)

    def get_initial_variables(self, rng, input_shapes, input_types=None):
        pairs, length = self._flat_shapes(input_shapes)
        tokens = jnp.ones((pairs, length), jnp.int32)
        start = jnp.zeros((pairs, 1), jnp.int32)
        if isinstance(self.module, Transformer):
            variables = self.module.init(rng, tokens, start, enable_dropout=False)
        else:
            variables = self.module.init(
                rng, tokens, start, start, decode=False, enable_dropout=False
            )
        return flax.core.freeze(variables)


@gin.configurable
class RankT5EncDec(_ColumnsMixin, t5x_models.EncoderDecoderModel):
    """RankT5-EncDec under t5x: score = step-0 logit of `score_token` (`<extra_id_10>`)."""

    def __init__(
        self,
        module,
        input_vocabulary,
        output_vocabulary,
        optimizer_def,
        loss: str = "softmax",
        loss_kwargs=None,
        score_token: str = "<extra_id_10>",
        **kwargs,
    ):
        self._init_encdec(module, input_vocabulary, output_vocabulary, optimizer_def, kwargs)
        self._setup_ranking(loss, loss_kwargs)
        self.score_token_id = _token_id(output_vocabulary, score_token)

    def _pair_scores(self, params, tokens, dropout_rng):
        return self._columns(params, tokens, (self.score_token_id,), dropout_rng)[:, 0]


@gin.configurable
class MonoT5(_ColumnsMixin, t5x_models.EncoderDecoderModel):
    """monoT5 under t5x: score = log-softmax of "true" over {true, false} at step 0; trained
    with the ranking loss on those scores (`loss='pointce'` is closest to monoT5's objective)."""

    def __init__(
        self,
        module,
        input_vocabulary,
        output_vocabulary,
        optimizer_def,
        loss: str = "pointce",
        loss_kwargs=None,
        **kwargs,
    ):
        self._init_encdec(module, input_vocabulary, output_vocabulary, optimizer_def, kwargs)
        self._setup_ranking(loss, loss_kwargs)
        self.true_id = _token_id(output_vocabulary, "true")
        self.false_id = _token_id(output_vocabulary, "false")

    def _pair_scores(self, params, tokens, dropout_rng):
        columns = self._columns(params, tokens, (self.true_id, self.false_id), dropout_rng)
        return jax.nn.log_softmax(columns, axis=-1)[:, 0]


@gin.configurable
class RankT5Enc(_RankingMixin, t5x_models.BaseTransformerModel):
    """RankT5-Enc under t5x: Dense(Pool(Encoder)). Needs rankt5_jax's network as the module
    (t5x's network has no pooled head); the encoder restores from a T5 checkpoint and the
    `score_head` starts from scratch (t5x's `assignment_map`/fallback to init)."""

    def __init__(
        self,
        module,
        input_vocabulary,
        output_vocabulary,
        optimizer_def,
        loss: str = "softmax",
        loss_kwargs=None,
        **kwargs,
    ):
        if not isinstance(module, Transformer) or not module.with_score_head:
            raise ConfigError(
                "RankT5Enc needs rankt5_jax.network.Transformer(with_score_head=True)"
            )
        if module.config.has_decoder:
            module = module.clone(config=module.config.replace(has_decoder=False))
        super().__init__(module, input_vocabulary, output_vocabulary, optimizer_def, **kwargs)
        self._setup_ranking(loss, loss_kwargs)

    def _pair_scores(self, params, tokens, dropout_rng):
        rngs = {"dropout": dropout_rng} if dropout_rng is not None else None
        return self.module.apply(
            {"params": params},
            tokens,
            dropout_rng is None,
            method=Transformer.pooled_score,
            rngs=rngs,
        )

    def get_initial_variables(self, rng, input_shapes, input_types=None):
        pairs, length = self._flat_shapes(input_shapes)
        tokens = jnp.ones((pairs, length), jnp.int32)
        return flax.core.freeze(self.module.init(rng, tokens, enable_dropout=False))
