"""The training loop (gin: `trainer.train`): data, steps, logging, dev evaluation, checkpoints.

`train_loop(*, model_dir, model, vocab_path, data, steps, checkpoint, evaluation, logging,
partitioner, optimizer)` takes its settings as one dataclass per concern (`training/configs.py`:
`DataConfig`, `StepsConfig`, `CheckpointConfig`, `EvalConfig`, `LoggingConfig`), as T5X's
`train`. `train` is gin's entry point `trainer.train`, with the flat names every gin file binds
(`trainer.train.batch_size`, `trainer.train.eval_period`, ...); it builds the configs and calls
`train_loop`.

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
from rankt5_jax.checkpoints import loading
from rankt5_jax.checkpoints import model_dir as model_dir_lib
from rankt5_jax.data import paths, tasks_lib
from rankt5_jax.errors import CheckpointError, ConfigError, NonFiniteError
from rankt5_jax.evaluation import measures as measures_lib
from rankt5_jax.modeling import multihost
from rankt5_jax.modeling.models import BaseRankingModel
from rankt5_jax.modeling.partitioning import Partitioner
from rankt5_jax.training.configs import (
    FLAT_NAMES,
    CheckpointConfig,
    DataConfig,
    EvalConfig,
    LoggingConfig,
    StepsConfig,
    TrainConfigs,
)
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
            self._writers[kind] = tf.summary.create_file_writer(self._events(kind))
        with self._writers[kind].as_default(step=step):
            for name, value in values.items():
                tf.summary.scalar(name, float(value))
        self._writers[kind].flush()
        if paths.is_remote(self.model_dir):  # TF's own GCS client: staged locally, uploaded
            paths.upload_tree(self._events(kind), paths.join(self.model_dir, kind))

    def _events(self, kind: str) -> str:
        if paths.is_remote(self.model_dir):
            return os.path.join(paths.cache_dir(self.model_dir, "events"), kind)
        return os.path.join(self.model_dir, kind)


@gin.configurable(module="trainer")
def train(
    *,
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
    """Trains (or resumes) a ranking model: gin's `trainer.train`, with flat names.

    Args:
      model_dir: output directory (resumes from its latest checkpoint).
      model: from `make_model`.
      vocab_path: SentencePiece model (copied into the model dir).
      partitioner: mesh and rules (default: all devices on `data`).
      optimizer: `(optax transformation, lr schedule)` from `make_optimizer`.
      the others: the fields of `configs.DataConfig`, `StepsConfig`, `CheckpointConfig`
        (`checkpoint_period` is its `period`, `keep_checkpoints` its `keep`), `EvalConfig`
        (`eval_task` is its `task`, ...) and `LoggingConfig`, documented there
        (`configs.FLAT_NAMES` maps each name to its config and field).
    """
    flat = {name: value for name, value in locals().items() if name in FLAT_NAMES}
    configs = TrainConfigs.from_flat(**flat)
    return train_loop(
        model_dir=model_dir,
        model=model,
        vocab_path=vocab_path,
        partitioner=partitioner,
        optimizer=optimizer,
        **{field.name: getattr(configs, field.name) for field in dataclasses.fields(configs)},
    )


def train_loop(
    *,
    model_dir: str,
    model: BaseRankingModel,
    vocab_path: str,
    data: DataConfig,
    steps: StepsConfig,
    checkpoint: CheckpointConfig | None = None,
    evaluation: EvalConfig | None = None,
    logging: LoggingConfig | None = None,
    partitioner: Partitioner | None = None,
    optimizer: tuple | None = None,
) -> TrainResult:
    """Trains (or resumes) `model` into `model_dir`; see the module docstring. A config left out
    has its defaults; `partitioner`: all devices on `data`; `optimizer`: `make_optimizer()`."""
    checkpoint = checkpoint or CheckpointConfig()
    evaluation = evaluation or EvalConfig()
    logging = logging or LoggingConfig()
    partitioner = partitioner or Partitioner()
    _check(data, steps, partitioner)
    progress = logging.progress and jax.process_index() == 0
    tx, lr_schedule = optimizer or make_optimizer()
    if checkpoint.init_checkpoint:  # before anything is written
        loading.check_vocabulary(checkpoint.init_checkpoint, vocab_path)
    paths.makedirs(model_dir)
    model_dir_lib.write_model_files(model_dir, model.spec(), vocab_path)
    manager = model_dir_lib.checkpoint_manager(model_dir)
    start_step = manager.latest_step() or 0
    if start_step:  # restored into shapes: no fresh params or optimizer state beside it
        abstract = abstract_train_state(model, tx, partitioner, data.length)
        state = model_dir_lib.restore_state(manager, start_step, abstract)
        if progress:
            print(f"train: resumed from step {start_step} of {model_dir}", flush=True)
    else:
        state = init_train_state(
            model, tx, partitioner, data.length, data.seed, checkpoint.init_checkpoint
        )
    if start_step == 0 and steps.last_step(0) == 0:  # TRAIN_STEPS=0
        return _write_initial(model_dir, manager, state, progress)
    pair_template = getattr(model, "template", None)  # the inputs the model will re-rank
    for task in (data.train_task, evaluation.task):
        tasks_lib.follow_model_template(task, pair_template)
    feed = _Feed(model_dir, data, partitioner, start_step)
    last_step = steps.last_step(start_step)
    if progress:
        _announce(model, model_dir, data, steps, partitioner, feed.data_shards, start_step)
    step_fn, batch_shardings = make_train_step(
        model, tx, lr_schedule, partitioner, state, steps.grad_accum_steps, steps.non_finite,
        data.seed,
    )  # fmt: skip
    configs = TrainConfigs(data, steps, checkpoint, evaluation, logging)
    run = _Run(model, model_dir, vocab_path, partitioner, configs, manager, feed, start_step)
    with partitioner.context(), warnings.catch_warnings():
        # Donation is best effort: buffers XLA cannot reuse are copied, which is no error.
        warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
        while run.step < last_step:
            first = run.step == start_step
            started = time.time()
            state, metrics = step_fn(state, feed.next_batch(batch_shardings))
            if first and progress:  # the compilation is the long wait before the first log
                jax.block_until_ready(metrics)
                print(
                    f"train: step {run.step + 1} (the compilation included) took "
                    f"{time.time() - started:.1f}s",
                    flush=True,
                )
            run.after_step(state, metrics, last_step, progress)
    params = state["params"] if jax.process_count() > 1 else multihost.to_host(state["params"])
    return TrainResult(run.step, params, run.history, run.eval_result, run.skipped)


def _write_initial(model_dir: str, manager, state, progress: bool) -> TrainResult:
    """No steps to train: the initial model (random, or `init_checkpoint`'s) is saved as step 0,
    so the untrained baseline loads (`Ranker.load`, `rankt5 rerank --checkpoint`) like any
    trained step; a later run with steps trains on from it. No data is read."""
    model_dir_lib.save_state(manager, model_dir, 0, state, lambda step: None, None)
    if progress:
        print(f"train: no steps to train; wrote the initial model as step 0 to {model_dir}")
    params = state["params"] if jax.process_count() > 1 else multihost.to_host(state["params"])
    return TrainResult(0, params, [], {}, 0)


def _check(data: DataConfig, steps: StepsConfig, partitioner: Partitioner) -> None:
    if steps.train_steps < 0:
        raise ConfigError(f"train_steps must be 0 or more, got {steps.train_steps}")
    if data.batch_size % steps.grad_accum_steps:
        raise ConfigError("batch_size must be a multiple of grad_accum_steps")
    if data.batch_size % partitioner.data_size:
        raise ConfigError(
            f"batch_size {data.batch_size} is not a multiple of the data axis "
            f"({partitioner.data_size})"
        )


def _announce(model, model_dir, data, steps, partitioner, data_shards, start_step) -> None:
    """Says what the run is about to do, before the step compiles."""
    mesh = "x".join(str(size) for size in partitioner.mesh.devices.shape)
    processes = (
        f" ({jax.process_count()} processes, {data_shards} data shards)"
        if jax.process_count() > 1 or data_shards > 1
        else ""
    )
    print(
        f"train: {model.variant} model -> {model_dir}; task {data.train_task}, "
        f"{data.batch_size} lists x {data.length} tokens per step on a {mesh} mesh{processes}; "
        f"steps {start_step + 1}..{steps.last_step(start_step)} of {steps.train_steps}; "
        "compiling the step",
        flush=True,
    )


class _Feed:
    """This process's rows of each global batch (`TrainStream`), restored to the data position
    of `start_step`; `save(step)` writes the position of the data shards this process owns."""

    def __init__(self, model_dir: str, data: DataConfig, partitioner: Partitioner, start_step):
        self.model_dir, self.batch_size = model_dir, data.batch_size
        self.data_shards = _data_shards(model_dir, start_step, data.data_shards)
        if data.batch_size % self.data_shards:
            raise ConfigError(
                f"batch_size {data.batch_size} is not a multiple of data_shards {self.data_shards}"
            )
        rows = process_rows(partitioner.batch_sharding(3), data.batch_size)
        self.stream = TrainStream(
            data.train_task,
            data.task_feature_lengths,
            data.batch_size,
            data.seed,
            self.data_shards,
            rows[jax.process_index()],
        )
        self.writes = _data_writer_shards(
            rows, data.batch_size, self.data_shards, jax.process_index()
        )
        if start_step:
            self.stream.restore(lambda shard: self._prefix(start_step, shard))

    def _prefix(self, step: int, shard: int) -> str:
        return model_dir_lib.data_state_prefix(self.model_dir, step, shard, self.data_shards)

    def save(self, step: int) -> None:
        self.stream.save(lambda shard: self._prefix(step, shard), self.writes)

    def next_batch(self, batch_shardings: Mapping[str, Any]) -> dict[str, jax.Array]:
        """The next global batch, each array laid out by its sharding."""
        host_batch = next(self.stream)
        return {
            key: jax.make_array_from_process_local_data(
                sharding, host_batch[key], (self.batch_size,) + host_batch[key].shape[1:]
            )
            for key, sharding in batch_shardings.items()
        }


class _Run:
    """What the loop carries from step to step: the step, the logged history and its time window,
    the last evaluation, the skipped steps, the best checkpoint; and what it does after each step
    (non-finite guard, logging, dev evaluation, checkpoint)."""

    def __init__(self, model, model_dir, vocab_path, partitioner, configs, manager, feed, start):
        self.model, self.model_dir, self.vocab_path = model, model_dir, vocab_path
        self.partitioner, self.configs = partitioner, configs
        self.manager, self.feed = manager, feed
        self.step = start
        self.history: list[dict[str, float]] = []
        self.eval_result: dict[str, float] = {}
        self.skipped = 0
        self.window_start, self.window_steps = time.time(), 0
        self.best = model_dir_lib.read_best(model_dir)
        self.evaluator: DevEvaluator | None = None
        self.logger = _Logger(model_dir, enabled=True)

    def after_step(self, state, metrics, last_step: int, progress: bool) -> None:
        self.step += 1
        self.window_steps += 1
        if not bool(metrics["finite"]):
            self._non_finite(metrics)
        if self.step % self.configs.logging.log_period == 0 or self.step == last_step:
            self._log(metrics, progress)
        evaluated = self.configs.evaluation.due(self.step, self.configs.steps.train_steps)
        if evaluated:
            self._evaluate(state, progress)
        if self.step % self.configs.checkpoint.period == 0 or self.step == last_step:
            self._save(state, evaluated)

    def _non_finite(self, metrics) -> None:
        if self.configs.steps.non_finite == "stop":
            raise NonFiniteError(
                f"non-finite loss or gradient at step {self.step} "
                f"(loss={float(metrics['loss'])}, grad_norm={float(metrics['grad_norm'])}); "
                f"the last good checkpoint (step {self.manager.latest_step() or 'none'}) in "
                f"{self.model_dir} is intact"
            )
        self.skipped += 1

    def _log(self, metrics, progress: bool) -> None:
        batch_size = self.configs.data.batch_size
        elapsed = max(time.time() - self.window_start, 1e-9)
        values = {k: float(v) for k, v in metrics.items() if k != "finite"}
        values["steps_per_sec"] = self.window_steps / elapsed
        values["lists_per_sec"] = self.window_steps * batch_size / elapsed
        values["skipped_steps"] = self.skipped
        self.history.append(dict(values, step=self.step))
        self.logger.scalars("train", self.step, values)
        if progress:
            print(
                f"step {self.step}/{self.configs.steps.train_steps}  loss {values['loss']:.4f}  "
                f"mrr@10 {values['mrr@10']:.3f}  {values['lists_per_sec']:.1f} lists/s",
                flush=True,
            )
        self.window_start, self.window_steps = time.time(), 0

    def _evaluate(self, state, progress: bool) -> None:
        evaluation = self.configs.evaluation
        if self.evaluator is None:
            self.evaluator = DevEvaluator(
                self.model,
                self.partitioner,
                self.model_dir,
                evaluation.task,
                evaluation.split,
                self.configs.data.task_feature_lengths,
                evaluation.batch_size,
                evaluation.qrels,
                evaluation.metrics,
                self.vocab_path,
            )
        self.eval_result = self.evaluator(state["params"], self.step)
        self.logger.scalars("eval", self.step, self.eval_result)
        if progress:
            print(f"eval step {self.step}: " + json.dumps(self.eval_result), flush=True)

    def _save(self, state, evaluated: bool) -> None:
        keep_best_by = self.configs.checkpoint.keep_best_by
        score = self.eval_result.get(keep_best_by) if keep_best_by and evaluated else None
        model_dir_lib.save_state(
            self.manager, self.model_dir, self.step, state, self.feed.save, score
        )
        if score is not None and (self.best is None or score > self.best[1]):
            self.best = (self.step, score)
            model_dir_lib.write_best(self.model_dir, self.best)
        best_step = self.best[0] if self.best else None
        model_dir_lib.prune(self.manager, self.configs.checkpoint.keep, best_step, self.model_dir)


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
