"""T5X checkpoints in: the legacy layout (a msgpack `checkpoint` file whose array leaves are
TensorStore zarr specs, one directory per array named by dotted path,
`target.encoder.layers_0.attention.key.kernel`) and current t5x's Orbax layout (`checkpoint_N/state/`
restored with orbax, params under `target`). With `lazy=True` the trees hold `formats.TensorRef`
(zarr arrays opened, nothing read) or `formats.OrbaxRef` leaves (`restore_orbax_refs` reads them
into their target shardings)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import flax
import numpy as np

from rankt5_jax.checkpoints.formats import OrbaxRef, Params, TensorRef
from rankt5_jax.errors import CheckpointError


def _restore_legacy_leaf(ckpt_dir: str, leaf: Any, lazy: bool = False) -> Any:
    if isinstance(leaf, dict) and "driver" in leaf and "kvstore" in leaf:
        import tensorstore as ts

        spec = json.loads(json.dumps(leaf))
        kvstore = spec["kvstore"]
        if kvstore.get("driver") in ("file", "gfile"):
            kvstore["driver"] = "file"
            if not os.path.isabs(kvstore["path"]):
                kvstore["path"] = os.path.join(ckpt_dir, kvstore["path"])
        try:
            store = ts.open(spec, open=True).result()
            if lazy:  # opened (metadata read); regions are read on demand
                return TensorRef(store, name=f"{ckpt_dir}: {kvstore.get('path')}")
            return store.read().result()
        except Exception as err:
            raise CheckpointError(
                f"{ckpt_dir}: cannot read array {kvstore.get('path')}: {err}"
            ) from err
    if lazy:
        return TensorRef(np.asarray(leaf), name=f"{ckpt_dir}: an array in the msgpack file")
    return leaf


def _is_spec(value: Any) -> bool:
    return isinstance(value, dict) and "driver" in value and "kvstore" in value


def _map_tree(tree: Any, fn) -> Any:
    if _is_spec(tree) or not isinstance(tree, dict):
        return fn(tree)
    return {key: _map_tree(value, fn) for key, value in tree.items()}


def load_t5x_legacy(ckpt_dir: str, lazy: bool = False) -> Params:
    """Restores `target` params from a legacy T5X checkpoint directory (msgpack + zarr);
    `lazy`: as `TensorRef`s over the opened zarr arrays (each region read on demand)."""
    path = os.path.join(ckpt_dir, "checkpoint")
    if not os.path.isfile(path):
        raise CheckpointError(f"{ckpt_dir}: no T5X 'checkpoint' file")
    try:
        with open(path, "rb") as handle:
            contents = flax.serialization.msgpack_restore(handle.read())
    except Exception as err:
        raise CheckpointError(f"{path}: corrupt msgpack ({err})") from err
    if not isinstance(contents, dict):
        raise CheckpointError(f"{path}: unexpected contents")
    state = contents.get("optimizer", contents) if contents.get("version", 0) else contents
    if "target" not in state:
        raise CheckpointError(f"{path}: no 'target' params in checkpoint")
    target = _map_tree(state["target"], lambda leaf: _restore_legacy_leaf(ckpt_dir, leaf, lazy))
    return target if lazy else _as_float32(target)


def load_t5x_orbax(ckpt_dir: str, lazy: bool = False) -> Params:
    """Restores `target` params from a current (Orbax) T5X checkpoint `checkpoint_N/`; `lazy`:
    `OrbaxRef` leaves from the checkpoint's metadata (nothing read)."""
    import orbax.checkpoint as ocp

    state_dir = os.path.join(ckpt_dir, "state")
    if not os.path.isdir(state_dir):
        state_dir = ckpt_dir
    state_dir = os.path.abspath(state_dir)
    if lazy:
        try:
            tree = ocp.PyTreeCheckpointer().metadata(state_dir).item_metadata.tree
        except Exception as err:
            raise CheckpointError(
                f"{state_dir}: cannot read Orbax T5X checkpoint metadata ({err})"
            ) from err
        if not isinstance(tree, Mapping) or "target" not in tree:
            raise CheckpointError(f"{state_dir}: no 'target' params in checkpoint")

        def refs(node: Any, path: tuple[str, ...]) -> Any:
            if isinstance(node, Mapping):
                return {key: refs(value, path + (key,)) for key, value in node.items()}
            return OrbaxRef(state_dir, path, tuple(int(n) for n in node.shape))

        return refs(tree["target"], ("target",))
    try:
        restored = ocp.PyTreeCheckpointer().restore(state_dir)
    except Exception as err:
        raise CheckpointError(f"{state_dir}: cannot restore Orbax T5X checkpoint ({err})") from err
    if "target" not in restored:
        raise CheckpointError(f"{state_dir}: no 'target' params in checkpoint")
    return _as_float32(restored["target"])


def restore_orbax_refs(refs: Sequence[OrbaxRef], targets: Sequence[Any]) -> list[Any]:
    """Restores `refs` (of one or more checkpoints) as jax arrays laid out as `targets`
    (`jax.ShapeDtypeStruct`s with shardings): orbax reads each device's slices only."""
    import orbax.checkpoint as ocp

    by_directory: dict[str, list[int]] = {}
    for i, ref in enumerate(refs):
        by_directory.setdefault(ref.directory, []).append(i)
    out: list[Any] = [None] * len(refs)
    for directory, indices in by_directory.items():
        item: dict[str, Any] = {}
        for i in indices:
            node = item
            for key in refs[i].path[:-1]:
                node = node.setdefault(key, {})
            node[refs[i].path[-1]] = targets[i]
        try:
            restored = ocp.PyTreeCheckpointer().restore(
                directory,
                args=ocp.args.PyTreeRestore(
                    item=item,
                    restore_args=ocp.checkpoint_utils.construct_restore_args(item),
                    partial_restore=True,
                ),
            )
        except Exception as err:
            raise CheckpointError(f"{directory}: cannot restore Orbax checkpoint ({err})") from err
        for i in indices:
            node = restored
            for key in refs[i].path:
                node = node[key]
            out[i] = node
    return out


def _as_float32(tree: Any) -> Any:
    def cast(leaf):
        array = np.asarray(leaf)
        return array.astype(np.float32) if array.dtype.kind in "fV" else array

    return _map_tree(tree, cast)


def t5x_variant(params: Params, variant: str | None, path: str) -> str:
    """The variant of T5X params: `enc` exactly when a `score_head` exists (checked if given)."""
    has_head = "score_head" in params
    found = variant or ("enc" if has_head else "encdec")
    if found == "enc" and not has_head:
        raise CheckpointError(f"{path} has no score_head: not a RankT5-Enc checkpoint")
    return found


def is_t5x_checkpoint(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "checkpoint")) or os.path.isdir(
        os.path.join(path, "state")
    )


def load_t5x(ckpt_dir: str, lazy: bool = False) -> Params:
    if os.path.isfile(os.path.join(ckpt_dir, "checkpoint")):
        return load_t5x_legacy(ckpt_dir, lazy)
    return load_t5x_orbax(ckpt_dir, lazy)
