"""Optimizers and learning-rate schedules (gin: `trainer.make_optimizer`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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
