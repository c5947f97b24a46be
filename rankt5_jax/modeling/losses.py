"""The RankT5 paper's ranking losses, by name, on top of Rax.

All losses take `scores [B, L]` and `labels [B, L]` (float32) with `mask [B, L]` (False for padded
items, which are excluded everywhere) and return a float32 scalar.

| name      | Rax function                | per list `i` (m valid items, p = softmax(s_i))             | reduction                      |
|-----------|-----------------------------|------------------------------------------------------------|--------------------------------|
| `pointce` | `pointwise_sigmoid_loss`    | per item: -y log sig(s) - (1-y) log(1-sig(s)), y clipped [0,1] | mean over valid items         |
| `pair`    | `pairwise_logistic_loss`    | per pair y_j > y_k: log(1 + exp(s_k - s_j))                | mean over valid pairs          |
| `softmax` | `softmax_loss`              | -sum_j y_j log p_j                                         | mean over lists with a valid item |
| `poly1`   | `poly1_loss` (below)        | softmax_i + eps * sum_j y_j (1 - p_j)                      | mean over lists with a valid item |

The per-list terms are the paper's equations (section 4.2). Normalisation is Rax's `jnp.mean`:
the Pair and PointCE means run over valid pairs/items of the whole batch, the listwise ones over
lists. Lists whose labels are all zero contribute 0 to Softmax/Poly1 but count in their mean, and
no pair to Pair. Positive upsampling for PointCE is done in the data (see `preprocessors.py`).

Poly1 is the paper's equation, written with Rax's conventions. It equals Rax's
`poly1_softmax_loss` whenever a list has exactly one positive of label 1 (the paper's training
data); Rax differs otherwise (it normalises labels inside the poly term and gives all-zero lists a
poly term of eps * (1 - 1/m)). Rax's version stays available as `poly1_softmax_loss`.

Any other Rax loss is available by its Rax name (e.g. `listmle_loss`, `pairwise_hinge_loss`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import rax

from rankt5_jax.errors import ConfigError

PAPER_LOSSES = {
    "pointce": "pointwise_sigmoid_loss",
    "pair": "pairwise_logistic_loss",
    "softmax": "softmax_loss",
    "poly1": "poly1_loss",
}

LossFn = Callable[..., jax.Array]


def available_losses() -> list[str]:
    rax_losses = [name for name in dir(rax) if name.endswith("_loss")]
    return sorted(PAPER_LOSSES) + sorted(rax_losses)


def poly1_loss(
    scores: jax.Array,
    labels: jax.Array,
    *,
    where: jax.Array | None = None,
    epsilon: float = 1.0,
    reduce_fn=jnp.mean,
) -> jax.Array:
    r"""Poly-1 softmax cross-entropy exactly as RankT5 (eq. in section 4.2) writes it.

    .. math::
        \ell(s, y) = -\sum_j y_j \log p_j + \epsilon \sum_j y_j (1 - p_j),
        \quad p = \mathrm{softmax}(s)

    Args:
      scores: `[..., list_size]` scores.
      labels: `[..., list_size]` relevance labels.
      where: optional `[..., list_size]` mask of valid items.
      epsilon: weight of the first polynomial term (the paper uses 1).
      reduce_fn: reduction over lists (lists without valid items are excluded).
    """
    ce = rax.softmax_loss(scores, labels, where=where, reduce_fn=None)
    if where is not None:
        labels = jnp.where(where, labels, 0.0)
        scores = jnp.where(where, scores, -jnp.inf)
    probs = jax.nn.softmax(scores, axis=-1)
    poly = jnp.sum(labels * (1.0 - probs), axis=-1, where=where)
    loss = ce + epsilon * poly
    list_mask = None if where is None else jnp.any(where, axis=-1)
    return rax.utils.safe_reduce(loss, where=list_mask, reduce_fn=reduce_fn)


def get_loss_fn(name: str, **kwargs) -> LossFn:
    """Returns `fn(scores, labels, mask) -> scalar` for a paper name or any Rax loss name.

    Args:
      name: `pointce`, `pair`, `softmax`, `poly1`, or a Rax loss name.
      **kwargs: passed to the Rax function (e.g. `epsilon=1.0` for `poly1`).
    """
    rax_name = PAPER_LOSSES.get(name.lower(), name)
    fn = poly1_loss if rax_name == "poly1_loss" else getattr(rax, rax_name, None)
    if fn is None or not rax_name.endswith("_loss"):
        raise ConfigError(f"unknown loss {name!r}; choose from {available_losses()}")
    if rax_name in ("poly1_loss", "poly1_softmax_loss"):
        kwargs.setdefault("epsilon", 1.0)
    bound = functools.partial(fn, **kwargs)

    def loss_fn(scores: jax.Array, labels: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        scores = scores.astype(jnp.float32)
        labels = labels.astype(jnp.float32)
        where = None if mask is None else mask.astype(bool)
        return bound(scores, labels, where=where, reduce_fn=jnp.mean)

    loss_fn.__name__ = f"{name}_loss_fn"
    return loss_fn
