"""Our model directories: the spec, the vocabulary and orbax checkpoints of the training state.

Layout of a model directory (what `rankt5 train` writes and `Ranker.load` reads):

  rankt5.json            model spec (variant, T5 config, loss, token ids): `registry.build_model`
  spiece.model           the vocabulary
  checkpoints/<step>/    orbax: `params`, `opt_state`, `meta` (step, score)
  data_state/<step>/     tf.data iterator state for exact resume (written before `checkpoints/<step>`):
                         `data` (one data shard) or `data-<s>-of-<S>` (one per shard of S)
  best_checkpoint.json   the step with the best dev score (with `keep_best_by`)
  train/, eval/          TensorBoard event files
  eval_runs/step_<N>.run TREC runs of the dev candidates

A finished `checkpoints/<step>` always has its data position: the data state is written first.

A model directory may be a bucket path (`gs://bucket/model`, see `data.paths`): the spec, the
vocabulary and the best step go through `data.paths`, orbax writes the checkpoints there itself
(etils.epath + tensorstore). TensorFlow writes the data state only to local paths that
its GCS client cannot be pointed elsewhere: for a bucket, `data_state_prefix` names a local
staging folder (`paths.cache_dir`), `save_state` uploads it before the checkpoint, and
`recorded_data_shards` downloads a step's data state there before a resume reads it.

Several processes (multi-host): all of them call `save_state` (orbax writes each process's
slices and finalises once all are written); each data shard's state is written by one process;
files outside orbax (spec, vocabulary, best step) are written by process 0. A checkpoint
restores onto any mesh and number of processes: `restore_state` reads into the current mesh's
shardings.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rankt5_jax.data import atomic, paths
from rankt5_jax.errors import CheckpointError, ConfigError
from rankt5_jax.modeling.network import T5Config

SPEC_FILE = "rankt5.json"  # marks a rankt5_jax model directory
VOCAB_FILE = "spiece.model"
BEST_FILE = "best_checkpoint.json"


def write_spec(model_dir: str, spec: dict[str, Any]) -> None:
    spec = dict(spec)
    if not isinstance(spec["t5"], dict):
        spec["t5"] = spec["t5"].to_dict()
    path = paths.join(model_dir, SPEC_FILE)
    atomic.write_json(path, spec, indent=2, sort_keys=True)  # readers never see half a spec


def read_spec(model_dir: str) -> dict[str, Any]:
    path = paths.join(model_dir, SPEC_FILE)
    try:
        with paths.open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot read the model spec ({err})") from err


def _config(spec: dict[str, Any]) -> T5Config | None:
    config = spec.get("t5")
    if config is None or isinstance(config, T5Config):
        return config
    try:
        return T5Config.from_dict(config)
    except (TypeError, ValueError):
        return None


def write_model_files(model_dir: str, spec: dict[str, Any], vocab_path: str) -> None:
    """Writes the spec and copies the vocabulary; refuses a directory holding another model.

    Every process checks; process 0 writes."""
    spec_path = paths.join(model_dir, SPEC_FILE)
    if paths.isfile(spec_path):
        existing = read_spec(model_dir)
        # Compared as configs: a spec written before a T5Config field existed has its default.
        if existing.get("variant") != spec["variant"] or _config(existing) != _config(spec):
            raise ConfigError(
                f"{model_dir} holds a different model ({existing.get('variant')}); "
                "use a new model_dir"
            )
    if jax.process_index() != 0:
        return
    write_spec(model_dir, spec)
    target = paths.join(model_dir, VOCAB_FILE)
    if paths.abspath(vocab_path) != paths.abspath(target):
        atomic.copy_file(vocab_path, target)


def checkpoint_manager(model_dir: str, read_only: bool = False):
    paths.configure()  # before orbax's epath picks the backend of a gs:// path
    import orbax.checkpoint as ocp

    return ocp.CheckpointManager(
        paths.abspath(paths.join(model_dir, "checkpoints")),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=None,
            create=not read_only,
            read_only=read_only,
            enable_async_checkpointing=False,
        ),
        item_names=("params", "opt_state", "meta"),
    )


def load_model_dir(
    model_dir: str, step: int | None = None, abstract: Any = None
) -> tuple[dict, Any]:
    """-> (spec, params as numpy) of a training output directory (latest step by default).

    `abstract`: the params' layout (`jax.ShapeDtypeStruct`s with shardings); then they are
    restored as jax arrays laid out so, orbax reading each device's slices only."""
    import orbax.checkpoint as ocp

    spec = read_spec(model_dir)
    ckpt_dir = paths.join(model_dir, "checkpoints")
    if not paths.isdir(ckpt_dir):
        raise CheckpointError(f"{model_dir}: no checkpoints/ directory")
    from absl import logging as absl_logging

    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)  # orbax warns that read-only is read-only
    try:
        manager = checkpoint_manager(model_dir, read_only=True)
    finally:
        absl_logging.set_verbosity(verbosity)
    step = manager.latest_step() if step is None else step
    if step is None:
        raise CheckpointError(f"{model_dir}: no finished checkpoint")
    try:
        target = abstract if abstract is not None else _numpy_target(ckpt_dir, step)
        restored = manager.restore(
            step, args=ocp.args.Composite(params=ocp.args.StandardRestore(target))
        )
    except Exception as err:
        raise CheckpointError(f"{model_dir}: cannot restore step {step}: {err}") from err
    if abstract is not None:
        return spec, restored["params"]
    params = jax.tree_util.tree_map(np.asarray, restored["params"])
    return spec, params


def _numpy_target(ckpt_dir: str, step: int) -> Any:
    """The saved params' shapes as numpy arrays: orbax then restores them as numpy, whatever
    mesh, devices and number of processes wrote them (without a target it refuses another
    topology than the writer's)."""
    import orbax.checkpoint as ocp

    metadata = ocp.StandardCheckpointer().metadata(paths.join(ckpt_dir, str(step), "params"))
    tree = getattr(metadata, "item_metadata", metadata)
    tree = getattr(tree, "tree", tree)
    return jax.tree_util.tree_map(lambda leaf: np.zeros(leaf.shape, leaf.dtype), tree)


def restore_state(manager, step: int, state: dict) -> dict:
    """The checkpoint of `step`, laid out as `state` (arrays or `abstract_train_state`)."""
    import orbax.checkpoint as ocp

    def abstract(tree):
        return jax.tree_util.tree_map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree
        )

    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            params=ocp.args.StandardRestore(abstract(state["params"])),
            opt_state=ocp.args.StandardRestore(abstract(state["opt_state"])),
            meta=ocp.args.JsonRestore(),
        ),
    )
    if int(restored["meta"]["step"]) != step:
        raise CheckpointError(f"checkpoint {step} records step {restored['meta']['step']}")
    return {
        "step": jax.device_put(jnp.asarray(step, jnp.int32), state["step"].sharding),
        "params": restored["params"],
        "opt_state": restored["opt_state"],
    }


def data_state_prefix(model_dir: str, step: int, shard: int = 0, num_shards: int = 1) -> str:
    """Where the tf.data iterator state of data shard `shard` of `num_shards` at `step` goes."""
    name = "data" if num_shards == 1 else f"data-{shard:05d}-of-{num_shards:05d}"
    return os.path.join(_data_state_dir(model_dir, step), name)


def _data_state_dir(model_dir: str, step: int) -> str:
    """The local folder TensorFlow writes and reads `step`'s data state in: in the model
    directory, or for a bucket its local staging copy."""
    if paths.is_remote(model_dir):
        return os.path.join(paths.cache_dir(model_dir, "data-state"), str(step))
    return os.path.join(model_dir, "data_state", str(step))


def recorded_data_shards(model_dir: str, step: int) -> int | None:
    """The number of data shards whose position was saved at `step` (None: no data state).
    For a bucket model directory, first downloads the step's data state to its local copy."""
    folder = _data_state_dir(model_dir, step)
    if paths.is_remote(model_dir):
        paths.download_tree(paths.join(model_dir, "data_state", str(step)), folder)
    if os.path.isfile(os.path.join(folder, "data.index")):
        return 1
    counts = set()
    for name in os.listdir(folder) if os.path.isdir(folder) else ():
        match = re.fullmatch(r"data-\d{5}-of-(\d{5})\.index", name)
        if match:
            counts.add(int(match.group(1)))
    if len(counts) > 1:
        raise CheckpointError(f"{folder}: data positions of {sorted(counts)} shards side by side")
    return counts.pop() if counts else None


def save_state(
    manager, model_dir: str, step: int, state: dict, write_data: Callable[[int], None], score
) -> None:
    """Saves `step`: first the data position (`write_data(step)` writes this process's data
    shards, see `data_state_prefix`), then the orbax checkpoint; call it on every process."""
    import orbax.checkpoint as ocp

    folder = _data_state_dir(model_dir, step)
    os.makedirs(folder, exist_ok=True)
    write_data(step)
    if paths.is_remote(model_dir):  # each process uploads the shards it wrote
        paths.upload_tree(folder, paths.join(model_dir, "data_state", str(step)))
        paths.rmtree(folder, ignore_errors=True)
    pause = float(os.environ.get("RANKT5_FAULT_PAUSE_IN_SAVE", "0"))
    if pause:  # fault injection for the kill-and-resume tests: a window inside a save
        print(f"checkpoint: saving step {step}", flush=True)
        time.sleep(pause)
    manager.save(
        step,
        args=ocp.args.Composite(
            params=ocp.args.StandardSave(state["params"]),
            opt_state=ocp.args.StandardSave(state["opt_state"]),
            meta=ocp.args.JsonSave({"step": step, "score": score}),
        ),
        force=True,
    )
    manager.wait_until_finished()


def save_params(model_dir: str, step: int, params: Any) -> None:
    """Saves `params` alone as checkpoint `step` of `model_dir` (no optimizer state:
    `Ranker.load` and `init_checkpoint` read it; training cannot resume from it)."""
    import orbax.checkpoint as ocp

    manager = checkpoint_manager(model_dir)
    manager.save(
        step,
        args=ocp.args.Composite(
            params=ocp.args.StandardSave(params),
            meta=ocp.args.JsonSave({"step": step, "score": None}),
        ),
        force=True,
    )
    manager.wait_until_finished()
    manager.close()


def read_best(model_dir: str):
    path = paths.join(model_dir, BEST_FILE)
    if paths.isfile(path):
        with paths.open(path) as handle:
            data = json.load(handle)
        return int(data["step"]), float(data["score"])
    return None


def write_best(model_dir: str, best) -> None:
    if jax.process_index() != 0:
        return
    path = paths.join(model_dir, BEST_FILE)
    atomic.write_json(path, {"step": best[0], "score": best[1]})


def prune(manager, keep: int, best_step: int | None, model_dir: str) -> None:
    steps = sorted(manager.all_steps())
    keep_steps = set(steps[-keep:]) if keep > 0 else set(steps)
    if best_step is not None:
        keep_steps.add(best_step)
    for step in steps:
        if step not in keep_steps:
            manager.delete(step)  # every process calls it; orbax deletes once
            if jax.process_index() == 0:
                paths.rmtree(paths.join(model_dir, "data_state", str(step)), ignore_errors=True)
