"""Optimizers and learning-rate schedules (gin: `trainer.make_optimizer`), and frozen params.

A model that trains only part of its params (`BaseRankingModel.trainable_prefixes`, e.g. UR2N's
XTR layer, `modeling.xtr.XTRModel`) gets `for_model(tx, model)`: `optax.multi_transform` with
the optimizer on the trained params and `optax.set_to_zero()` on the rest, so no optimizer state
exists for the frozen ones; `train_step` takes gradients w.r.t. the trained params only
(`split_params` / `join_params`) and passes the frozen ones through unchanged (bit-identical).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

import gin
from rankt5_jax.errors import ConfigError


@gin.configurable(module="trainer")
def make_optimizer(
    name: str = "adafactor",
    learning_rate: float = 1e-4,
    schedule: str = "constant",
    warmup_steps: int = 0,
    decay_steps: int | None = None,
    weight_decay: float = 0.0,
    clip_norm: float | None = None,
) -> tuple[optax.GradientTransformation, Callable[[Any], Any]]:
    """-> (optimizer, learning-rate schedule). The paper: constant 1e-4 (Adafactor as in T5X).

    Args:
      name: `adafactor` (T5X's default: factored, decay 0.8, update clipping 1.0, parameter
        scaling), `adamw` or `sgd`.
      schedule: `constant`, `linear` (decay to 0 at `decay_steps`) or `rsqrt` (T5 pre-training).
      warmup_steps: linear warmup from 0.
      clip_norm: optional global-norm gradient clipping.
    """
    if schedule == "constant":
        base = optax.constant_schedule(learning_rate)
    elif schedule == "linear":
        if not decay_steps:
            raise ConfigError("schedule='linear' needs decay_steps")
        base = optax.linear_schedule(learning_rate, 0.0, decay_steps - warmup_steps)
    elif schedule == "rsqrt":
        base = lambda step: learning_rate * jax.lax.rsqrt(jnp.maximum(step, 1.0))  # noqa: E731
    else:
        raise ConfigError(f"unknown schedule {schedule!r}")
    lr = (
        optax.join_schedules(
            [optax.linear_schedule(0.0, learning_rate, warmup_steps), base], [warmup_steps]
        )
        if warmup_steps
        else base
    )
    if name == "adafactor":
        tx = optax.adafactor(
            learning_rate=lr,
            decay_rate=0.8,
            clipping_threshold=1.0,
            multiply_by_parameter_scale=True,
            factored=True,
            weight_decay_rate=weight_decay or None,
        )
    elif name == "adamw":
        tx = optax.adamw(learning_rate=lr, weight_decay=weight_decay)
    elif name == "sgd":
        tx = optax.sgd(learning_rate=lr)
    else:
        raise ConfigError(f"unknown optimizer {name!r}: use adafactor, adamw or sgd")
    if clip_norm:
        tx = optax.chain(optax.clip_by_global_norm(clip_norm), tx)
    return tx, lr


def param_path(keypath: Sequence[Any]) -> str:
    """A params leaf's `jax.tree_util` key path as `encoder/xtr_layer/mlp/wi/kernel`."""
    return "/".join(str(getattr(key, "key", getattr(key, "name", key))) for key in keypath)


def is_trained(path: str, prefixes: Sequence[str] | None) -> bool:
    """Whether the param at `path` is trained (`prefixes` None: every param)."""
    return prefixes is None or any(path.startswith(prefix) for prefix in prefixes)


def param_labels(params: Any, prefixes: Sequence[str]) -> Any:
    """`"trained"` / `"frozen"` for each leaf of a params-shaped tree (`multi_transform`)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: "trained" if is_trained(param_path(path), prefixes) else "frozen", params
    )


def for_model(tx: optax.GradientTransformation, model: Any) -> optax.GradientTransformation:
    """`tx` for a model's trained params only: unchanged when the model trains all of them,
    else `multi_transform({"trained": tx, "frozen": set_to_zero()})` (no state for the frozen)."""
    prefixes = getattr(model, "trainable_prefixes", None)
    if prefixes is None:
        return tx
    labels = lambda tree: param_labels(tree, prefixes)  # noqa: E731
    return optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()}, labels)


def split_params(params: Any, prefixes: Sequence[str]) -> tuple[dict, dict]:
    """-> (trained, frozen): two nested dicts holding the leaves of each kind."""
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep="/")
    trained = {k: v for k, v in flat.items() if is_trained(k, prefixes)}
    if not trained:
        raise ConfigError(f"no parameter matches the trained prefixes {tuple(prefixes)}")
    frozen = {k: v for k, v in flat.items() if k not in trained}
    return (
        flax.traverse_util.unflatten_dict(trained, sep="/"),
        flax.traverse_util.unflatten_dict(frozen, sep="/"),
    )


def join_params(trained: Any, frozen: Any) -> dict:
    """The inverse of `split_params`."""
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(frozen), sep="/")
    flat.update(flax.traverse_util.flatten_dict(flax.core.unfreeze(trained), sep="/"))
    return flax.traverse_util.unflatten_dict(flat, sep="/")
