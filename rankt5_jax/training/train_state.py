"""The training state `{"step", "params", "opt_state"}` on the mesh: fresh, or abstract to restore into."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding

from rankt5_jax.checkpoints import loading
from rankt5_jax.errors import ConfigError
from rankt5_jax.modeling import multihost
from rankt5_jax.modeling.models import BaseRankingModel
from rankt5_jax.modeling.partitioning import Partitioner
from rankt5_jax.modeling.ur2n import xtr_layer_from_last
from rankt5_jax.training import optimizers


def _param_init(model: BaseRankingModel, partitioner: Partitioner, length: int):
    """(jitted `rng -> params` laid out by `params_axes`, abstract params, their shardings)."""
    shapes = {"encoder_input_tokens": (1, 1, length)}
    abstract = jax.eval_shape(
        lambda rng: model.get_initial_variables(rng, shapes), jax.random.PRNGKey(0)
    )
    shardings = partitioner.params_shardings(abstract["params"], abstract["params_axes"])
    init = jax.jit(
        lambda rng: model.get_initial_variables(rng, shapes)["params"], out_shardings=shardings
    )
    return init, abstract["params"], shardings


def _on_mesh(sharding, partitioner: Partitioner):
    """Every leaf of the training state gets a NamedSharding on the mesh, as the step's outputs
    have: a leaf left on one device (step, optimizer counts; everything on a 1-device mesh)
    would make the second step's inputs differ from the first's and compile the step twice."""
    if isinstance(sharding, NamedSharding) and sharding.mesh == partitioner.mesh:
        return sharding
    if sharding.is_fully_replicated:
        return partitioner.replicated()
    raise ConfigError(f"training state leaf with a sharding off the mesh: {sharding}")


def init_train_state(
    model: BaseRankingModel,
    tx: optax.GradientTransformation,
    partitioner: Partitioner,
    length: int,
    seed: int = 0,
    init_checkpoint: str | None = None,
    step: int = 0,
) -> dict:
    """`{"step", "params", "opt_state"}` laid out on the partitioner's mesh.

    Params are initialised from `seed` (float32, sharded by their `params_axes`), optionally
    overwritten by a pretrained checkpoint (ours, Hugging Face, T5X); the optimizer state starts
    fresh. Every leaf, scalars included, carries a sharding on the mesh, so the state can be
    passed to `make_train_step`'s function. To resume, restore into `abstract_train_state`
    instead (nothing initialised first).

    A model that trains only some params (`model.trainable_prefixes`) gets optimizer state for
    those only (`optimizers.for_model`). An XTR layer (`config.xtr_dim > 0`) the checkpoint
    lacks starts as a copy of the checkpoint's last encoder layer (UR2N), its projection fresh.
    """
    tx = optimizers.for_model(tx, model)
    init_params, _, param_shardings = _param_init(model, partitioner, length)
    params = init_params(jax.random.PRNGKey(seed))
    if init_checkpoint:
        loaded = loading.load_pretrained(init_checkpoint)
        host = multihost.to_host(params)  # gathered where params span processes
        merged, fresh = loading.merge_params(host, loaded, init_checkpoint)
        if model.config.xtr_dim and any(k.startswith("encoder/xtr_layer/") for k in fresh):
            merged = xtr_layer_from_last(merged, model.config)
            fresh = [k for k in fresh if not k.startswith("encoder/xtr_layer/")]
            print("init: XTR layer copied from the last encoder layer", flush=True)
        if fresh:
            print(f"init: {len(fresh)} params start fresh (e.g. {fresh[:3]})", flush=True)
        params = jax.device_put(merged, param_shardings)
    opt_state = jax.jit(tx.init)(params)
    state = {"step": jnp.asarray(step, jnp.int32), "params": params, "opt_state": opt_state}

    def on_mesh(value):
        sharding = _on_mesh(value.sharding, partitioner)
        return value if sharding is value.sharding else jax.device_put(value, sharding)

    return jax.tree_util.tree_map(on_mesh, state)


def abstract_train_state(
    model: BaseRankingModel,
    tx: optax.GradientTransformation,
    partitioner: Partitioner,
    length: int,
) -> dict:
    """`init_train_state`'s shapes, dtypes and shardings as `jax.ShapeDtypeStruct`s, without
    computing or allocating anything: what a resumed run restores into, so that resuming a
    large model holds one copy of its state, not a fresh one beside the restored one. The
    optimizer state's shardings are the ones its compiled `tx.init` gives (compiled, not run).
    """
    tx = optimizers.for_model(tx, model)
    _, abstract_params, param_shardings = _param_init(model, partitioner, length)

    def struct(leaf, sharding):
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)

    params = jax.tree_util.tree_map(struct, abstract_params, param_shardings)
    lowered = jax.jit(tx.init).lower(params)  # one trace: shapes, then compiled shardings
    opt_state = jax.tree_util.tree_map(
        lambda leaf, sharding: struct(leaf, _on_mesh(sharding, partitioner)),
        lowered.out_info,
        lowered.compile().output_shardings,
    )
    step = jax.ShapeDtypeStruct((), jnp.int32, sharding=partitioner.replicated())
    return {"step": step, "params": params, "opt_state": opt_state}
