"""The compiled, sharded, donated training step (T5X's `trainer.py` concern)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from rankt5_jax.modeling.models import BaseRankingModel
from rankt5_jax.modeling.partitioning import Partitioner


def make_train_step(
    model: BaseRankingModel,
    tx: optax.GradientTransformation,
    lr_schedule: Callable[[Any], Any],
    partitioner: Partitioner,
    state: dict,
    grad_accum_steps: int = 1,
    non_finite: str = "stop",
    seed: int = 0,
) -> tuple[Callable, dict]:
    """The compiled training step and the batch shardings it takes.

    `step_fn(state, batch) -> (state, metrics)`: loss and gradients (averaged over
    `grad_accum_steps` micro-batches, scanned), the optimizer update, the global gradient norm and
    a `finite` flag; with `non_finite="skip"` a non-finite update leaves params and optimizer
    state unchanged. The state is donated; dropout uses `fold_in(seed + 1, step)`, so a resumed
    run draws the same masks. Call it inside `partitioner.context()`.
    """
    base_rng = jax.random.PRNGKey(seed + 1)

    def loss_and_grads(params, batch, rng):
        grad_fn = jax.value_and_grad(model.loss_fn, has_aux=True)
        if grad_accum_steps == 1:
            (loss, aux), grads = grad_fn(params, batch, rng)
            return loss, aux, grads
        micro = jax.tree_util.tree_map(
            lambda x: x.reshape((grad_accum_steps, -1) + x.shape[1:]), batch
        )

        def body(carry, inputs):
            index, micro_batch = inputs
            (loss, aux), grads = grad_fn(params, micro_batch, jax.random.fold_in(rng, index))
            total = jax.tree_util.tree_map(jnp.add, carry, (loss, aux, grads))
            return total, None

        first = jax.tree_util.tree_map(lambda x: x[0], micro)
        shapes = jax.eval_shape(lambda: grad_fn(params, first, rng))
        zeros = jax.tree_util.tree_map(jnp.zeros_like, (shapes[0][0], shapes[0][1], shapes[1]))
        total, _ = jax.lax.scan(body, zeros, (jnp.arange(grad_accum_steps), micro))
        return jax.tree_util.tree_map(lambda x: x / grad_accum_steps, total)

    def train_step(state, batch):
        rng = jax.random.fold_in(base_rng, state["step"])
        loss, aux, grads = loss_and_grads(state["params"], batch, rng)
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, new_opt = tx.update(grads, state["opt_state"], state["params"])
        new_params = optax.apply_updates(state["params"], updates)
        if non_finite == "skip":
            keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
            new_params = jax.tree_util.tree_map(keep, new_params, state["params"])
            new_opt = jax.tree_util.tree_map(keep, new_opt, state["opt_state"])
        metrics = dict(
            aux, grad_norm=grad_norm, finite=finite, learning_rate=lr_schedule(state["step"])
        )
        return {"step": state["step"] + 1, "params": new_params, "opt_state": new_opt}, metrics

    batch_shardings = {
        "encoder_input_tokens": partitioner.batch_sharding(3),
        "decoder_input_tokens": partitioner.batch_sharding(3),
        "decoder_target_tokens": partitioner.batch_sharding(3),
        "label": partitioner.batch_sharding(2),
        "mask": partitioner.batch_sharding(2),
    }
    state_shardings = jax.tree_util.tree_map(lambda x: x.sharding, state)
    step_fn = jax.jit(
        train_step,
        in_shardings=(state_shardings, batch_shardings),
        out_shardings=(state_shardings, partitioner.replicated()),
        donate_argnums=(0,),
    )
    return step_fn, batch_shardings
