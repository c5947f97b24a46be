"""rankt5_jax's models as T5X model classes, for t5x's own train.py / eval.py / infer.py.

Imported only where t5x is installed (`pip install --no-deps -e t5x`; see docs/t5x.md). Each
class is rankt5_jax's own model class (`modeling/models.py`) placed before t5x's in the method
order, so scoring, losses and metrics are inherited, not copied; `_T5XAdapter` only adapts what
t5x calls differently:

  get_initial_variables  `[B, L, T]` shapes -> frozen params + params_axes (of `[B*L, T]` pairs)
  _compute_logits        scores `[B, L]` (float32): `score_lists`
  loss_fn / eval_fn      the model's loss, and its MRR@10 / NDCG@5 / NDCG@10 / MAP as clu metrics
  score_batch            scores `[B, L]` (infer.py score mode writes them per document)
  predict_batch_with_aux scores `[B, L]` and {"scores": ...}; decoding options raise

The module may be rankt5_jax's `network.Transformer` (score columns only, never full logits) or
t5x's `examples/t5/network.Transformer` (EncDec/MonoT5: full step-0 logits, then the columns).
The FiT5 classes (`FiT5`, `FiT5EncDec`, `FiT5Enc`) need rankt5_jax's network (t5x's has no global
layers, `make_config.num_global_layers`; `gin/t5x/fit5*.gin`). t5x's batches are whole lists
`[B, L, T]` with `mask [B, L]`, and every entry point above scores through `score_lists` (or
FiT5's own `loss_fn`), which hands the mask to the global layers: lists are never split, and
padded candidates are neither attended to nor attending. t5x's micro-batches split `B` only.
The Enc head's parameter axis `score` needs `('score', None)` in the partitioner's rules and
`score: NONE` in Adafactor's factor rules: `gin/t5x/rankt5.gin` binds both.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import clu.metrics as clu_metrics
import flax
import jax.numpy as jnp
import seqio
from t5x import adafactor
from t5x import metrics as t5x_metrics
from t5x import models as t5x_models

import gin
from rankt5_jax.data.feature_converters import RankingFeatureConverter
from rankt5_jax.data.vocab import Vocabulary
from rankt5_jax.errors import ConfigError
from rankt5_jax.modeling import models
from rankt5_jax.modeling.base import RankingLossConfig
from rankt5_jax.modeling.fit5 import GlobalEncoder
from rankt5_jax.modeling.monot5 import MonoT5Config
from rankt5_jax.modeling.network import T5Config, Transformer, get_config


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
    """The id of `token` in t5x's SentencePiece vocabulary, as `data.vocab.Vocabulary.token_id`
    looks it up (refusing a token that is not one piece: never the UNK id)."""
    path = getattr(vocabulary, "sentencepiece_model_file", None)
    if path is None:
        raise ConfigError(f"{type(vocabulary).__name__} is not a SentencePiece vocabulary")
    return Vocabulary(path, extra_ids=vocabulary.extra_ids).token_id(token)


def _config_of(module) -> T5Config:
    """Our `T5Config` of the module: its own, or the shared fields of t5x's network config."""
    if isinstance(module, Transformer):
        return module.config
    theirs = {f.name: getattr(module.config, f.name) for f in dataclasses.fields(module.config)}
    ours = {f.name for f in dataclasses.fields(T5Config)} - {"dtype"}
    return T5Config(**{k: v for k, v in theirs.items() if k in ours})


class _T5XAdapter:
    """What t5x calls on top of rankt5_jax's `BaseRankingModel` (placed first in the MRO)."""

    FEATURE_CONVERTER_CLS = RankingFeatureConverter

    def _init_t5x(self, base, module, input_vocabulary, output_vocabulary, optimizer_def, kwargs):
        """t5x's `__init__` of `base`; the feature converter stays the class's list converter."""
        kwargs.pop("feature_converter_cls", None)
        base.__init__(self, module, input_vocabulary, output_vocabulary, optimizer_def, **kwargs)

    def _compute_logits(self, params, batch, dropout_rng=None, **unused):
        """Scores `[B, L]` in float32 (the ranking 'logits')."""
        return self.score_lists(params, batch, dropout_rng)

    def loss_fn(self, params, batch, dropout_rng):
        loss, values = super().loss_fn(params, batch, dropout_rng)
        _, mask = self.labels_and_mask(batch)
        lists = jnp.sum(jnp.any(mask, axis=-1)).astype(jnp.float32)
        metrics = {
            "loss": t5x_metrics.AveragePerStep(total=loss),
            "lists": clu_metrics.Average.from_model_output(lists),
            **{
                f"ranking/{name}": clu_metrics.Average.from_model_output(value)
                for name, value in values.items()
                if name != "loss"
            },
        }
        return loss, metrics

    def get_initial_variables(self, rng, input_shapes, input_types=None):
        if isinstance(self.module, Transformer):
            return flax.core.freeze(super().get_initial_variables(rng, input_shapes, input_types))
        tokens = self.init_pair_tokens(input_shapes)
        start = jnp.zeros((tokens.shape[0], 1), jnp.int32)
        variables = self.module.init(rng, tokens, start, start, decode=False, enable_dropout=False)
        return flax.core.freeze(variables)

    def columns(self, params, tokens, token_ids, dropout_rng=None, list_mask=None):
        if isinstance(self.module, Transformer):
            return super().columns(params, tokens, token_ids, dropout_rng, list_mask)
        if list_mask is not None:  # the FiT5 classes refuse t5x's network (_global_module)
            raise ConfigError("t5x's network has no global layers to take a list mask")
        rngs = {"dropout": dropout_rng} if dropout_rng is not None else None
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


@gin.configurable
class RankT5EncDec(_T5XAdapter, models.RankT5EncDec, t5x_models.EncoderDecoderModel):
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
        base = t5x_models.EncoderDecoderModel
        self._init_t5x(base, module, input_vocabulary, output_vocabulary, optimizer_def, kwargs)
        models.RankT5EncDec.__init__(
            self,
            _config_of(module),
            score_token_id=_token_id(output_vocabulary, score_token),
            loss=loss,
            loss_kwargs=loss_kwargs,
            module=module,
            **getattr(self, "_family_options", {}),
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class MonoT5RankingConfig(RankingLossConfig, MonoT5Config):
    """monoT5's options and a ranking loss (t5x's MonoT5 trains with one)."""


@gin.configurable
class MonoT5(_T5XAdapter, models.RankingLossModel, models.MonoT5, t5x_models.EncoderDecoderModel):
    """monoT5 under t5x: score = log-softmax of "true" over {true, false} at step 0; trained
    with a ranking loss on those scores (`loss='pointce'` is closest to monoT5's objective;
    rankt5_jax's own trainer uses monoT5's token cross-entropy)."""

    Config = MonoT5RankingConfig

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
        base = t5x_models.EncoderDecoderModel
        self._init_t5x(base, module, input_vocabulary, output_vocabulary, optimizer_def, kwargs)
        models.RankingLossModel.__init__(
            self,
            _config_of(module),
            loss=loss,
            loss_kwargs=loss_kwargs,
            true_token_id=_token_id(output_vocabulary, "true"),
            false_token_id=_token_id(output_vocabulary, "false"),
            module=module,
        )


@gin.configurable
class RankT5Enc(_T5XAdapter, models.RankT5Enc, t5x_models.BaseTransformerModel):
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
                "RankT5Enc needs rankt5_jax.modeling.network.Transformer(with_score_head=True)"
            )
        if module.config.has_decoder:
            module = module.clone(config=module.config.replace(has_decoder=False))
        base = t5x_models.BaseTransformerModel
        self._init_t5x(base, module, input_vocabulary, output_vocabulary, optimizer_def, kwargs)
        models.RankT5Enc.__init__(
            self,
            module.config,
            loss=loss,
            loss_kwargs=loss_kwargs,
            module=module,
            **getattr(self, "_family_options", {}),
        )


def _global_module(name: str, module: Any) -> Transformer:
    """FiT5's module: rankt5_jax's network (the only one with global layers) over FiT5's
    global encoder."""
    if not isinstance(module, Transformer):
        raise ConfigError(
            f"{name} needs rankt5_jax.modeling.network.Transformer as its module: t5x's network "
            "has no global layers (set t5x_models.make_config.num_global_layers; gin/t5x/fit5.gin)"
        )
    return module.clone(encoder_cls=GlobalEncoder)


@gin.configurable
class FiT5(_T5XAdapter, models.FiT5, t5x_models.EncoderDecoderModel):
    """FiT5 under t5x: global attention across each list (`num_global_layers` of the module's
    config, 3 in gin/t5x/fit5.gin), monoT5 output (score = log-softmax of "true" over {true,
    false}), trained as the authors train it (2-class cross-entropy of every real candidate).
    `features` (a `data.features.FeatureConfig` dict) is kept in the model's spec; the inputs
    are whatever the seqio task writes."""

    def __init__(
        self, module, input_vocabulary, output_vocabulary, optimizer_def, features=None, **kwargs
    ):
        module = _global_module("FiT5", module)
        base = t5x_models.EncoderDecoderModel
        self._init_t5x(base, module, input_vocabulary, output_vocabulary, optimizer_def, kwargs)
        models.FiT5.__init__(
            self,
            module.config,
            true_token_id=_token_id(output_vocabulary, "true"),
            false_token_id=_token_id(output_vocabulary, "false"),
            features=features,
            module=module,
        )


@gin.configurable
class FiT5EncDec(RankT5EncDec, models.FiT5EncDec):
    """FiT5's global encoder with the RankT5-EncDec head (`score_token` logit), any ranking
    loss: `RankT5EncDec`'s arguments plus `features`."""

    variant = models.FiT5EncDec.variant
    Config = models.FiT5EncDec.Config
    encoder_cls = models.FiT5EncDec.encoder_cls

    def __init__(self, module, *args, features=None, **kwargs):
        self._family_options = {"features": features}  # read by RankT5EncDec.__init__
        super().__init__(_global_module("FiT5EncDec", module), *args, **kwargs)


@gin.configurable
class FiT5Enc(RankT5Enc, models.FiT5Enc):
    """FiT5's global encoder with the RankT5-Enc head (Dense(Pool(Encoder))), any ranking
    loss: `RankT5Enc`'s arguments plus `features`. The module needs `with_score_head=True`
    (gin/t5x/fit5_enc.gin)."""

    variant = models.FiT5Enc.variant
    Config = models.FiT5Enc.Config
    encoder_cls = models.FiT5Enc.encoder_cls

    def __init__(self, module, *args, features=None, **kwargs):
        self._family_options = {"features": features}  # read by RankT5Enc.__init__
        super().__init__(_global_module("FiT5Enc", module), *args, **kwargs)
