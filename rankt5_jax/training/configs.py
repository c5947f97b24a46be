"""The training loop's settings, one dataclass per concern (as T5X's `train(*, ...)` takes
`DatasetConfig`, `CheckpointConfig`, ...).

  DataConfig        what is read: the task, lengths, global batch, seed, data shards
  StepsConfig       how far and how: total steps, accumulation, the non-finite guard, a stop point
  CheckpointConfig  when to save, what to keep, where the weights start
  EvalConfig        dev re-ranking during training: task, split, period, qrels, metrics
  LoggingConfig     how often to log and whether to print

gin keeps one entry point, `trainer.train`, with the flat keyword names every gin file binds
(`trainer.train.batch_size`, `trainer.train.eval_period`, ...): it builds these dataclasses
(`from_flat`) and calls `train.train_loop`, which takes them. Python callers may build them
directly. Each config checks its own values on construction (a `ConfigError` naming the setting).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from rankt5_jax.errors import ConfigError
from rankt5_jax.evaluation import measures as measures_lib

NON_FINITE = ("stop", "skip")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """train_task: a registered seqio training task (lists of `list_size`).
    task_feature_lengths: `{"inputs": T, "targets": 1}`.
    batch_size: lists per step (global).
    seed: init, dropout and data-order seed.
    data_shards: the global batch is read from this many data shards (`setup.TrainStream`);
      None: the number of processes for a fresh run, the saved number for a resumed one. The
      data order depends on it, not on the number of processes."""

    train_task: str
    task_feature_lengths: Mapping[str, int]
    batch_size: int = 32
    seed: int = 0
    data_shards: int | None = None

    @property
    def length(self) -> int:
        return int(self.task_feature_lengths["inputs"])


@dataclasses.dataclass(frozen=True)
class StepsConfig:
    """train_steps: total optimizer steps.
    grad_accum_steps: micro-batches per step (must divide the batch size).
    non_finite: `stop` or `skip` on a NaN/Inf loss or gradient.
    stop_after_steps: end this run after N steps (the run can be resumed); for tests and jobs
      with a time budget."""

    train_steps: int
    grad_accum_steps: int = 1
    non_finite: str = "stop"
    stop_after_steps: int | None = None

    def __post_init__(self):
        if self.non_finite not in NON_FINITE:
            raise ConfigError("non_finite must be 'stop' or 'skip'")

    def last_step(self, start_step: int) -> int:
        """The step this run ends at, from `start_step`."""
        if self.stop_after_steps is None:
            return self.train_steps
        return min(self.train_steps, start_step + self.stop_after_steps)


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """period: save every N steps (and at the end).
    keep: keep the last K checkpoints (plus the best by `keep_best_by`).
    keep_best_by: a measure name (e.g. `RR@10`) to keep the best checkpoint by.
    init_checkpoint: pretrained weights (ours, Hugging Face, T5X); optimizer state starts
      fresh."""

    period: int = 1000
    keep: int = 3
    keep_best_by: str | None = None
    init_checkpoint: str | None = None


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Dev re-ranking during training, every `period` steps and at the last step: `task` (None:
    no evaluation), its `split`, `qrels` (default: the candidates' grades), `batch_size` lists
    per call, `metrics`."""

    task: str | None = None
    split: str = "validation"
    period: int | None = None
    qrels: str | None = None
    batch_size: int = 64
    metrics: tuple[str, ...] = measures_lib.DEFAULT_MEASURES

    def due(self, step: int, train_steps: int) -> bool:
        """Whether to evaluate after `step`."""
        if not (self.task and self.period):
            return False
        return step % self.period == 0 or step == train_steps


@dataclasses.dataclass(frozen=True)
class LoggingConfig:
    """log_period: log (TensorBoard, and the console with `progress`) every N steps and at the
    last. progress: print the start, the logged steps and the evaluations (process 0 only)."""

    log_period: int = 10
    progress: bool = True


@dataclasses.dataclass(frozen=True)
class TrainConfigs:
    """The five configs of one run."""

    data: DataConfig
    steps: StepsConfig
    checkpoint: CheckpointConfig
    evaluation: EvalConfig
    logging: LoggingConfig

    @classmethod
    def from_flat(cls, **flat: Any) -> TrainConfigs:
        """From `trainer.train`'s flat keyword names (every one of `FLAT_NAMES`)."""
        unknown = set(flat) - set(FLAT_NAMES)
        if unknown:
            raise ConfigError(f"unknown training settings: {', '.join(sorted(unknown))}")
        groups: dict[str, dict[str, Any]] = {group: {} for group in _GROUPS}
        for name, value in flat.items():
            group, field = FLAT_NAMES[name]
            groups[group][field] = value
        return cls(**{group: _GROUPS[group](**values) for group, values in groups.items()})


_GROUPS = {
    "data": DataConfig,
    "steps": StepsConfig,
    "checkpoint": CheckpointConfig,
    "evaluation": EvalConfig,
    "logging": LoggingConfig,
}

# `trainer.train`'s keyword (as gin files bind it) -> (config, field).
FLAT_NAMES: dict[str, tuple[str, str]] = {
    "train_task": ("data", "train_task"),
    "task_feature_lengths": ("data", "task_feature_lengths"),
    "batch_size": ("data", "batch_size"),
    "seed": ("data", "seed"),
    "data_shards": ("data", "data_shards"),
    "train_steps": ("steps", "train_steps"),
    "grad_accum_steps": ("steps", "grad_accum_steps"),
    "non_finite": ("steps", "non_finite"),
    "stop_after_steps": ("steps", "stop_after_steps"),
    "checkpoint_period": ("checkpoint", "period"),
    "keep_checkpoints": ("checkpoint", "keep"),
    "keep_best_by": ("checkpoint", "keep_best_by"),
    "init_checkpoint": ("checkpoint", "init_checkpoint"),
    "eval_task": ("evaluation", "task"),
    "eval_split": ("evaluation", "split"),
    "eval_period": ("evaluation", "period"),
    "eval_qrels": ("evaluation", "qrels"),
    "eval_batch_size": ("evaluation", "batch_size"),
    "eval_metrics": ("evaluation", "metrics"),
    "log_period": ("logging", "log_period"),
    "progress": ("logging", "progress"),
}
