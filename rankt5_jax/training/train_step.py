"""The compiled, sharded, donated training step (T5X's `trainer.py` concern)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from rankt5_jax.modeling.models import BaseRankingModel
from rankt5_jax.modeling.partitioning import Partitioner
from rankt5_jax.training import optimizers


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

    A model that trains only some params (`model.trainable_prefixes`, UR2N's XTR layer) gets
    gradients w.r.t. those only; `tx` is wrapped by `optimizers.for_model` (as
    `train_state.init_train_state` wraps it) and the frozen params are passed through as they
    are. The batch's features and ranks are `model.batch_features`.
    """
    base_rng = jax.random.PRNGKey(seed + 1)
    prefixes = model.trainable_prefixes
    tx = optimizers.for_model(tx, model)

    def loss_and_grads(params, frozen, batch, rng):
        """Loss, metrics and gradients w.r.t. `params` (the trained ones, with `frozen`)."""

        def objective(trained, micro_batch, micro_rng):
            full = trained if frozen is None else optimizers.join_params(trained, frozen)
            return model.loss_fn(full, micro_batch, micro_rng)

        grad_fn = jax.value_and_grad(objective, has_aux=True)
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
        params = state["params"]
        if prefixes is None:
            loss, aux, grads = loss_and_grads(params, None, batch, rng)
            updates, new_opt = tx.update(grads, state["opt_state"], params)
            new_params = optax.apply_updates(params, updates)
        else:
            trained, frozen = optimizers.split_params(params, prefixes)
            loss, aux, grads = loss_and_grads(trained, frozen, batch, rng)
            # The frozen part's zero gradients only complete the tree: `set_to_zero` ignores
            # them and its updates are not applied, so XLA computes neither.
            zeros = jax.tree_util.tree_map(jnp.zeros_like, frozen)
            full = optimizers.join_params(grads, zeros)
            updates, new_opt = tx.update(full, state["opt_state"], params)
            moved = optax.apply_updates(trained, optimizers.split_params(updates, prefixes)[0])
            new_params = optimizers.join_params(moved, frozen)
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        if non_finite == "skip":
            keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
            new_params = jax.tree_util.tree_map(keep, new_params, state["params"])
            new_opt = jax.tree_util.tree_map(keep, new_opt, state["opt_state"])
        metrics = dict(
            aux, grad_norm=grad_norm, finite=finite, learning_rate=lr_schedule(state["step"])
        )
        return {"step": state["step"] + 1, "params": new_params, "opt_state": new_opt}, metrics

    batch_shardings = {
        key: partitioner.batch_sharding(rank) for key, rank in model.batch_features.items()
    }
    state_shardings = jax.tree_util.tree_map(lambda x: x.sharding, state)
    step_fn = jax.jit(
        train_step,
        in_shardings=(state_shardings, batch_shardings),
        out_shardings=(state_shardings, partitioner.replicated()),
        donate_argnums=(0,),
    )
    return step_fn, batch_shardings
