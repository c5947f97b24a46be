"""Device mesh and shardings: T5X's logical axis names mapped onto a `data` x `model` mesh.

* `data` axis: the batch of lists is split over it; with 2-D parameter partitioning the `embed`
  dimension of parameters is split over it too (FSDP-like, as T5X's
  `parameter_partitioning_dims=2`).
* `model` axis: heads, MLP and vocabulary dimensions of parameters (1-D model parallelism).

A dimension that does not divide evenly by its mesh axis stays replicated (tiny test models), so
any model runs on any mesh. Multi-host: `rankt5 train --multihost` calls
`jax.distributed.initialize()` on every host first (run_tpu.sh does).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import flax.linen.partitioning as nn_partitioning
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import gin
from rankt5_jax.errors import ConfigError

LogicalRules = Sequence[tuple[str, str | None]]


def standard_logical_axis_rules(parameter_partitioning_dims: int = 1) -> list[tuple[str, Any]]:
    """T5X's standard rules (activation dims 1) for 1-D or 2-D parameter partitioning.

    `score` is the RankT5-Enc head's output axis (size 1): never partitioned.
    """
    if parameter_partitioning_dims not in (1, 2):
        raise ConfigError("parameter_partitioning_dims must be 1 or 2")
    rules: list[tuple[str, Any]] = [
        ("batch", "data"),
        ("vocab", "model"),
        ("mlp", "model"),
        ("heads", "model"),
        ("joined_kv", "model"),
        ("kv", None),
        ("length", None),
        ("relpos_buckets", None),
        ("score", None),
    ]
    rules.append(("embed", "data") if parameter_partitioning_dims == 2 else ("embed", None))
    return rules


@gin.configurable
class Partitioner:
    """Builds the mesh and the shardings of params, optimizer state and batches.

    Args:
      data_axis_size / model_axis_size: mesh shape; -1 infers one from the device count.
      parameter_partitioning_dims: 1 (model parallel on `model`) or 2 (also `embed` on `data`).
      devices: defaults to all devices.
    """

    def __init__(
        self,
        data_axis_size: int = -1,
        model_axis_size: int = 1,
        parameter_partitioning_dims: int = 1,
        devices: Sequence[jax.Device] | None = None,
    ):
        devices = list(devices if devices is not None else jax.devices())
        count = len(devices)
        if data_axis_size == -1 and model_axis_size == -1:
            raise ConfigError("at most one of data_axis_size/model_axis_size may be -1")
        if data_axis_size == -1:
            data_axis_size = count // model_axis_size
        if model_axis_size == -1:
            model_axis_size = count // data_axis_size
        if data_axis_size * model_axis_size != count:
            raise ConfigError(
                f"mesh {data_axis_size}x{model_axis_size} does not match {count} devices"
            )
        grid = np.asarray(devices, dtype=object).reshape(data_axis_size, model_axis_size)
        self.mesh = Mesh(grid, ("data", "model"))
        self.rules = standard_logical_axis_rules(parameter_partitioning_dims)

    @property
    def data_size(self) -> int:
        return self.mesh.shape["data"]

    def _spec_for(self, logical: PartitionSpec, shape: tuple[int, ...]) -> PartitionSpec:
        mesh_axes = nn_partitioning.logical_to_mesh_axes(tuple(logical), self.rules)
        fixed = []
        for dim, axis in zip(shape, tuple(mesh_axes) + (None,) * (len(shape) - len(mesh_axes))):
            if axis is not None and dim % self.mesh.shape[axis] != 0:
                axis = None  # uneven: replicate this dimension
            fixed.append(axis)
        return PartitionSpec(*fixed)

    def params_shardings(self, params: Any, params_axes: Any) -> Any:
        """NamedShardings for a params tree from its `params_axes` collection."""
        import flax

        logical = flax.core.unfreeze(nn_partitioning.get_axis_names(params_axes))
        params = flax.core.unfreeze(params)
        return jax.tree_util.tree_map(
            lambda spec, value: NamedSharding(self.mesh, self._spec_for(spec, np.shape(value))),
            logical,
            params,
            is_leaf=lambda x: isinstance(x, PartitionSpec),
        )

    def batch_sharding(self, ndim: int) -> NamedSharding:
        """Leading (batch) dimension on `data`, the rest replicated."""
        return NamedSharding(self.mesh, PartitionSpec("data", *([None] * (ndim - 1))))

    def list_shardings(self) -> tuple[NamedSharding, NamedSharding]:
        """Tokens `[B, L, T]` and mask `[B, L]` of whole candidate lists: the candidates (axis 1)
        on `data`, so one long list spreads over the data axis."""
        return (
            NamedSharding(self.mesh, PartitionSpec(None, "data", None)),
            NamedSharding(self.mesh, PartitionSpec(None, "data")),
        )

    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    @contextlib.contextmanager
    def context(self):
        """Binds the mesh and the logical rules, so the model's `with_sharding_constraint`
        annotations apply while functions are traced."""
        with jax.set_mesh(self.mesh), nn_partitioning.axis_rules(self.rules):
            yield
