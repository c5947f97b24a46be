"""Our model directories: the spec, the vocabulary and orbax checkpoints of the training state.

Layout of a model directory (what `rankt5 train` writes and `Ranker.load` reads):

  rankt5.json            model spec (variant, T5 config, loss, token ids): `registry.build_model`
  spiece.model           the vocabulary
  checkpoints/<step>/    orbax: `params`, `opt_state`, `meta` (step, score)
  data_state/<step>/     tf.data iterator state for exact resume (written before `checkpoints/<step>`)
  best_checkpoint.json   the step with the best dev score (with `keep_best_by`)
  train/, eval/          TensorBoard event files
  eval_runs/step_<N>.run TREC runs of the dev candidates

A finished `checkpoints/<step>` always has its data position: the data state is written first.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rankt5_jax.errors import CheckpointError, ConfigError
from rankt5_jax.modeling.network import T5Config

SPEC_FILE = "rankt5.json"  # marks a rankt5_jax model directory
VOCAB_FILE = "spiece.model"
BEST_FILE = "best_checkpoint.json"


def write_spec(model_dir: str, spec: dict[str, Any]) -> None:
    spec = dict(spec)
    if not isinstance(spec["t5"], dict):
        spec["t5"] = spec["t5"].to_dict()
    with open(os.path.join(model_dir, SPEC_FILE), "w") as handle:
        json.dump(spec, handle, indent=2, sort_keys=True)


def read_spec(model_dir: str) -> dict[str, Any]:
    path = os.path.join(model_dir, SPEC_FILE)
    try:
        with open(path) as handle:
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
    """Writes the spec and copies the vocabulary; refuses a directory holding another model."""
    spec_path = os.path.join(model_dir, SPEC_FILE)
    if os.path.isfile(spec_path):
        existing = read_spec(model_dir)
        # Compared as configs: a spec written before a T5Config field existed has its default.
        if existing.get("variant") != spec["variant"] or _config(existing) != _config(spec):
            raise ConfigError(
                f"{model_dir} holds a different model ({existing.get('variant')}); "
                "use a new model_dir"
            )
    write_spec(model_dir, spec)
    target = os.path.join(model_dir, VOCAB_FILE)
    if os.path.abspath(vocab_path) != os.path.abspath(target):
        shutil.copyfile(vocab_path, target)


def checkpoint_manager(model_dir: str, read_only: bool = False):
    import orbax.checkpoint as ocp

    return ocp.CheckpointManager(
        os.path.abspath(os.path.join(model_dir, "checkpoints")),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=None,
            create=not read_only,
            read_only=read_only,
            enable_async_checkpointing=False,
        ),
        item_names=("params", "opt_state", "meta"),
    )


def load_model_dir(model_dir: str, step: int | None = None) -> tuple[dict, Any]:
    """-> (spec, params as numpy) of a training output directory (latest step by default)."""
    import orbax.checkpoint as ocp

    spec = read_spec(model_dir)
    ckpt_dir = os.path.join(model_dir, "checkpoints")
    if not os.path.isdir(ckpt_dir):
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
        restored = manager.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore()))
    except Exception as err:
        raise CheckpointError(f"{model_dir}: cannot restore step {step}: {err}") from err
    params = jax.tree_util.tree_map(np.asarray, restored["params"])
    return spec, params


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


def save_state(manager, model_dir: str, step: int, state: dict, data_ckpt, score) -> None:
    import orbax.checkpoint as ocp

    data_dir = os.path.join(model_dir, "data_state", str(step))
    if jax.process_index() == 0:
        os.makedirs(data_dir, exist_ok=True)
        data_ckpt.write(os.path.join(data_dir, "data"))
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


def read_best(model_dir: str):
    path = os.path.join(model_dir, BEST_FILE)
    if os.path.isfile(path):
        with open(path) as handle:
            data = json.load(handle)
        return int(data["step"]), float(data["score"])
    return None


def write_best(model_dir: str, best) -> None:
    path = os.path.join(model_dir, BEST_FILE)
    with open(path + ".tmp", "w") as handle:
        json.dump({"step": best[0], "score": best[1]}, handle)
    os.replace(path + ".tmp", path)


def prune(manager, keep: int, best_step: int | None, model_dir: str) -> None:
    steps = sorted(manager.all_steps())
    keep_steps = set(steps[-keep:]) if keep > 0 else set(steps)
    if best_step is not None:
        keep_steps.add(best_step)
    for step in steps:
        if step not in keep_steps:
            manager.delete(step)
            shutil.rmtree(os.path.join(model_dir, "data_state", str(step)), ignore_errors=True)
