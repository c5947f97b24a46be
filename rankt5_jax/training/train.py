"""The training loop (gin: `trainer.train`): data, steps, logging, dev evaluation, checkpoints.

Resume is exact: params, optimizer state, step and data position are restored; dropout RNG is
`fold_in(seed, step)`. A non-finite loss or gradient stops training with a message naming the step
(`non_finite="stop"`, the default: nothing is saved past the last good checkpoint) or skips that
update and counts it (`non_finite="skip"`). The model directory's layout is in
`checkpoints/model_dir.py`.

Several processes (`rankt5 train --multihost`; one per host, or one per GPU) run this same loop:
each feeds the batch rows its own devices hold (`setup.TrainStream`: the global batch is made of
`data_shards` shards, each process reads the shards its rows come from), every process takes part
in each checkpoint, and process 0 alone logs and writes the files outside orbax. The data shards,
not the processes, fix the data order, so a run resumes exactly on another number of processes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import warnings
from collections.abc import Mapping
from typing import Any

import jax

import gin
from rankt5_jax.checkpoints import model_dir as model_dir_lib
from rankt5_jax.errors import CheckpointError, ConfigError, NonFiniteError
from rankt5_jax.evaluation import measures as measures_lib
from rankt5_jax.modeling import multihost
from rankt5_jax.modeling.models import BaseRankingModel
from rankt5_jax.modeling.partitioning import Partitioner
from rankt5_jax.training.dev_eval import DevEvaluator
from rankt5_jax.training.optimizers import make_optimizer
from rankt5_jax.training.setup import TrainStream, shards_of_rows
from rankt5_jax.training.train_state import abstract_train_state, init_train_state
from rankt5_jax.training.train_step import make_train_step


@dataclasses.dataclass
class TrainResult:
    """`params`: numpy in one process; with several, the global `jax.Array`s as trained (every
    host gathering a large model would need its whole size in host memory; gather them with
    `modeling.multihost.to_host` where wanted)."""

    step: int
    params: Any
    history: list[dict[str, float]]
    eval_metrics: dict[str, float]
    skipped_steps: int


class _Logger:
    def __init__(self, model_dir: str, enabled: bool):
        self.enabled = enabled and jax.process_index() == 0
        self._writers: dict[str, Any] = {}
        self.model_dir = model_dir

    def scalars(self, kind: str, step: int, values: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        import tensorflow as tf

        if kind not in self._writers:
            self._writers[kind] = tf.summary.create_file_writer(os.path.join(self.model_dir, kind))
        with self._writers[kind].as_default(step=step):
            for name, value in values.items():
                tf.summary.scalar(name, float(value))
        self._writers[kind].flush()


@gin.configurable(module="trainer")
def train(
    model_dir: str = gin.REQUIRED,
    model: BaseRankingModel = gin.REQUIRED,
    vocab_path: str = gin.REQUIRED,
    train_task: str = gin.REQUIRED,
    train_steps: int = gin.REQUIRED,
    task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
    batch_size: int = 32,
    partitioner: Partitioner | None = None,
    optimizer: tuple | None = None,
    checkpoint_period: int = 1000,
    keep_checkpoints: int = 3,
    keep_best_by: str | None = None,
    eval_task: str | None = None,
    eval_split: str = "validation",
    eval_period: int | None = None,
    eval_qrels: str | None = None,
    eval_batch_size: int = 64,
    eval_metrics: tuple[str, ...] = measures_lib.DEFAULT_MEASURES,
    init_checkpoint: str | None = None,
    seed: int = 0,
    grad_accum_steps: int = 1,
    non_finite: str = "stop",
    log_period: int = 10,
    stop_after_steps: int | None = None,
    progress: bool = True,
    data_shards: int | None = None,
) -> TrainResult:
    """Trains (or resumes) a ranking model; see the module docstring for the directory layout.

    Args:
      model_dir: output directory (resumes from its latest checkpoint).
      model: from `make_model`.
      vocab_path: SentencePiece model (copied into the model dir).
      train_task: a registered seqio training task (lists of `list_size`).
      train_steps: total optimizer steps.
      task_feature_lengths: `{"inputs": T, "targets": 1}`.
      batch_size: lists per step (global).
      partitioner: mesh and rules (default: all devices on `data`).
      optimizer: `(optax transformation, lr schedule)` from `make_optimizer`.
      checkpoint_period: save every N steps (and at the end).
      keep_checkpoints: keep the last K checkpoints (plus the best by `keep_best_by`).
      keep_best_by: a measure name (e.g. `RR@10`) to keep the best checkpoint by.
      eval_task / eval_split / eval_period / eval_qrels: dev re-ranking during training; qrels
        default to the candidates' grades.
      init_checkpoint: pretrained weights (ours, Hugging Face, T5X); optimizer state starts fresh.
      seed: init, dropout and data-order seed.
      grad_accum_steps: micro-batches per step.
      non_finite: `stop` or `skip` on a NaN/Inf loss or gradient.
      stop_after_steps: end this run after N steps (the run can be resumed); for tests and jobs
        with a time budget.
      progress: print the start, the logged steps and the evaluations (process 0 only).
      data_shards: the global batch is read from this many data shards (`setup.TrainStream`);
        default: the number of processes for a fresh run, the saved number for a resumed one.
        The data order depends on it, not on the number of processes.
    """
    if non_finite not in ("stop", "skip"):
        raise ConfigError("non_finite must be 'stop' or 'skip'")
    if batch_size % grad_accum_steps:
        raise ConfigError("batch_size must be a multiple of grad_accum_steps")
    partitioner = partitioner or Partitioner()
    if batch_size % partitioner.data_size:
        raise ConfigError(
            f"batch_size {batch_size} is not a multiple of the data axis ({partitioner.data_size})"
        )
    progress = progress and jax.process_index() == 0
    tx, lr_schedule = optimizer or make_optimizer()
    os.makedirs(model_dir, exist_ok=True)
    model_dir_lib.write_model_files(model_dir, model.spec(), vocab_path)
    logger = _Logger(model_dir, enabled=True)

    # -- parameters, shardings ------------------------------------------------------------------
    length = int(task_feature_lengths["inputs"])
    manager = model_dir_lib.checkpoint_manager(model_dir)
    start_step = manager.latest_step() or 0
    if start_step:  # restored into shapes: no fresh params or optimizer state beside it
        abstract = abstract_train_state(model, tx, partitioner, length)
        state = model_dir_lib.restore_state(manager, start_step, abstract)
        if progress:
            print(f"train: resumed from step {start_step} of {model_dir}", flush=True)
    else:
        state = init_train_state(model, tx, partitioner, length, seed, init_checkpoint)

    # -- data: this process's rows of each global batch --------------------------------------
    data_shards = _data_shards(model_dir, start_step, data_shards)
    if batch_size % data_shards:
        raise ConfigError(f"batch_size {batch_size} is not a multiple of data_shards {data_shards}")
    rows = process_rows(partitioner.batch_sharding(3), batch_size)
    stream = TrainStream(
        train_task, task_feature_lengths, batch_size, seed, data_shards, rows[jax.process_index()]
    )
    writes = _data_writer_shards(rows, batch_size, data_shards, jax.process_index())
    if start_step:
        stream.restore(
            lambda shard: model_dir_lib.data_state_prefix(model_dir, start_step, shard, data_shards)
        )

    def write_data(at_step: int) -> None:
        stream.save(
            lambda shard: model_dir_lib.data_state_prefix(model_dir, at_step, shard, data_shards),
            writes,
        )

    # -- steps ----------------------------------------------------------------------------------
    last_end = (
        train_steps if stop_after_steps is None else min(train_steps, start_step + stop_after_steps)
    )
    if progress:
        mesh = "x".join(str(size) for size in partitioner.mesh.devices.shape)
        processes = (
            f" ({jax.process_count()} processes, {data_shards} data shards)"
            if jax.process_count() > 1 or data_shards > 1
            else ""
        )
        print(
            f"train: {model.variant} model -> {model_dir}; task {train_task}, {batch_size} lists "
            f"x {length} tokens per step on a {mesh} mesh{processes}; steps "
            f"{start_step + 1}..{last_end} of {train_steps}; compiling the step",
            flush=True,
        )
    step_fn, batch_shardings = make_train_step(
        model, tx, lr_schedule, partitioner, state, grad_accum_steps, non_finite, seed
    )

    history: list[dict[str, float]] = []
    eval_result: dict[str, float] = {}
    skipped = 0
    step = start_step
    window_start, window_steps = time.time(), 0
    best = model_dir_lib.read_best(model_dir)
    evaluator = None
    with partitioner.context(), warnings.catch_warnings():
        # Donation is best effort: buffers XLA cannot reuse are copied, which is no error.
        warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
        while step < last_end:
            host_batch = next(stream)
            batch = {
                key: jax.make_array_from_process_local_data(
                    sharding, host_batch[key], (batch_size,) + host_batch[key].shape[1:]
                )
                for key, sharding in batch_shardings.items()
            }
            state, metrics = step_fn(state, batch)
            step += 1
            window_steps += 1
            finite = bool(metrics["finite"])
            if not finite:
                if non_finite == "stop":
                    raise NonFiniteError(
                        f"non-finite loss or gradient at step {step} (loss={float(metrics['loss'])}, "
                        f"grad_norm={float(metrics['grad_norm'])}); the last good checkpoint "
                        f"(step {manager.latest_step() or 'none'}) in {model_dir} is intact"
                    )
                skipped += 1
            if step % log_period == 0 or step == last_end:
                elapsed = max(time.time() - window_start, 1e-9)
                values = {k: float(v) for k, v in metrics.items() if k != "finite"}
                values["steps_per_sec"] = window_steps / elapsed
                values["lists_per_sec"] = window_steps * batch_size / elapsed
                values["skipped_steps"] = skipped
                history.append(dict(values, step=step))
                logger.scalars("train", step, values)
                if progress:
                    print(
                        f"step {step}/{train_steps}  loss {values['loss']:.4f}  "
                        f"mrr@10 {values['mrr@10']:.3f}  {values['lists_per_sec']:.1f} lists/s",
                        flush=True,
                    )
                window_start, window_steps = time.time(), 0
            do_eval = eval_task and eval_period and (step % eval_period == 0 or step == train_steps)
            if do_eval:
                if evaluator is None:
                    evaluator = DevEvaluator(
                        model,
                        partitioner,
                        model_dir,
                        eval_task,
                        eval_split,
                        task_feature_lengths,
                        eval_batch_size,
                        eval_qrels,
                        eval_metrics,
                        vocab_path,
                    )
                eval_result = evaluator(state["params"], step)
                logger.scalars("eval", step, eval_result)
                if progress:
                    print(f"eval step {step}: " + json.dumps(eval_result), flush=True)
            if step % checkpoint_period == 0 or step == last_end:
                score = eval_result.get(keep_best_by) if keep_best_by and do_eval else None
                model_dir_lib.save_state(manager, model_dir, step, state, write_data, score)
                if score is not None and (best is None or score > best[1]):
                    best = (step, score)
                    model_dir_lib.write_best(model_dir, best)
                model_dir_lib.prune(manager, keep_checkpoints, best[0] if best else None, model_dir)
    params = state["params"] if jax.process_count() > 1 else multihost.to_host(state["params"])
    return TrainResult(step, params, history, eval_result, skipped)


def process_rows(sharding, batch_size: int) -> dict[int, tuple[int, int]]:
    """Process index -> the global batch rows `[lo, hi)` its devices hold under `sharding`
    (the whole batch where the data axis does not span processes)."""
    held: dict[int, set[int]] = {}
    for device, index in sharding.devices_indices_map((batch_size, 1, 1)).items():
        held.setdefault(device.process_index, set()).update(range(*index[0].indices(batch_size)))
    rows = {}
    for process, indices in held.items():
        lo, hi = min(indices), max(indices) + 1
        if len(indices) != hi - lo:
            raise ConfigError(
                f"process {process}'s devices hold batch rows that are not contiguous; build the "
                "mesh from jax.devices() in process order"
            )
        rows[process] = (lo, hi)
    return rows


def _data_writer_shards(
    rows: Mapping[int, tuple[int, int]], batch_size: int, data_shards: int, process: int
) -> list[int]:
    """The data shards whose position `process` saves: those it is the first process to read."""
    first: dict[int, int] = {}
    for other in sorted(rows):
        for shard in shards_of_rows(rows[other], batch_size, data_shards):
            first.setdefault(shard, other)
    return [shard for shard, owner in sorted(first.items()) if owner == process]


def _data_shards(model_dir: str, start_step: int, data_shards: int | None) -> int:
    """The run's number of data shards: the saved one when resuming, else the number of
    processes (or `data_shards` where given; a resumed run must give the saved number)."""
    if data_shards is not None and data_shards < 1:
        raise ConfigError(f"data_shards must be at least 1, got {data_shards}")
    recorded = model_dir_lib.recorded_data_shards(model_dir, start_step) if start_step else None
    if start_step and recorded is None:
        raise CheckpointError(f"{model_dir}: data position for step {start_step} is missing")
    if recorded is not None and data_shards not in (None, recorded):
        raise ConfigError(
            f"{model_dir} was trained with data_shards={recorded}; its data position resumes "
            f"only with {recorded} shards (leave trainer.train.data_shards unset)"
        )
    return recorded or data_shards or jax.process_count()
