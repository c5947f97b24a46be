"""Flax (linen) T5 with T5X parameter names, plus the RankT5 score heads.

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
  encoder/global_layers_{k}/...                     (FiT5 only: pre_attention_layer_norm and
                                                     attention, as an encoder layer's)
  score_head/{kernel [embed, score], bias [score]}  (RankT5-Enc only)
  encoder/xtr_layer/...                             (UR2N's XTR layer, `xtr_dim > 0` only: an
                                                     encoder layer's params, named as layers_{i}'s)
  encoder/xtr_projection/kernel                     [embed, xtr] (UR2N only)

Every parameter is created with `flax.linen.partitioning.param_with_axes`, so `init` also returns the
`params_axes` collection that T5X's partitioner (and ours) read.

Numerics follow T5 (Raffel et al.) exactly as T5X and Hugging Face implement it: RMS layer norm in
float32, no attention scaling (folded into the query initialiser), relative position buckets shared by
all layers of a stack, tied output `embedding.attend(y) / sqrt(d_model)` for T5 v1.0.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import flax.linen.partitioning as nn_partitioning
import jax
import jax.numpy as jnp
import numpy as np

param_with_axes = nn_partitioning.param_with_axes
with_sharding_constraint = nn_partitioning.with_sharding_constraint

Array = jax.Array
Initializer = Callable[..., Array]

ACTIVATIONS = ("relu", "gelu", "gelu_new", "linear", "silu")


@dataclasses.dataclass(frozen=True)
class T5Config:
    """Architecture of a T5 stack and of the RankT5 heads.

    Attributes:
      vocab_size: rows of the embedding table (32128 for the standard vocabulary, padded).
      emb_dim: model width d_model.
      num_heads: attention heads.
      num_encoder_layers / num_decoder_layers: depth of each stack (0 decoder layers: encoder only).
      head_dim: width of one head (d_kv).
      mlp_dim: hidden width of the MLP (d_ff).
      mlp_activations: ("relu",) for T5 v1.0, ("gelu", "linear") for the gated-GELU of v1.1.
      dropout_rate: dropout everywhere T5 applies it.
      logits_via_embedding: tied output embedding (v1.0) instead of `decoder/logits_dense` (v1.1).
      dtype: activation dtype name ("float32" or "bfloat16"); parameters are always float32.
      float32_attention_logits: compute attention logits and softmax in float32.
      relative_attention_num_buckets / relative_attention_max_distance: position buckets.
      layer_norm_epsilon: RMS norm epsilon.
      remat: rematerialise each layer in the backward pass ("none" or "full").
      one_hot_embedding: embed by one-hot matmul (TPU friendly) instead of a gather.
      has_decoder: whether the decoder stack exists (False for RankT5-Enc).
      pooling: "first" or "mean" (RankT5-Enc head).
      num_global_layers: FiT5's global attention after each of the last this many encoder
        layers (0: none, plain T5).
      logits_bias: the untied output layer has a bias (`decoder/logits_dense/bias`), as the
        FiT5 authors' output `Linear(d_model, vocab)` has.
      xtr_dim: UR2N's XTR layer (`Encoder(xtr=True)`, `Transformer.xtr_embeddings`): token
        embeddings of this width from a parallel copy of the last encoder layer (0: none).
    """

    vocab_size: int = 32128
    emb_dim: int = 512
    num_heads: int = 8
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    head_dim: int = 64
    mlp_dim: int = 2048
    mlp_activations: tuple[str, ...] = ("relu",)
    dropout_rate: float = 0.1
    logits_via_embedding: bool = True
    dtype: str = "float32"
    float32_attention_logits: bool = True
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    remat: str = "none"
    one_hot_embedding: bool = False
    has_decoder: bool = True
    pooling: str = "first"
    num_global_layers: int = 0
    logits_bias: bool = False
    xtr_dim: int = 0

    def __post_init__(self):
        object.__setattr__(self, "mlp_activations", tuple(self.mlp_activations))
        for act in self.mlp_activations:
            if act not in ACTIVATIONS:
                raise ValueError(f"unknown MLP activation {act!r}; choose from {ACTIVATIONS}")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(
                f"activation dtype must be 'float32' or 'bfloat16' (never float16 for T5), "
                f"got {self.dtype!r}"
            )
        if self.remat not in ("none", "full"):
            raise ValueError(f"remat must be 'none' or 'full', got {self.remat!r}")
        if self.pooling not in ("first", "mean"):
            raise ValueError(f"pooling must be 'first' or 'mean', got {self.pooling!r}")
        if not 0 <= self.num_global_layers <= self.num_encoder_layers:
            raise ValueError(
                f"num_global_layers must be in [0, num_encoder_layers={self.num_encoder_layers}],"
                f" got {self.num_global_layers}"
            )
        if self.xtr_dim < 0:
            raise ValueError(f"xtr_dim must be >= 0, got {self.xtr_dim}")
        if self.xtr_dim and self.num_global_layers:
            raise ValueError(
                "an XTR layer (xtr_dim > 0) taps the input of the last encoder layer, which "
                "FiT5's global layers (num_global_layers > 0) would bypass: not supported"
            )
        if self.logits_bias and self.logits_via_embedding:
            raise ValueError(
                "logits_bias needs an untied output layer (logits_via_embedding=False)"
            )

    @property
    def activation_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    def replace(self, **changes: Any) -> T5Config:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["mlp_activations"] = list(self.mlp_activations)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> T5Config:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown T5Config fields: {unknown}")
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


_V10 = dict(mlp_activations=("relu",), logits_via_embedding=True)
_V11 = dict(mlp_activations=("gelu", "linear"), logits_via_embedding=False)

# name -> (emb_dim, num_heads, num_layers (each stack), head_dim, mlp_dim, version defaults)
_SIZES: dict[str, tuple[int, int, int, int, int, dict[str, Any]]] = {
    "t5_1_0_small": (512, 8, 6, 64, 2048, _V10),
    "t5_1_0_base": (768, 12, 12, 64, 3072, _V10),
    "t5_1_0_large": (1024, 16, 24, 64, 4096, _V10),
    "t5_1_0_3B": (1024, 32, 24, 128, 16384, _V10),
    "t5_1_0_11B": (1024, 128, 24, 128, 65536, _V10),
    "t5_1_1_small": (512, 6, 8, 64, 1024, _V11),
    "t5_1_1_base": (768, 12, 12, 64, 2048, _V11),
    "t5_1_1_large": (1024, 16, 24, 64, 2816, _V11),
    "t5_1_1_xl": (2048, 32, 24, 64, 5120, _V11),
    "t5_1_1_xxl": (4096, 64, 24, 64, 10240, _V11),
}

CONFIG_NAMES = tuple(_SIZES) + ("tiny", "tiny_1_1")


def get_config(name: str, **overrides: Any) -> T5Config:
    """A named T5 size (`t5_1_0_base`, `t5_1_1_large`, ..., `tiny`) with field overrides.

    `tiny` is a 2-layer v1.0-style model with d_model 32 for tests; `tiny_1_1` is its v1.1 twin.
    """
    if name in ("tiny", "tiny_1_1"):
        base = dict(
            vocab_size=256,
            emb_dim=32,
            num_heads=4,
            num_encoder_layers=2,
            num_decoder_layers=2,
            head_dim=8,
            mlp_dim=64,
            dropout_rate=0.0,
            **(_V10 if name == "tiny" else _V11),
        )
    elif name in _SIZES:
        emb, heads, layers, head_dim, mlp, version = _SIZES[name]
        base = dict(
            emb_dim=emb,
            num_heads=heads,
            num_encoder_layers=layers,
            num_decoder_layers=layers,
            head_dim=head_dim,
            mlp_dim=mlp,
            **version,
        )
    else:
        raise ValueError(f"unknown T5 size {name!r}; choose from {CONFIG_NAMES}")
    base.update(overrides)
    return T5Config(**base)


# ----------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------


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


def _key_mask_bias(key_mask: Array) -> Array:
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
        attended = MultiHeadAttention(
            cfg.num_heads,
            cfg.head_dim,
            cfg.dropout_rate,
            dtype,
            cfg.float32_attention_logits,
            name="attention",
        )(queries, normed, biases, deterministic)
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

        def attention(name):
            return MultiHeadAttention(
                cfg.num_heads,
                cfg.head_dim,
                cfg.dropout_rate,
                dtype,
                cfg.float32_attention_logits,
                name=name,
            )

        def dropout(value):
            return nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(value, deterministic)

        normed = LayerNorm(cfg.layer_norm_epsilon, dtype, name="pre_self_attention_layer_norm")(
            inputs
        )
        hidden = dropout(attention("self_attention")(normed, normed, self_biases, deterministic))
        hidden = hidden + inputs
        normed = LayerNorm(cfg.layer_norm_epsilon, dtype, name="pre_cross_attention_layer_norm")(
            hidden
        )
        cross = attention("encoder_decoder_attention")(normed, encoded, cross_biases, deterministic)
        hidden = dropout(cross) + hidden
        normed = LayerNorm(cfg.layer_norm_epsilon, dtype, name="pre_mlp_layer_norm")(hidden)
        mlp_out = MlpBlock(cfg.mlp_dim, cfg.mlp_activations, cfg.dropout_rate, dtype, name="mlp")(
            normed, deterministic
        )
        out = dropout(mlp_out) + hidden
        return with_sharding_constraint(out, ("batch", "length", "embed"))


def _maybe_remat(layer_cls: type[nn.Module], cfg: T5Config, num_args: int) -> type[nn.Module]:
    """Rematerialise a layer whose last of `num_args` call arguments is `deterministic`."""
    if cfg.remat == "full":
        # Flax counts `self` as argument 0.
        return nn.remat(layer_cls, static_argnums=(num_args,))
    return layer_cls


def _relpos_bias(cfg: T5Config) -> RelativePositionBiases:
    """The stack's relative-position bias module (`<stack>/relpos_bias`); call inside compact."""
    return RelativePositionBiases(
        cfg.relative_attention_num_buckets,
        cfg.relative_attention_max_distance,
        cfg.num_heads,
        cfg.activation_dtype,
        name="relpos_bias",
    )


def _embed(embedder: nn.Module, tokens: Array, cfg: T5Config, deterministic: bool) -> Array:
    """Token embedding, dropout, activation dtype: the entry of both stacks."""
    hidden = embedder(tokens.astype(jnp.int32))
    hidden = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(hidden, deterministic)
    return hidden.astype(cfg.activation_dtype)


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
        attended = MultiHeadAttention(
            cfg.num_heads,
            cfg.head_dim,
            cfg.dropout_rate,
            dtype,
            cfg.float32_attention_logits,
            name="attention",
        )(normed, normed, (_key_mask_bias(list_mask),), deterministic)
        attended = nn.Dropout(cfg.dropout_rate)(attended, deterministic)
        block = attended + first  # the authors' block output, residual included
        updated = jnp.where(list_mask[..., None], first + block, first).astype(hidden.dtype)
        return hidden.at[:, 0].set(updated.reshape(batch * list_size, -1))


class Encoder(nn.Module):
    """The T5 encoder stack: shared embedding, `num_encoder_layers` pre-norm layers with one
    relative-position bias table for all layers, final RMS norm. Parameter names as T5X's."""

    config: T5Config
    shared_embedding: nn.Module

    @nn.compact
    def __call__(
        self,
        tokens: Array,
        deterministic: bool,
        first_only: bool = False,
        list_mask: Array | None = None,
        xtr: bool = False,
    ) -> Array:
        """`tokens [N, T]` (0 = padding) -> encoded `[N, T, embed]` in the activation dtype.

        `first_only`: the last layer computes position 0 only and the result is `[N, 1, embed]`
        (first-token pooling needs nothing else; about one layer's work less).
        `list_mask [B, L]` (`B * L = N`, rows in list order): the lists that FiT5's global layers
        (`config.num_global_layers`) attend across; False marks padded candidates. Without it a
        model with global layers treats all N rows as one list, as the FiT5 authors' code does.
        `xtr`: UR2N's branch instead (`config.xtr_dim > 0`): the input of the last layer goes
        through `xtr_layer` (a parallel copy of that layer), the encoder's own final norm and
        `xtr_projection` -> `[N, T, xtr_dim]` float32, L2-normalised, zeros at padding. The
        ranker's last layer is not run.
        """
        cfg = self.config
        dtype = cfg.activation_dtype
        rel_emb = _relpos_bias(cfg)
        length = tokens.shape[-1]
        # One relative-position bias for all layers, and the key padding mask.
        biases = (rel_emb(length, length, True), _key_mask_bias(tokens > 0))
        hidden = _embed(self.shared_embedding, tokens, cfg, deterministic)
        layer_cls = _maybe_remat(EncoderLayer, cfg, 3)
        last = cfg.num_encoder_layers - 1
        if xtr:
            return self._xtr_branch(tokens, hidden, biases, layer_cls, deterministic)
        first_global = cfg.num_encoder_layers - cfg.num_global_layers
        if cfg.num_global_layers and list_mask is None:
            list_mask = jnp.ones((1, tokens.shape[0]), bool)
        for idx in range(cfg.num_encoder_layers):
            layer = layer_cls(cfg, first_only=first_only and idx == last, name=f"layers_{idx}")
            hidden = layer(hidden, biases, deterministic)
            if idx >= first_global:
                global_layer = GlobalAttention(cfg, name=f"global_layers_{idx - first_global}")
                hidden = global_layer(hidden, list_mask, deterministic)
        hidden = LayerNorm(cfg.layer_norm_epsilon, dtype, name="encoder_norm")(hidden)
        return nn.Dropout(cfg.dropout_rate)(hidden, deterministic)

    def _xtr_branch(self, tokens, hidden, biases, layer_cls, deterministic) -> Array:
        """UR2N's XTR layer over the input of the last encoder layer (see `__call__`).

        The final norm is the encoder's own `encoder_norm` (frozen with the ranker): a copy of
        its scale would be redundant with the projection that follows (`diag(s) W` is just
        another `W`). Called from `__call__` (compact), so the params are the encoder's.
        """
        cfg = self.config
        if not cfg.xtr_dim:
            raise ValueError("this model has no XTR layer (config.xtr_dim = 0)")
        last = cfg.num_encoder_layers - 1
        for idx in range(last):
            hidden = layer_cls(cfg, name=f"layers_{idx}")(hidden, biases, deterministic)
        hidden = layer_cls(cfg, name="xtr_layer")(hidden, biases, deterministic)
        hidden = LayerNorm(cfg.layer_norm_epsilon, cfg.activation_dtype, name="encoder_norm")(
            hidden
        )
        hidden = nn.Dropout(cfg.dropout_rate)(hidden, deterministic)
        projected = DenseGeneral(
            (cfg.xtr_dim,),
            kernel_axes=("embed", "xtr"),
            dtype=jnp.float32,
            name="xtr_projection",
        )(hidden)  # [N, T, xtr_dim] float32
        squared = jnp.sum(jnp.square(projected), axis=-1, keepdims=True)
        normed = projected * jax.lax.rsqrt(jnp.maximum(squared, 1e-12))
        return jnp.where((tokens > 0)[..., None], normed, 0.0)


def xtr_layer_from_last(params: Any, config: T5Config) -> Any:
    """`params` with `encoder/xtr_layer` set to a copy of the last encoder layer's params
    (UR2N's initialisation of the XTR layer); the projection is left as it is."""
    encoder = dict(params["encoder"])
    last = encoder[f"layers_{config.num_encoder_layers - 1}"]
    encoder["xtr_layer"] = jax.tree_util.tree_map(
        lambda x: np.array(x, copy=True) if isinstance(x, np.ndarray) else jnp.copy(x), last
    )
    return dict(params, encoder=encoder)


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
        rel_emb = _relpos_bias(cfg)
        steps = decoder_tokens.shape[-1]
        causal = jnp.tril(jnp.ones((steps, steps), bool))
        causal_bias = jnp.where(causal, 0.0, -1e10).astype(jnp.float32)[None, None]
        self_biases = (rel_emb(steps, steps, False), causal_bias)
        # Decoder positions are all real (step 0 is the start token 0): in cross attention only
        # the encoder's padding is masked.
        cross_biases = (_key_mask_bias(encoder_tokens > 0),)
        hidden = _embed(self.shared_embedding, decoder_tokens, cfg, deterministic)
        layer_cls = _maybe_remat(DecoderLayer, cfg, 5)
        for idx in range(cfg.num_decoder_layers):
            hidden = layer_cls(cfg, name=f"layers_{idx}")(
                hidden, encoded, self_biases, cross_biases, deterministic
            )
        hidden = LayerNorm(cfg.layer_norm_epsilon, dtype, name="decoder_norm")(hidden)
        hidden = nn.Dropout(cfg.dropout_rate)(hidden, deterministic)
        output = None if cfg.logits_via_embedding else LogitsKernel(cfg, name="logits_dense")()
        return hidden, output


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


class Transformer(nn.Module):
    """T5 (encoder-decoder, or encoder only when `config.has_decoder` is False) with score heads.

    Methods used by the models:
      encode(tokens, first_only=False) -> [N, T, embed] ([N, 1, embed] with first_only)
      decode_hidden(encoded, encoder_tokens, decoder_tokens) -> [N, S, embed]
      logit_columns(hidden, output_layer, token_ids) -> [..., len(token_ids)] float32 (those only)
      full_logits(hidden, output_layer) -> [..., vocab] float32
      encdec_score_columns(tokens, token_ids) -> [N, len(token_ids)] (decoder step 0 from token 0)
      pooled_score(tokens) -> [N] (RankT5-Enc: Dense(Pool(Encoder(tokens))))
      xtr_embeddings(tokens) -> [N, T, xtr_dim] float32 (UR2N's XTR layer; `xtr_dim > 0`)
    """

    config: T5Config
    with_score_head: bool = False

    def setup(self):
        cfg = self.config
        self.token_embedder = Embed(
            cfg.vocab_size,
            cfg.emb_dim,
            cfg.activation_dtype,
            one_hot=cfg.one_hot_embedding,
        )
        self.encoder = Encoder(cfg, self.token_embedder)
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

    def xtr_embeddings(self, tokens: Array, deterministic: bool = True) -> Array:
        """UR2N token embeddings `[N, T] -> [N, T, xtr_dim]` float32, L2-normalised per token,
        zeros at padding (token 0). Reads no parameter of the ranker's last encoder layer or
        of the decoder, and the ranker's paths never read the XTR params."""
        return self.encoder(tokens, deterministic, xtr=True)

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
        if self.config.xtr_dim:
            self.xtr_embeddings(encoder_input_tokens, deterministic)  # creates the XTR params
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
