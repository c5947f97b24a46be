"""One process of a multi-process JAX job on this machine, for `test_multiprocess.py`.

    python mp_worker.py PLAN.json PROCESS_ID

PLAN.json: `{"coordinator": "127.0.0.1:PORT", "num_processes": N, "data_dir": DIR, "out": DIR,
"tasks": [...]}`. The process joins the job (`multihost.initialize`, as `rankt5 ... --multihost`
does), runs the tasks in order (every process runs every task: SPMD) and writes what the test
compares under `out` (`<name>.npz` / `<name>.json`; per-process files end in `.p<I>`). The
parent sets XLA_FLAGS (devices per process) and kills the whole process group on a time-out.

Tasks (`kind`):
  train   `setup.make_model` + `train.train` on a mesh (the test's one-process reference runs
          the same `train_tiny`); params and losses from process 0.
  cli     `rankt5 <argv...> --multihost --coordinator_address ... --process_id I`.
  wait    until `path` exists (the test's one-process work that a later task reads).
Every task records the training batch rows this process fed (`recording`), per process.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time

import numpy as np

LENGTHS = {"inputs": 32, "targets": 1}
BATCH_SIZE = 8
SMOKE = dict(num_queries=48, dev_queries=8, top_k=12, vocab_size=300, list_size=6)


def smoke_data(data_dir: str) -> dict:
    from rankt5_jax.training import smoke

    return smoke.smoke_data(data_dir, **SMOKE)


def partitioner(mesh):
    from rankt5_jax.modeling.partitioning import Partitioner

    data_axis, model_axis, dims = mesh
    return Partitioner(data_axis, model_axis, parameter_partitioning_dims=dims)


def train_tiny(data, model_dir, steps, mesh, stop_after=None, data_shards=None):
    """The tiny RankT5-EncDec with SGD (mesh-equality: no adaptive-optimizer noise), checkpoints
    every 3 steps; the same call in every process count."""
    from rankt5_jax.training import optimizers, setup
    from rankt5_jax.training import train as train_lib

    model = setup.make_model(
        variant="encdec",
        size="tiny",
        vocab_path=data["vocab"],
        dropout_rate=0.0,
        dtype="float32",
        loss="softmax",
    )
    return train_lib.train(
        model_dir=str(model_dir),
        model=model,
        vocab_path=data["vocab"],
        train_task=data["train_task"],
        train_steps=steps,
        task_feature_lengths=LENGTHS,
        batch_size=BATCH_SIZE,
        partitioner=partitioner(mesh),
        optimizer=optimizers.make_optimizer("sgd", learning_rate=0.05),
        checkpoint_period=3,
        log_period=1,
        stop_after_steps=stop_after,
        progress=False,
        data_shards=data_shards,
    )


@contextlib.contextmanager
def recording():
    """Records the `encoder_input_tokens` rows this process feeds each training step (the
    loop's `TrainStream`, wrapped): yields the list the steps are appended to."""
    from rankt5_jax.training import setup
    from rankt5_jax.training import train as train_lib

    recorded: list[np.ndarray] = []

    class RecordingStream(setup.TrainStream):
        def __next__(self):
            batch = super().__next__()
            recorded.append(batch["encoder_input_tokens"].copy())
            return batch

    original = train_lib.TrainStream
    train_lib.TrainStream = RecordingStream
    try:
        yield recorded
    finally:
        train_lib.TrainStream = original


def flat_params(params) -> dict[str, np.ndarray]:
    import flax

    return {
        "/".join(key): np.asarray(value)
        for key, value in flax.traverse_util.flatten_dict(params).items()
    }


def run_task(data, task, plan, process_id):
    if task["kind"] == "train":
        return train_tiny(
            data,
            task["model_dir"],
            task["steps"],
            tuple(task["mesh"]),
            task.get("stop_after"),
            task.get("data_shards"),
        )
    if task["kind"] == "cli":
        from rankt5_jax import cli

        argv = task["argv"] + [
            "--multihost",
            f"--coordinator_address={plan['coordinator']}",
            f"--num_processes={plan['num_processes']}",
            f"--process_id={process_id}",
        ]
        try:
            status = cli.main(argv)
        finally:
            import gin

            gin.clear_config()  # one command per process, as from a shell
        if status != 0:
            raise SystemExit(f"rankt5 {' '.join(argv)} exited with {status}")
        return None
    if task["kind"] == "wait":  # for a file the test writes meanwhile
        deadline = time.time() + task.get("timeout_s", 240)
        while not os.path.exists(task["path"]):
            if time.time() > deadline:
                raise SystemExit(f"{task['path']} did not appear")
            time.sleep(0.2)
        return None
    raise ValueError(f"unknown task kind {task['kind']!r}")


def main(plan_path: str, process_id: int) -> None:
    started = time.time()
    with open(plan_path) as handle:
        plan = json.load(handle)
    from rankt5_jax.modeling import multihost

    multihost.initialize(plan["coordinator"], plan["num_processes"], process_id, timeout_s=60)
    import jax

    print(f"worker {process_id}: joined at {time.time() - started:.1f}s", flush=True)
    data = smoke_data(plan["data_dir"])
    out = plan["out"]
    for task in plan["tasks"]:
        name, kind = task["name"], task["kind"]
        with recording() as fed:
            result = run_task(data, task, plan, process_id)
        if fed:
            np.save(os.path.join(out, f"{name}.fed.p{process_id}.npy"), np.stack(fed))
        if kind == "train":
            params = flat_params(multihost.to_host(result.params))  # a collective: everyone
        if kind == "train" and process_id == 0:
            np.savez(os.path.join(out, f"{name}.npz"), **params)
            losses = {int(h["step"]): h["loss"] for h in result.history}
            with open(os.path.join(out, f"{name}.json"), "w") as handle:
                json.dump({"step": result.step, "losses": losses}, handle)
        print(f"worker {process_id}: {name} done at {time.time() - started:.1f}s", flush=True)
    with open(os.path.join(out, f"done.p{process_id}"), "w") as handle:
        handle.write(f"{jax.process_index()} of {jax.process_count()}: {len(jax.devices())}\n")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
