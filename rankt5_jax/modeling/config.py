"""`T5Config`: the architecture of a T5 stack and of the ranking heads, and the named T5 sizes.

`get_config("t5_1_1_base", dtype="bfloat16")` gives a named size with field overrides; `tiny` and
`tiny_1_1` are 2-layer models with d_model 32 for tests.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax.numpy as jnp

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
