"""Flax (linen) T5 with T5X parameter names: the encoder and decoder stacks and the `Transformer`
that holds them with the output layers the ranking heads read. The blocks are in `layers`, the
configuration in `config` (`T5Config` and `get_config` are re-exported here).

The parameter tree and logical axis names follow T5X's `examples/t5/network.py` so that T5X
checkpoints restore without renaming:

  token_embedder/embedding                          [vocab, embed]
  encoder/relpos_bias/rel_embedding                 [heads, relpos_buckets]
  encoder/layers_{i}/pre_attention_layer_norm/scale [embed]
  encoder/layers_{i}/attention/{query,key,value}/kernel   [embed, joined_kv]
  encoder/layers_{i}/attention/out/kernel           [joined_kv, embed]
  encoder/layers_{i}/pre_mlp_layer_norm/scale       [embed]
  encoder/layers_{i}/mlp/{wi | wi_0, wi_1}/kernel   [embed, mlp]
  encoder/layers_{i}/mlp/wo/kernel                  [mlp, embed]
  encoder/encoder_norm/scale                        [embed]
  decoder/... (self_attention, encoder_decoder_attention, pre_cross_attention_layer_norm)
  decoder/decoder_norm/scale, decoder/logits_dense/kernel [embed, vocab] (untied only)
  decoder/logits_dense/bias [vocab]                 (FiT5 authors' head only: logits_bias)
  score_head/{kernel [embed, score], bias [score]}  (RankT5-Enc only)

Families add to the encoder by subclassing `Encoder` in their own module (the model class picks
the encoder, `Transformer.encoder_cls`): FiT5's global layers (`fit5.GlobalEncoder`:
`encoder/global_layers_{k}/...`) and UR2N's XTR layer (`ur2n.XTREncoder`:
`encoder/xtr_layer/...`, `encoder/xtr_projection/kernel [embed, xtr]`).

Numerics follow T5 (Raffel et al.) exactly as T5X and Hugging Face implement it: RMS layer norm in
float32, no attention scaling (folded into the query initialiser), relative position buckets shared by
all layers of a stack, tied output `embedding.attend(y) / sqrt(d_model)` for T5 v1.0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rankt5_jax.errors import ConfigError
from rankt5_jax.modeling.config import CONFIG_NAMES, T5Config, get_config
from rankt5_jax.modeling.layers import (
    DecoderLayer,
    Embed,
    EncoderLayer,
    LayerNorm,
    LogitsKernel,
    OutputLayer,
    ScoreHead,
    embed_tokens,
    key_mask_bias,
    maybe_remat,
    relpos_bias,
)

Array = jax.Array
__all__ = ["CONFIG_NAMES", "Decoder", "Encoder", "T5Config", "Transformer", "get_config"]


class Encoder(nn.Module):
    """The T5 encoder stack: shared embedding, `num_encoder_layers` pre-norm layers with one
    relative-position bias table for all layers, final RMS norm. Parameter names as T5X's.

    A family's encoder subclasses it and overrides a step (`run_layers`, or `__call__` with the
    steps as building blocks), naming in `implements` the `T5Config` fields it implements
    beyond the plain stack (a config setting one needs that encoder: `Transformer` checks).
    """

    config: T5Config
    shared_embedding: nn.Module

    implements: ClassVar[tuple[str, ...]] = ()

    @nn.compact
    def __call__(
        self,
        tokens: Array,
        deterministic: bool,
        first_only: bool = False,
        list_mask: Array | None = None,
    ) -> Array:
        """`tokens [N, T]` (0 = padding) -> encoded `[N, T, embed]` in the activation dtype.

        `first_only`: the last layer computes position 0 only and the result is `[N, 1, embed]`
        (first-token pooling needs nothing else; about one layer's work less).
        `list_mask [B, L]` (`B * L = N`, rows in list order): the lists of the rows, for a
        list-aware encoder (FiT5's); the plain stack encodes every row on its own.
        """
        hidden, biases = self.embed_inputs(tokens, deterministic)
        hidden = self.run_layers(hidden, biases, deterministic, first_only, list_mask)
        return self.final_norm(hidden, deterministic)

    # Steps of `__call__` (called inside it: their modules are the encoder's).
    def embed_inputs(self, tokens: Array, deterministic: bool) -> tuple[Array, tuple]:
        """-> (embedded tokens `[N, T, embed]`, the attention biases: the stack's one relative
        position bias and the key padding mask)."""
        length = tokens.shape[-1]
        biases = (relpos_bias(self.config)(length, length, True), key_mask_bias(tokens > 0))
        return embed_tokens(self.shared_embedding, tokens, self.config, deterministic), biases

    def layer(self, idx: int | str, first_only: bool = False) -> nn.Module:
        """Encoder layer `layers_{idx}` (or the layer named `idx`, a string)."""
        layer_cls = maybe_remat(EncoderLayer, self.config, 3)
        name = idx if isinstance(idx, str) else f"layers_{idx}"
        return layer_cls(self.config, first_only=first_only, name=name)

    def run_layers(self, hidden, biases, deterministic, first_only, list_mask) -> Array:
        """The layers, in order (the last one at position 0 only with `first_only`)."""
        del list_mask  # pairs: every row on its own
        last = self.config.num_encoder_layers - 1
        for idx in range(self.config.num_encoder_layers):
            layer = self.layer(idx, first_only=first_only and idx == last)
            hidden = layer(hidden, biases, deterministic)
        return hidden

    def final_norm(self, hidden: Array, deterministic: bool) -> Array:
        cfg = self.config
        hidden = LayerNorm(cfg.layer_norm_epsilon, cfg.activation_dtype, name="encoder_norm")(
            hidden
        )
        return nn.Dropout(cfg.dropout_rate)(hidden, deterministic)


class Decoder(nn.Module):
    """The T5 decoder stack, teacher-forced: returns the final-norm hidden states and, for
    untied (v1.1) models, the output layer `(kernel, bias or None)`, so callers compute only the
    logit columns they need (`encdec_score_columns`) or all of them (`full_logits`)."""

    config: T5Config
    shared_embedding: nn.Module

    @nn.compact
    def __call__(
        self,
        encoded: Array,
        encoder_tokens: Array,
        decoder_tokens: Array,
        deterministic: bool,
    ) -> tuple[Array, OutputLayer | None]:
        """Teacher-forced decoder -> (final-norm hidden `[N, S, embed]`, untied output layer
        `(kernel, bias or None)`, or None when the output is tied to the embedding)."""
        cfg = self.config
        dtype = cfg.activation_dtype
        rel_emb = relpos_bias(cfg)
        steps = decoder_tokens.shape[-1]
        causal = jnp.tril(jnp.ones((steps, steps), bool))
        causal_bias = jnp.where(causal, 0.0, -1e10).astype(jnp.float32)[None, None]
        self_biases = (rel_emb(steps, steps, False), causal_bias)
        # Decoder positions are all real (step 0 is the start token 0): in cross attention only
        # the encoder's padding is masked.
        cross_biases = (key_mask_bias(encoder_tokens > 0),)
        hidden = embed_tokens(self.shared_embedding, decoder_tokens, cfg, deterministic)
        layer_cls = maybe_remat(DecoderLayer, cfg, 5)
        for idx in range(cfg.num_decoder_layers):
            hidden = layer_cls(cfg, name=f"layers_{idx}")(
                hidden, encoded, self_biases, cross_biases, deterministic
            )
        hidden = LayerNorm(cfg.layer_norm_epsilon, dtype, name="decoder_norm")(hidden)
        hidden = nn.Dropout(cfg.dropout_rate)(hidden, deterministic)
        output = None if cfg.logits_via_embedding else LogitsKernel(cfg, name="logits_dense")()
        return hidden, output


class Transformer(nn.Module):
    """T5 (encoder-decoder, or encoder only when `config.has_decoder` is False) with score heads.

    `encoder_cls`: the encoder stack (`Encoder`, or a family's subclass of it; None: `Encoder`).

    Methods used by the models:
      encode(tokens, first_only=False) -> [N, T, embed] ([N, 1, embed] with first_only)
      decode_hidden(encoded, encoder_tokens, decoder_tokens) -> [N, S, embed]
      logit_columns(hidden, output_layer, token_ids) -> [..., len(token_ids)] float32 (those only)
      full_logits(hidden, output_layer) -> [..., vocab] float32
      encdec_score_columns(tokens, token_ids) -> [N, len(token_ids)] (decoder step 0 from token 0)
      pooled_score(tokens) -> [N] (RankT5-Enc: Dense(Pool(Encoder(tokens))))
    """

    config: T5Config
    with_score_head: bool = False
    encoder_cls: Any = None

    # T5Config fields that only a family's encoder implements (see `Encoder.implements`).
    FAMILY_FIELDS: ClassVar[dict[str, str]] = {
        "num_global_layers": "rankt5_jax.modeling.fit5.GlobalEncoder (FiT5)",
        "xtr_dim": "rankt5_jax.modeling.ur2n.XTREncoder (UR2N)",
    }

    def setup(self):
        cfg = self.config
        encoder_cls = self.encoder_cls or Encoder
        for field, owner in self.FAMILY_FIELDS.items():
            if getattr(cfg, field) and field not in encoder_cls.implements:
                raise ConfigError(
                    f"config.{field}={getattr(cfg, field)} needs the encoder {owner}, "
                    f"not {encoder_cls.__name__}: build the model through its class"
                )
        self.token_embedder = Embed(
            cfg.vocab_size,
            cfg.emb_dim,
            cfg.activation_dtype,
            one_hot=cfg.one_hot_embedding,
        )
        self.encoder = encoder_cls(cfg, self.token_embedder)
        if cfg.has_decoder:
            self.decoder = Decoder(cfg, self.token_embedder)
        if self.with_score_head:
            self.score_head = ScoreHead(cfg.activation_dtype)

    # -- stacks -----------------------------------------------------------------------------
    def encode(
        self,
        tokens: Array,
        deterministic: bool = True,
        first_only: bool = False,
        list_mask: Array | None = None,
    ) -> Array:
        """`list_mask [B, L]`: the lists of the `B*L` rows, for FiT5's global layers."""
        return self.encoder(tokens, deterministic, first_only, list_mask)

    def decode_hidden(
        self,
        encoded: Array,
        encoder_tokens: Array,
        decoder_tokens: Array,
        deterministic: bool = True,
    ) -> tuple[Array, OutputLayer | None]:
        """-> (hidden `[N, S, embed]`, untied output layer `(kernel, bias)` or None if tied)."""
        self._require_decoder()
        return self.decoder(encoded, encoder_tokens, decoder_tokens, deterministic)

    # -- output projections -----------------------------------------------------------------
    def logit_columns(
        self, hidden: Array, output_layer: OutputLayer | None, token_ids: Sequence[int]
    ) -> Array:
        """Logits of the given vocabulary ids only: `[..., embed] -> [..., len(token_ids)]`."""
        if output_layer is None:
            scale = 1.0 / np.sqrt(self.config.emb_dim)
            return self.token_embedder.attend_columns(hidden, token_ids) * scale
        kernel, bias = output_layer
        ids = jnp.asarray(token_ids, jnp.int32)
        columns = jnp.take(kernel, ids, axis=1)  # [embed, k]
        logits = jnp.einsum("...d,dk->...k", hidden.astype(jnp.float32), columns)
        return logits if bias is None else logits + jnp.take(bias, ids)

    def full_logits(self, hidden: Array, output_layer: OutputLayer | None) -> Array:
        """All vocabulary logits `[..., vocab]` in float32 (MonoT5 training only)."""
        if output_layer is None:
            return self.token_embedder.attend(hidden) / np.sqrt(self.config.emb_dim)
        kernel, bias = output_layer
        logits = jnp.einsum("...d,dv->...v", hidden.astype(jnp.float32), kernel)
        return logits if bias is None else logits + bias

    # -- RankT5 heads -----------------------------------------------------------------------
    def encdec_score_columns(
        self,
        tokens: Array,
        token_ids: Sequence[int],
        deterministic: bool = True,
        list_mask: Array | None = None,
    ) -> Array:
        """RankT5-EncDec: decoder step 0 from start token 0, logits of `token_ids` only.

        `tokens [N, T] -> [N, len(token_ids)]` in float32.
        """
        encoded = self.encode(tokens, deterministic, list_mask=list_mask)
        start = jnp.zeros((tokens.shape[0], 1), jnp.int32)
        hidden, kernel = self.decode_hidden(encoded, tokens, start, deterministic)  # [N, 1, E]
        return self.logit_columns(hidden[:, 0], kernel, token_ids)

    def pooled_score(
        self, tokens: Array, deterministic: bool = True, list_mask: Array | None = None
    ) -> Array:
        """RankT5-Enc: `Dense(Pool(Encoder(tokens)))`, `[N, T] -> [N]` in float32."""
        first = self.config.pooling == "first"
        encoded = self.encode(tokens, deterministic, first, list_mask)  # [N, T or 1, embed]
        if first:
            pooled = encoded[:, 0].astype(jnp.float32)
        else:
            mask = (tokens > 0).astype(jnp.float32)[..., None]
            total = jnp.sum(encoded.astype(jnp.float32) * mask, axis=1)
            pooled = total / jnp.maximum(jnp.sum(mask, axis=1), 1.0)
        return self.score_head(pooled)

    def __call__(
        self,
        encoder_input_tokens: Array,
        decoder_input_tokens: Array | None = None,
        enable_dropout: bool = False,
    ) -> Array:
        """Initialisation entry point: touches every parameter of the configured variant."""
        deterministic = not enable_dropout
        if self.config.has_decoder:
            encoded = self.encode(encoder_input_tokens, deterministic)
            if decoder_input_tokens is None:
                decoder_input_tokens = jnp.zeros((encoder_input_tokens.shape[0], 1), jnp.int32)
            hidden, kernel = self.decode_hidden(
                encoded, encoder_input_tokens, decoder_input_tokens, deterministic
            )
            out = self.full_logits(hidden, kernel)
            if self.with_score_head:
                out = out.sum() + self.pooled_score(encoder_input_tokens, deterministic).sum()
            return out
        return self.pooled_score(encoder_input_tokens, deterministic)

    def _require_decoder(self):
        if not self.config.has_decoder:
            raise ValueError("this model has no decoder (RankT5-Enc); use pooled_score")
