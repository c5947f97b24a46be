"""UR2N's network branch: the XTR layer that makes a ranker its own first stage.

UR2N (Bhat et al., IBM Research) adds to a ranker's encoder a parallel copy of its last layer
(`encoder/xtr_layer`, initialised from `encoder/layers_{L-1}`: `xtr_layer_from_last`), whose
output goes through the encoder's own final norm and a projection to `xtr_dim`
(`encoder/xtr_projection/kernel [embed, xtr]`): L2-normalised token embeddings. Any family's
model carries it when its config sets `xtr_dim > 0` (the models build `XTRTransformer` then);
the ranker's own paths never read the XTR params, so it re-ranks exactly as without them.

  XTREncoder          the encoder stack with the XTR branch (`xtr=True`)
  XTRTransformer      `network.Transformer` whose initialisation also creates the XTR params
  xtr_embeddings(module, tokens)   -> [N, T, xtr_dim] float32 (a `module.apply` method)
  xtr_layer_from_last(params, config)

The XTR loss and the training model are in `modeling.xtr`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rankt5_jax.errors import ConfigError
from rankt5_jax.modeling.config import T5Config
from rankt5_jax.modeling.layers import DenseGeneral
from rankt5_jax.modeling.network import Encoder, Transformer

Array = jax.Array


class XTREncoder(Encoder):
    """`network.Encoder` with UR2N's XTR branch (`config.xtr_dim > 0`)."""

    implements: ClassVar[tuple[str, ...]] = ("xtr_dim",)

    @nn.compact
    def __call__(
        self,
        tokens: Array,
        deterministic: bool,
        first_only: bool = False,
        list_mask: Array | None = None,
        xtr: bool = False,
    ) -> Array:
        """The encoder's output (`network.Encoder`), or with `xtr` the XTR branch: the input of
        the last layer goes through `xtr_layer` (a parallel copy of that layer), the encoder's
        own final norm and `xtr_projection` -> `[N, T, xtr_dim]` float32, L2-normalised, zeros
        at padding. The ranker's last layer is not run then.

        The final norm is the encoder's own `encoder_norm` (frozen with the ranker): a copy of
        its scale would be redundant with the projection that follows (`diag(s) W` is just
        another `W`)."""
        hidden, biases = self.embed_inputs(tokens, deterministic)
        if not xtr:
            hidden = self.run_layers(hidden, biases, deterministic, first_only, list_mask)
            return self.final_norm(hidden, deterministic)
        cfg = self.config
        if not cfg.xtr_dim:
            raise ValueError("this model has no XTR layer (config.xtr_dim = 0)")
        for idx in range(cfg.num_encoder_layers - 1):
            hidden = self.layer(idx)(hidden, biases, deterministic)
        hidden = self.layer("xtr_layer")(hidden, biases, deterministic)
        hidden = self.final_norm(hidden, deterministic)
        projected = DenseGeneral(
            (cfg.xtr_dim,),
            kernel_axes=("embed", "xtr"),
            dtype=jnp.float32,
            name="xtr_projection",
        )(hidden)  # [N, T, xtr_dim] float32
        squared = jnp.sum(jnp.square(projected), axis=-1, keepdims=True)
        normed = projected * jax.lax.rsqrt(jnp.maximum(squared, 1e-12))
        return jnp.where((tokens > 0)[..., None], normed, 0.0)


class XTRTransformer(Transformer):
    """`network.Transformer` over `XTREncoder`; initialisation creates the XTR params too."""

    def __call__(self, encoder_input_tokens, decoder_input_tokens=None, enable_dropout=False):
        xtr_embeddings(self, encoder_input_tokens, not enable_dropout)  # the XTR params
        return super().__call__(encoder_input_tokens, decoder_input_tokens, enable_dropout)


def make_transformer(config: T5Config, **kwargs: Any) -> Transformer:
    """`XTRTransformer` over `XTREncoder` (`config.xtr_dim > 0` only)."""
    if not config.xtr_dim:
        raise ConfigError("an XTR layer needs config.xtr_dim > 0")
    if kwargs.get("encoder_cls") not in (None, XTREncoder):
        raise ConfigError(
            f"an XTR layer over {kwargs['encoder_cls'].__name__} is not supported (only over "
            "the plain encoder)"
        )
    return XTRTransformer(config, **dict(kwargs, encoder_cls=XTREncoder))


def xtr_embeddings(module: Transformer, tokens: Array, deterministic: bool = True) -> Array:
    """UR2N token embeddings `[N, T] -> [N, T, xtr_dim]` float32, L2-normalised per token,
    zeros at padding (token 0): `model.module.apply(variables, tokens, method=xtr_embeddings)`.
    Reads no parameter of the ranker's last encoder layer or of the decoder."""
    if not isinstance(module.encoder, XTREncoder):
        raise ValueError("this model has no XTR layer (config.xtr_dim = 0)")
    return module.encoder(tokens, deterministic, xtr=True)


def xtr_layer_from_last(params: Any, config: T5Config) -> Any:
    """`params` with `encoder/xtr_layer` set to a copy of the last encoder layer's params
    (UR2N's initialisation of the XTR layer); the projection is left as it is."""
    encoder = dict(params["encoder"])
    last = encoder[f"layers_{config.num_encoder_layers - 1}"]
    encoder["xtr_layer"] = jax.tree_util.tree_map(
        lambda x: np.array(x, copy=True) if isinstance(x, np.ndarray) else jnp.copy(x), last
    )
    return dict(params, encoder=encoder)
