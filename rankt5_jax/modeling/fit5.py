"""The FiT5 family (Fusion-in-T5, Yu et al., 2023): list-aware scoring with global attention
across each query's candidates, and the first-stage score as a feature of the template.

  GlobalAttention   the global layer (`encoder/global_layers_{k}`)
  GlobalEncoder     `network.Encoder` with a global layer after each of its last
                    `config.num_global_layers` layers (3 by default, as the paper)
  FiT5              the monoT5 output over the global encoder, trained as the authors train it
  FiT5EncDec        the RankT5-EncDec head over the global encoder, any ranking loss
  FiT5Enc           the RankT5-Enc head over the global encoder, any ranking loss

`features` (a `data.features.FeatureConfig` or its dict) says how the first-stage scores become
the template's feature; it is saved in the spec, so `rerank` builds the same inputs.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import flax.linen as nn
import flax.linen.partitioning as nn_partitioning
import jax
import jax.numpy as jnp

from rankt5_jax.data.features import FeatureConfig
from rankt5_jax.errors import ConfigError
from rankt5_jax.modeling.base import FamilyConfig, RankingLossConfig, token_field
from rankt5_jax.modeling.config import T5Config
from rankt5_jax.modeling.heads import PooledModel, ScoreTokenModel, TrueFalseModel
from rankt5_jax.modeling.layers import LayerNorm, attention_block, key_mask_bias
from rankt5_jax.modeling.network import Encoder

Array = jax.Array
with_sharding_constraint = nn_partitioning.with_sharding_constraint


class GlobalAttention(nn.Module):
    """FiT5's global attention (Yu et al., 2023) across the candidates of each list.

    The first-position state `h` of every candidate goes through a pre-norm T5 self-attention
    block of its own across the list axis (RMS norm, query/key/value/out kernels, the encoder's
    heads, no relative position bias), whose output carries its own residual; that output is
    added back: position 0 becomes `h + (h + Attn(LN(h)))`, exactly as the authors' code
    (`encoder.project_global.{k}` after the last `num_global_layers` blocks). Padded candidates
    (`list_mask` False) neither attend nor are attended to (their states are left as they are).
    Parameters: `encoder/global_layers_{k}/pre_attention_layer_norm/scale [embed]`,
    `.../attention/{query,key,value}/kernel [embed, joined_kv]`, `.../attention/out/kernel
    [joined_kv, embed]`: named and sharded as the encoder's own attention.
    """

    config: T5Config

    @nn.compact
    def __call__(self, hidden: Array, list_mask: Array, deterministic: bool) -> Array:
        """`hidden [B*L, T, embed]`, `list_mask [B, L]` -> `hidden` with position 0 updated."""
        cfg = self.config
        dtype = cfg.activation_dtype
        batch, list_size = list_mask.shape
        first = hidden[:, 0].reshape(batch, list_size, hidden.shape[-1])  # [B, L, embed]
        first = with_sharding_constraint(first, ("batch", "length", "embed"))
        normed = LayerNorm(cfg.layer_norm_epsilon, dtype, name="pre_attention_layer_norm")(first)
        attended = attention_block(cfg, "attention")(
            normed, normed, (key_mask_bias(list_mask),), deterministic
        )
        attended = nn.Dropout(cfg.dropout_rate)(attended, deterministic)
        block = attended + first  # the authors' block output, residual included
        updated = jnp.where(list_mask[..., None], first + block, first).astype(hidden.dtype)
        return hidden.at[:, 0].set(updated.reshape(batch * list_size, -1))


class GlobalEncoder(Encoder):
    """`network.Encoder` with FiT5's global attention after each of its last
    `config.num_global_layers` layers.

    `list_mask [B, L]` (`B * L = N`, rows in list order): the lists the global layers attend
    across; False marks padded candidates. Without it all N rows form one list, as the FiT5
    authors' code does.
    """

    implements: ClassVar[tuple[str, ...]] = ("num_global_layers",)

    def run_layers(self, hidden, biases, deterministic, first_only, list_mask) -> Array:
        cfg = self.config
        last = cfg.num_encoder_layers - 1
        first_global = cfg.num_encoder_layers - cfg.num_global_layers
        if cfg.num_global_layers and list_mask is None:
            list_mask = jnp.ones((1, hidden.shape[0]), bool)
        for idx in range(cfg.num_encoder_layers):
            layer = self.layer(idx, first_only=first_only and idx == last)
            hidden = layer(hidden, biases, deterministic)
            if idx >= first_global:
                global_layer = GlobalAttention(cfg, name=f"global_layers_{idx - first_global}")
                hidden = global_layer(hidden, list_mask, deterministic)
        return hidden


@dataclasses.dataclass(frozen=True, kw_only=True)
class FiT5FeaturesConfig(FamilyConfig):
    """`features`: the `data.features.FeatureConfig` (or its dict) of the template's feature."""

    list_aware: ClassVar[bool] = True
    global_layers: ClassVar[int] = 3

    features: Any = None

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "features", FeatureConfig.from_dict(self.features))


@dataclasses.dataclass(frozen=True, kw_only=True)
class FiT5Config(FiT5FeaturesConfig):
    """`score`: "log_prob" (default), the log of the normalised probability of "true" against
    "false" (the paper's score in log space: the same ranking, and equal to monoT5's when
    `num_global_layers=0`); or "true_logit", the raw "true" logit, which is how the authors'
    inference script ranks (their released checkpoints load with it)."""

    SCORES: ClassVar[tuple[str, ...]] = ("log_prob", "true_logit")

    true_token_id: int = token_field("true")
    false_token_id: int = token_field("false")
    score: str = "log_prob"

    def __post_init__(self):
        super().__post_init__()
        if self.score not in self.SCORES:
            raise ConfigError(f"FiT5 score must be one of {self.SCORES}; got {self.score!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class FiT5EncDecConfig(RankingLossConfig, FiT5FeaturesConfig):
    score_token_id: int = token_field(None)


@dataclasses.dataclass(frozen=True, kw_only=True)
class FiT5EncConfig(RankingLossConfig, FiT5FeaturesConfig):
    hf_architecture: ClassVar[str] = "T5EncoderModel"
    score_head: ClassVar[bool] = True


class FiT5(TrueFalseModel):
    """FiT5 as published: the monoT5 output over the global encoder. Trained as the authors
    train it: cross-entropy over the two logits ["false", "true"] of every real candidate (padded
    candidates left out). `score`: see `FiT5Config`."""

    variant = "fit5"
    Config = FiT5Config
    encoder_cls = GlobalEncoder
    SCORES = FiT5Config.SCORES

    def pair_scores(self, params, tokens, dropout_rng=None, list_mask=None):
        if self.score == "log_prob":
            return super().pair_scores(params, tokens, dropout_rng, list_mask)
        return self.columns(params, tokens, (self.true_token_id,), dropout_rng, list_mask)[:, 0]

    def loss_fn(self, params, batch, dropout_rng):
        tokens = batch["encoder_input_tokens"]
        batch_size, list_size, length = tokens.shape
        labels, mask = self.labels_and_mask(batch)
        flat = tokens.reshape(batch_size * list_size, length)
        columns = self.true_false_columns(params, flat, dropout_rng, mask)  # [B*L, 2]
        log_probs = jax.nn.log_softmax(columns, axis=-1)
        relevant = labels.reshape(-1) > 0
        nll = -jnp.where(relevant, log_probs[:, 0], log_probs[:, 1])
        loss = self.masked_mean(nll, mask)
        scores = log_probs[:, 0].reshape(batch_size, list_size)
        return loss, self.metrics(loss, scores, batch)


class FiT5EncDec(ScoreTokenModel):
    """FiT5's global encoder with the RankT5-EncDec head (`<extra_id_10>` logit), trained with
    any ranking loss (PointCE, Pair, Softmax, Poly1, any Rax loss)."""

    variant = "fit5_encdec"
    Config = FiT5EncDecConfig
    encoder_cls = GlobalEncoder


class FiT5Enc(PooledModel):
    """FiT5's global encoder with the RankT5-Enc head (Dense over the pooled encoder), trained
    with any ranking loss."""

    variant = "fit5_enc"
    Config = FiT5EncConfig
    encoder_cls = GlobalEncoder
