"""T5's building blocks (Flax linen) with T5X's parameter and logical axis names: RMS norm,
the 2-D-kernel dense layer, embeddings, attention, the MLP, the relative position bias, the encoder
and decoder layers and the output layers. The stacks that put them together are in `network`.

Every parameter is created with `flax.linen.partitioning.param_with_axes`, so `init` also returns
the `params_axes` collection that T5X's partitioner (and ours) read.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import flax.linen.partitioning as nn_partitioning
import jax
import jax.numpy as jnp
import numpy as np

from rankt5_jax.modeling.config import T5Config

param_with_axes = nn_partitioning.param_with_axes
with_sharding_constraint = nn_partitioning.with_sharding_constraint

Array = jax.Array
Initializer = Callable[..., Array]


class LayerNorm(nn.Module):
    """T5 RMS layer norm (no mean subtraction, no bias), computed in float32."""

    epsilon: float = 1e-6
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, inputs: Array) -> Array:
        features = inputs.shape[-1]
        scale = param_with_axes(
            "scale", nn.initializers.ones, (features,), jnp.float32, axes=("embed",)
        )
        values = inputs.astype(jnp.float32)
        variance = jnp.mean(jnp.square(values), axis=-1, keepdims=True)
        normed = values * jax.lax.rsqrt(variance + self.epsilon)
        return (normed * scale).astype(self.dtype)


class DenseGeneral(nn.Module):
    """A bias-free dense layer whose kernel is stored 2-D, as T5X stores it.

    The kernel is `[prod(in_dims), prod(out_dims)]` in float32 and reshaped for the contraction, so
    attention projections keep T5X's joined-heads layout (`[embed, heads * head_dim]`).
    """

    features: tuple[int, ...]
    axis: tuple[int, ...] = (-1,)
    kernel_axes: tuple[str, ...] = ()
    kernel_init: Initializer = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, inputs: Array, kernel_only: bool = False) -> Array:
        """`inputs` contracted with the kernel; with `kernel_only`, the kernel itself, shaped
        `in_dims + features` in `dtype` (`inputs` then only gives `in_dims`)."""
        axis = tuple(a % inputs.ndim for a in self.axis)
        in_dims = tuple(inputs.shape[a] for a in axis)
        kernel = param_with_axes(
            "kernel",
            self.kernel_init,
            (int(np.prod(in_dims)), int(np.prod(self.features))),
            jnp.float32,
            axes=self.kernel_axes,
        )
        kernel = jnp.reshape(kernel.astype(self.dtype), in_dims + tuple(self.features))
        if kernel_only:
            return kernel
        contract = tuple(range(len(axis)))
        out = jax.lax.dot_general(
            inputs.astype(self.dtype),
            kernel,
            ((axis, contract), ((), ())),
            preferred_element_type=_product_type(self.dtype),
        )
        return out.astype(self.dtype)


def _product_type(dtype: Any) -> Any:
    """`preferred_element_type` for matrix products whose result is cast to `dtype`.

    bfloat16 products on CPU ask for a float32 result, rounded after: XLA:CPU's bf16-in,
    f32-out kernels use the AMX/AVX-512 bf16 units (about 5x its float32 rate on the benchmark
    machine), its bf16-out kernels do not (slower than float32). Elsewhere the result type
    stays `dtype` (GPUs and TPUs accumulate in float32 inside the product already).
    """
    if jnp.dtype(dtype) == jnp.bfloat16 and jax.default_backend() == "cpu":
        return jnp.float32
    return None


def _activation(name: str) -> Callable[[Array], Array]:
    if name == "linear":
        return lambda x: x
    if name in ("gelu", "gelu_new"):
        return functools.partial(jax.nn.gelu, approximate=True)
    return getattr(jax.nn, name)


class MlpBlock(nn.Module):
    """T5 feed-forward block: `wo(act_0(wi_0 x) * act_1(wi_1 x) ...)` (`wi` when one activation)."""

    intermediate_dim: int
    activations: tuple[str, ...]
    dropout_rate: float
    dtype: Any

    @nn.compact
    def __call__(self, inputs: Array, deterministic: bool) -> Array:
        init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
        hidden = None
        for idx, act in enumerate(self.activations):
            name = "wi" if len(self.activations) == 1 else f"wi_{idx}"
            value = DenseGeneral(
                (self.intermediate_dim,),
                kernel_axes=("embed", "mlp"),
                kernel_init=init,
                dtype=self.dtype,
                name=name,
            )(inputs)
            value = _activation(act)(value)
            hidden = value if hidden is None else hidden * value
        hidden = nn.Dropout(rate=self.dropout_rate, broadcast_dims=(-2,))(
            hidden, deterministic=deterministic
        )
        hidden = with_sharding_constraint(hidden, ("batch", "length", "mlp"))
        return DenseGeneral(
            (inputs.shape[-1],),
            kernel_axes=("mlp", "embed"),
            kernel_init=init,
            dtype=self.dtype,
            name="wo",
        )(hidden)


class MultiHeadAttention(nn.Module):
    """T5 attention: no 1/sqrt(d) scaling at run time (T5X folds it into the query init)."""

    num_heads: int
    head_dim: int
    dropout_rate: float
    dtype: Any
    float32_logits: bool = True
    fold_short_queries: bool = True  # see `_folded`

    @nn.compact
    def __call__(
        self,
        inputs_q: Array,
        inputs_kv: Array,
        biases: tuple[Array, ...],
        deterministic: bool,
    ) -> Array:
        """`biases` are added to the `[N, H, q, k]` logits; each broadcasts (e.g. the shared
        relative-position bias `[1, H, q, k]` and the key padding mask `[N, 1, 1, k]`), so XLA
        fuses them into the softmax instead of materialising an `[N, H, q, k]` bias."""
        base_init = nn.initializers.variance_scaling(1.0, "fan_in", "normal")
        depth_scaling = jnp.sqrt(self.head_dim).astype(jnp.float32)

        def query_init(*args):
            return base_init(*args) / depth_scaling

        def projection(name, init):
            return DenseGeneral(
                (self.num_heads, self.head_dim),
                kernel_axes=("embed", "joined_kv"),
                kernel_init=init,
                dtype=self.dtype,
                name=name,
            )

        query = projection("query", query_init)(inputs_q)  # [N, q, H, D]
        query = with_sharding_constraint(query, ("batch", "length", "heads", "kv"))
        q_len, k_len = inputs_q.shape[-2], inputs_kv.shape[-2]
        if self.fold_short_queries and 2 * q_len <= self.head_dim and q_len < k_len:
            attended = self._folded(query, inputs_kv, projection, base_init, biases, deterministic)
        else:
            attended = self._projected(
                query, inputs_kv, projection, base_init, biases, deterministic
            )
        return DenseGeneral(
            (inputs_q.shape[-1],),
            axis=(-2, -1),
            kernel_axes=("joined_kv", "embed"),
            kernel_init=base_init,
            dtype=self.dtype,
            name="out",
        )(attended)

    def _weights(self, logits: Array, biases: tuple[Array, ...], deterministic: bool) -> Array:
        """Softmax (float32) of the biased logits, with attention dropout, in `dtype`."""
        for bias in biases:
            logits = _add_bias(logits, bias.astype(logits.dtype))
        weights = jax.nn.softmax(logits.astype(jnp.float32)).astype(self.dtype)
        if not deterministic and self.dropout_rate > 0.0:
            dropout_rng = self.make_rng("dropout")
            keep = jax.random.bernoulli(dropout_rng, 1.0 - self.dropout_rate, weights.shape)
            weights = (
                weights * keep.astype(self.dtype) / jnp.asarray(1.0 - self.dropout_rate, self.dtype)
            )
        return weights

    def _folded(self, query, inputs_kv, projection, base_init, biases, deterministic) -> Array:
        """Attention of a few queries (the decoder's one step over the encoder) without
        projecting the keys and values: `q.(x Wk)^T = (q Wk^T).x^T` and `w.(x Wv) = (w.x) Wv`.

        With q queries, k keys and H heads of D dims over d-dim inputs, this costs
        `2qHd(D + k)` multiply-adds instead of `2kd.HD + 2qk.HD`: for the decoder's single step
        it removes the key/value projections of every encoder token in every decoder layer
        (about a sixth of RankT5-EncDec's FLOPs at base size). Same function, same parameters;
        only the order of the sums changes.
        """
        key_kernel = projection("key", base_init)(inputs_kv, kernel_only=True)  # [d, H, D]
        value_kernel = projection("value", base_init)(inputs_kv, kernel_only=True)
        inputs_kv = inputs_kv.astype(self.dtype)
        if self.float32_logits:
            query, key_kernel = query.astype(jnp.float32), key_kernel.astype(jnp.float32)
            keys_in = inputs_kv.astype(jnp.float32)
        else:
            keys_in = inputs_kv
        folded = jnp.einsum("nqhd,ehd->nhqe", query, key_kernel)  # [N, H, q, d]
        logits = jnp.einsum("nhqe,nke->nhqk", folded, keys_in)  # [N, H, q, k]
        weights = self._weights(logits, biases, deterministic)
        # bf16 results here even on CPU: XLA:CPU (jax 0.10.2) fails these two products with a
        # float32 result ("Unsupported element type for DotThunk"); they are a few FLOPs.
        mixed = jnp.einsum("nhqk,nke->nqhe", weights, inputs_kv)  # [N, q, H, d]
        return jnp.einsum("nqhe,ehd->nqhd", mixed, value_kernel)  # [N, q, H, D]

    def _projected(self, query, inputs_kv, projection, base_init, biases, deterministic) -> Array:
        """Standard attention: project keys and values, then `softmax(q.k^T) v`."""
        key = projection("key", base_init)(inputs_kv)  # [N, k, H, D]
        value = projection("value", base_init)(inputs_kv)
        key = with_sharding_constraint(key, ("batch", "length", "heads", "kv"))
        value = with_sharding_constraint(value, ("batch", "length", "heads", "kv"))
        if self.float32_logits:
            query, key = query.astype(jnp.float32), key.astype(jnp.float32)
        # Heads-major layouts, so both attention matmuls are plain batched [q, d] x [d, k].
        query = jnp.swapaxes(query, 1, 2)  # [N, H, q, D]
        key = jnp.swapaxes(key, 1, 2)  # [N, H, k, D]
        value = jnp.swapaxes(value, 1, 2)  # [N, H, k, D]
        logits = jnp.einsum("nhqd,nhkd->nhqk", query, key)  # [N, H, q, k]
        weights = self._weights(logits, biases, deterministic)
        attended = jnp.einsum(
            "nhqk,nhkd->nhqd",
            weights,
            value.astype(self.dtype),
            preferred_element_type=_product_type(self.dtype),
        ).astype(self.dtype)
        return jnp.swapaxes(attended, 1, 2)  # [N, q, H, D]


def relative_position_bucket(
    relative_position: np.ndarray, bidirectional: bool, num_buckets: int, max_distance: int
) -> np.ndarray:
    """T5's relative position bucketing (same as Mesh TF, T5X and Hugging Face).

    Half the buckets (per direction when bidirectional) hold exact small distances, the rest
    logarithmically larger ones up to `max_distance`; further distances share the last bucket.
    `relative_position` is `memory_position - query_position`.
    """
    bucket = np.zeros_like(relative_position, dtype=np.int32)
    n = -relative_position
    if bidirectional:
        num_buckets //= 2
        bucket += (n < 0).astype(np.int32) * num_buckets
        n = np.abs(n)
    else:
        n = np.maximum(n, 0)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    with np.errstate(divide="ignore"):
        large = max_exact + (
            np.log(n.astype(np.float32) / max_exact + np.finfo(np.float32).eps)
            / np.log(max_distance / max_exact)
            * (num_buckets - max_exact)
        ).astype(np.int32)
    large = np.minimum(large, num_buckets - 1)
    return bucket + np.where(is_small, n, large).astype(np.int32)


@jax.custom_vjp
def _add_bias(logits: Array, bias: Array) -> Array:
    """`logits + bias` for a `bias` that broadcasts over some axes (same rank, size 1 there).

    Same values and gradients as `+`; only the bias gradient is computed differently: the sum
    of the logits' gradient over the broadcast axes is written as a product with a ones vector.
    For the shared relative-position bias `[1, H, q, k]` that sum runs over the whole batch in
    every layer, and XLA:CPU's reduction fusion for it took 0.4 s of a 6.9 s training step (T5
    small, 72 x 128 tokens); as a matrix-vector product it is memory-bound (step 6.5% faster,
    `bench/RESULTS.md`)."""
    return logits + bias


def _add_bias_fwd(logits: Array, bias: Array):
    return logits + bias, bias.shape


def _add_bias_bwd(bias_shape: tuple[int, ...], grad: Array):
    axes = tuple(i for i, size in enumerate(bias_shape) if size == 1 and grad.shape[i] != 1)
    if not axes:
        return grad, grad
    kept = tuple(i for i in range(grad.ndim) if i not in axes)
    count = math.prod(grad.shape[i] for i in axes)
    rows = jnp.transpose(grad, axes + kept).reshape(count, -1)
    summed = jax.lax.dot_general(
        jnp.ones((count,), grad.dtype),
        rows,
        (((0,), (0,)), ((), ())),
        preferred_element_type=jnp.float32,
    )
    return grad, summed.reshape(bias_shape).astype(grad.dtype)


_add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


class RelativePositionBiases(nn.Module):
    """Per-head bias from bucketed relative positions, shared by all layers of a stack."""

    num_buckets: int
    max_distance: int
    num_heads: int
    dtype: Any

    @nn.compact
    def __call__(self, query_length: int, key_length: int, bidirectional: bool) -> Array:
        context = np.arange(query_length, dtype=np.int32)[:, None]
        memory = np.arange(key_length, dtype=np.int32)[None, :]
        buckets = relative_position_bucket(
            memory - context, bidirectional, self.num_buckets, self.max_distance
        )
        table = param_with_axes(
            "rel_embedding",
            nn.initializers.variance_scaling(1.0, "fan_avg", "uniform"),
            (self.num_heads, self.num_buckets),
            jnp.float32,
            axes=("heads", "relpos_buckets"),
        )
        values = jnp.take(table, jnp.asarray(buckets), axis=1)  # [H, q, k]
        return values[None].astype(self.dtype)  # [1, H, q, k]


class Embed(nn.Module):
    """Token embedding table `[vocab, embed]` with T5's init (normal, stddev 1)."""

    num_embeddings: int
    features: int
    dtype: Any
    one_hot: bool = False

    def setup(self):
        self.embedding = param_with_axes(
            "embedding",
            nn.initializers.normal(stddev=1.0),
            (self.num_embeddings, self.features),
            jnp.float32,
            axes=("vocab", "embed"),
        )

    def __call__(self, tokens: Array) -> Array:
        if self.one_hot:
            one_hot = jax.nn.one_hot(tokens, self.num_embeddings, dtype=self.dtype)
            return one_hot @ self.embedding.astype(self.dtype)
        # Gather from a table sharded on `vocab` only: with the `embed` dimension also sharded
        # (2-D partitioning), XLA's SPMD partitioner drops the gradient of the last row of each
        # vocabulary shard (seen with jax 0.10.2 on CPU; tests/test_engine.py guards it).
        table = with_sharding_constraint(self.embedding, ("vocab", None))
        return jnp.take(table, tokens, axis=0).astype(self.dtype)

    def attend_columns(self, hidden: Array, token_ids: Sequence[int]) -> Array:
        """`hidden @ embedding[token_ids].T` in float32: only the requested logit columns."""
        rows = jnp.take(self.embedding, jnp.asarray(token_ids, jnp.int32), axis=0)
        return jnp.einsum("...d,kd->...k", hidden.astype(jnp.float32), rows)

    def attend(self, hidden: Array) -> Array:
        """Full logits `hidden @ embedding.T` in float32 (MonoT5 training only)."""
        return jnp.einsum("...d,vd->...v", hidden.astype(jnp.float32), self.embedding)


def attention_block(cfg: T5Config, name: str) -> MultiHeadAttention:
    """The config's attention module called `name` (create it inside a compact method)."""
    return MultiHeadAttention(
        cfg.num_heads,
        cfg.head_dim,
        cfg.dropout_rate,
        cfg.activation_dtype,
        cfg.float32_attention_logits,
        name=name,
    )


def key_mask_bias(key_mask: Array) -> Array:
    """`[N, 1, 1, k]` additive mask in float32: 0 for real keys, -1e10 for padding.

    Only keys are masked (as Hugging Face does): real positions never attend to padding, and the
    outputs at padded positions are never read.
    """
    return jnp.where(key_mask, 0.0, -1e10).astype(jnp.float32)[:, None, None, :]


class EncoderLayer(nn.Module):
    """With `first_only`, only position 0's output is computed (`[N, 1, embed]`): position 0
    still attends to every token, but no other position's query, attention or MLP is run."""

    config: T5Config
    first_only: bool = False

    @nn.compact
    def __call__(self, inputs: Array, biases: tuple[Array, ...], deterministic: bool) -> Array:
        cfg = self.config
        dtype = cfg.activation_dtype
        normed = LayerNorm(cfg.layer_norm_epsilon, dtype, name="pre_attention_layer_norm")(inputs)
        queries = normed
        if self.first_only:
            queries, inputs = normed[:, :1], inputs[:, :1]
            biases = tuple(bias[..., :1, :] for bias in biases)  # query rows of the biases
        attended = attention_block(cfg, "attention")(queries, normed, biases, deterministic)
        attended = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(attended, deterministic)
        hidden = attended + inputs
        normed = LayerNorm(cfg.layer_norm_epsilon, dtype, name="pre_mlp_layer_norm")(hidden)
        mlp_out = MlpBlock(cfg.mlp_dim, cfg.mlp_activations, cfg.dropout_rate, dtype, name="mlp")(
            normed, deterministic
        )
        mlp_out = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(mlp_out, deterministic)
        out = mlp_out + hidden
        return with_sharding_constraint(out, ("batch", "length", "embed"))


class DecoderLayer(nn.Module):
    """One pre-norm T5 decoder layer: causal self-attention, cross-attention over the encoder's
    output (folded into the query side when the decoder side is short; see
    `MultiHeadAttention`), then the MLP, each with dropout and a residual."""

    config: T5Config

    @nn.compact
    def __call__(
        self,
        inputs: Array,
        encoded: Array,
        self_biases: tuple[Array, ...],
        cross_biases: tuple[Array, ...],
        deterministic: bool,
    ) -> Array:
        cfg = self.config
        dtype = cfg.activation_dtype

        def dropout(value):
            return nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(value, deterministic)

        normed = LayerNorm(cfg.layer_norm_epsilon, dtype, name="pre_self_attention_layer_norm")(
            inputs
        )
        self_attention = attention_block(cfg, "self_attention")
        hidden = dropout(self_attention(normed, normed, self_biases, deterministic))
        hidden = hidden + inputs
        normed = LayerNorm(cfg.layer_norm_epsilon, dtype, name="pre_cross_attention_layer_norm")(
            hidden
        )
        cross_attention = attention_block(cfg, "encoder_decoder_attention")
        cross = cross_attention(normed, encoded, cross_biases, deterministic)
        hidden = dropout(cross) + hidden
        normed = LayerNorm(cfg.layer_norm_epsilon, dtype, name="pre_mlp_layer_norm")(hidden)
        mlp_out = MlpBlock(cfg.mlp_dim, cfg.mlp_activations, cfg.dropout_rate, dtype, name="mlp")(
            normed, deterministic
        )
        out = dropout(mlp_out) + hidden
        return with_sharding_constraint(out, ("batch", "length", "embed"))


def maybe_remat(layer_cls: type[nn.Module], cfg: T5Config, num_args: int) -> type[nn.Module]:
    """Rematerialise a layer whose last of `num_args` call arguments is `deterministic`."""
    if cfg.remat == "full":
        # Flax counts `self` as argument 0.
        return nn.remat(layer_cls, static_argnums=(num_args,))
    return layer_cls


def relpos_bias(cfg: T5Config) -> RelativePositionBiases:
    """The stack's relative-position bias module (`<stack>/relpos_bias`); call inside compact."""
    return RelativePositionBiases(
        cfg.relative_attention_num_buckets,
        cfg.relative_attention_max_distance,
        cfg.num_heads,
        cfg.activation_dtype,
        name="relpos_bias",
    )


def embed_tokens(embedder: nn.Module, tokens: Array, cfg: T5Config, deterministic: bool) -> Array:
    """Token embedding, dropout, activation dtype: the entry of both stacks."""
    hidden = embedder(tokens.astype(jnp.int32))
    hidden = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(hidden, deterministic)
    return hidden.astype(cfg.activation_dtype)


OutputLayer = tuple[Array, Array | None]


class LogitsKernel(nn.Module):
    """Owns `decoder/logits_dense/kernel [embed, vocab]` (untied T5 v1.1 output layer) and, with
    `config.logits_bias`, `decoder/logits_dense/bias [vocab]` (the FiT5 authors' head).

    The layer is returned rather than applied so the score heads can read single columns.
    """

    config: T5Config

    @nn.compact
    def __call__(self) -> OutputLayer:
        kernel = param_with_axes(
            "kernel",
            nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal"),
            (self.config.emb_dim, self.config.vocab_size),
            jnp.float32,
            axes=("embed", "vocab"),
        )
        bias = None
        if self.config.logits_bias:
            bias = param_with_axes(
                "bias",
                nn.initializers.zeros,
                (self.config.vocab_size,),
                jnp.float32,
                axes=("vocab",),
            )
        return kernel, bias


class ScoreHead(nn.Module):
    """RankT5-Enc dense projection `[..., embed] -> [...]` with a bias, float32."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, pooled: Array) -> Array:
        features = pooled.shape[-1]
        kernel = param_with_axes(
            "kernel",
            nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal"),
            (features, 1),
            jnp.float32,
            axes=("embed", "score"),
        )
        bias = param_with_axes("bias", nn.initializers.zeros, (1,), jnp.float32, axes=("score",))
        return (pooled.astype(jnp.float32) @ kernel + bias)[..., 0]
