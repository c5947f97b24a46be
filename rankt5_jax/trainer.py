"""Training engine: sharded train/eval steps on a JAX mesh, optax, orbax checkpoints, gin.

Layout of a model directory:

  rankt5.json            model spec (variant, T5 config, loss, score token): `Ranker.load` reads it
  spiece.model           the vocabulary
  checkpoints/<step>/    orbax: `params`, `opt_state`, `meta` (step, metrics)
  data_state/<step>/     tf.data iterator state for exact resume (written before `checkpoints/<step>`)
  train/, eval/          TensorBoard event files
  eval_runs/step_<N>.run TREC runs of the dev candidates

Resume is exact: params, optimizer state, step and data position are restored; dropout RNG is
`fold_in(seed, step)`. A non-finite loss or gradient stops training with a message naming the step
(`non_finite="stop"`, the default: nothing is saved past the last good checkpoint) or skips that
update and counts it (`non_finite="skip"`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding

import gin
from rankt5_jax import checkpoints as ckpt_lib
from rankt5_jax import metrics as metrics_lib
from rankt5_jax.errors import CheckpointError, ConfigError, NonFiniteError
from rankt5_jax.models import BaseRankingModel, MonoT5, RankT5Enc, RankT5EncDec, build_model
from rankt5_jax.network import get_config
from rankt5_jax.partitioning import Partitioner
from rankt5_jax.ranker import SPEC_FILE, VOCAB_FILE, Ranker, write_spec
from rankt5_jax.vocab import Vocabulary, padded_vocab_size

warnings.filterwarnings("ignore", message="Some donated buffers were not usable")


# ----------------------------------------------------------------------------------------------
# Model and optimizer factories (gin)
# ----------------------------------------------------------------------------------------------


@gin.configurable
def make_model(
    variant: str = gin.REQUIRED,
    size: str = gin.REQUIRED,
    vocab_path: str = gin.REQUIRED,
    loss: str = "softmax",
    loss_kwargs: Mapping[str, Any] | None = None,
    score_token: str = "<extra_id_10>",
    dtype: str = "float32",
    dropout_rate: float = 0.1,
    remat: str = "none",
    pooling: str = "first",
    config_overrides: Mapping[str, Any] | None = None,
) -> BaseRankingModel:
    """Builds a ranking model from a named T5 size and a vocabulary.

    For the named T5 sizes the embedding has 32128 rows (standard vocabulary); the `tiny` sizes
    take the vocabulary's size rounded up to a multiple of 128.
    """
    vocab = Vocabulary(vocab_path)
    overrides = dict(config_overrides or {})
    if size.startswith("tiny"):
        overrides.setdefault("vocab_size", padded_vocab_size(vocab.size))
    config = get_config(
        size, dtype=dtype, dropout_rate=dropout_rate, remat=remat, pooling=pooling, **overrides
    )
    if vocab.size > config.vocab_size:
        raise ConfigError(f"vocabulary has {vocab.size} ids, model embeds {config.vocab_size}")
    common = dict(loss=loss, loss_kwargs=loss_kwargs)
    if variant == "encdec":
        return RankT5EncDec(config, score_token_id=vocab.token_id(score_token), **common)
    if variant == "enc":
        return RankT5Enc(config, **common)
    if variant == "monot5":
        return MonoT5(
            config,
            true_token_id=vocab.token_id("true"),
            false_token_id=vocab.token_id("false"),
            **common,
        )
    raise ConfigError(f"variant must be encdec, enc or monot5, got {variant!r}")


@gin.configurable
def make_optimizer(
    name: str = "adafactor",
    learning_rate: float = 1e-4,
    schedule: str = "constant",
    warmup_steps: int = 0,
    decay_steps: int | None = None,
    weight_decay: float = 0.0,
    clip_norm: float | None = None,
) -> tuple[optax.GradientTransformation, Callable[[Any], Any]]:
    """-> (optimizer, learning-rate schedule). The paper: constant 1e-4 (Adafactor as in T5X).

    Args:
      name: `adafactor` (T5X's default: factored, decay 0.8, update clipping 1.0, parameter
        scaling), `adamw` or `sgd`.
      schedule: `constant`, `linear` (decay to 0 at `decay_steps`) or `rsqrt` (T5 pre-training).
      warmup_steps: linear warmup from 0.
      clip_norm: optional global-norm gradient clipping.
    """
    if schedule == "constant":
        base = optax.constant_schedule(learning_rate)
    elif schedule == "linear":
        if not decay_steps:
            raise ConfigError("schedule='linear' needs decay_steps")
        base = optax.linear_schedule(learning_rate, 0.0, decay_steps - warmup_steps)
    elif schedule == "rsqrt":
        base = lambda step: learning_rate * jax.lax.rsqrt(jnp.maximum(step, 1.0))  # noqa: E731
    else:
        raise ConfigError(f"unknown schedule {schedule!r}")
    lr = (
        optax.join_schedules(
            [optax.linear_schedule(0.0, learning_rate, warmup_steps), base], [warmup_steps]
        )
        if warmup_steps
        else base
    )
    if name == "adafactor":
        tx = optax.adafactor(
            learning_rate=lr,
            decay_rate=0.8,
            clipping_threshold=1.0,
            multiply_by_parameter_scale=True,
            factored=True,
            weight_decay_rate=weight_decay or None,
        )
    elif name == "adamw":
        tx = optax.adamw(learning_rate=lr, weight_decay=weight_decay)
    elif name == "sgd":
        tx = optax.sgd(learning_rate=lr)
    else:
        raise ConfigError(f"unknown optimizer {name!r}: use adafactor, adamw or sgd")
    if clip_norm:
        tx = optax.chain(optax.clip_by_global_norm(clip_norm), tx)
    return tx, lr


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


def train_dataset(task_name: str, feature_lengths: Mapping[str, int], batch_size: int, seed: int):
    """The training stream of this host: seqio task -> feature converter -> batches (tf.data).

    With several processes each host reads its own shard and yields `batch_size / processes`
    lists per step.
    """
    import seqio

    from rankt5_jax.feature_converters import RankingFeatureConverter

    processes = jax.process_count()
    shard_info = (
        seqio.ShardInfo(index=jax.process_index(), num_shards=processes) if processes > 1 else None
    )
    dataset = seqio.get_dataset(
        task_name,
        dict(feature_lengths),
        dataset_split="train",
        shuffle=True,
        num_epochs=None,
        seed=seed,
        shard_info=shard_info,
        feature_converter=RankingFeatureConverter(pack=False),
    )
    batch_size //= processes
    return dataset.batch(batch_size, drop_remainder=True).prefetch(2)


def eval_lists(task_name: str, feature_lengths: Mapping[str, int], split: str):
    """Per-query evaluation lists (qid, docids, tokens, labels, mask) from a seqio eval task."""
    import seqio

    task = seqio.get_mixture_or_task(task_name)
    dataset = task.get_dataset(dict(feature_lengths), split=split, shuffle=False, num_epochs=1)
    for example in dataset.as_numpy_iterator():
        mask = example["mask"]
        yield (
            example["qid"].decode(),
            [d.decode() for d in example["docids"][mask]],
            example["inputs"][mask],
            example["label"][mask],
        )


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------


def _manager(model_dir: str, read_only: bool = False):
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

    with open(os.path.join(model_dir, SPEC_FILE)) as handle:
        spec = json.load(handle)
    ckpt_dir = os.path.join(model_dir, "checkpoints")
    if not os.path.isdir(ckpt_dir):
        raise CheckpointError(f"{model_dir}: no checkpoints/ directory")
    from absl import logging as absl_logging

    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)  # orbax warns that read-only is read-only
    try:
        manager = _manager(model_dir, read_only=True)
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


def merge_params(fresh: Any, loaded: Any, source: str) -> tuple[Any, list[str]]:
    """Takes every array of `loaded` whose path and shape exist in `fresh`; reports the rest."""
    import flax

    flat_fresh = flax.traverse_util.flatten_dict(fresh, sep="/")
    flat_loaded = flax.traverse_util.flatten_dict(loaded, sep="/")
    fresh_only = []
    for key, value in flat_fresh.items():
        if key in flat_loaded:
            if tuple(flat_loaded[key].shape) != tuple(value.shape):
                raise CheckpointError(
                    f"{source}: {key} has shape {flat_loaded[key].shape}, model wants {value.shape}"
                )
            flat_fresh[key] = np.asarray(flat_loaded[key], np.float32)
        else:
            fresh_only.append(key)
    if len(fresh_only) == len(flat_fresh):
        raise CheckpointError(f"{source}: no parameter matches the model")
    return flax.traverse_util.unflatten_dict(flat_fresh, sep="/"), fresh_only


def load_pretrained(path: str) -> Any:
    """Params of a pretrained checkpoint: our model dir, a Hugging Face dir or a T5X checkpoint."""
    kind = ckpt_lib.checkpoint_kind(path)
    if kind == "rankt5":
        return load_model_dir(path)[1]
    if kind == "hf":
        return ckpt_lib.load_hf(path, "encdec")[1]
    return ckpt_lib.load_t5x(path)


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class TrainResult:
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
    """
    init_params, _, param_shardings = _param_init(model, partitioner, length)
    params = init_params(jax.random.PRNGKey(seed))
    if init_checkpoint:
        loaded = load_pretrained(init_checkpoint)
        merged, fresh = merge_params(jax.device_get(params), loaded, init_checkpoint)
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
    """
    base_rng = jax.random.PRNGKey(seed + 1)

    def loss_and_grads(params, batch, rng):
        grad_fn = jax.value_and_grad(model.loss_fn, has_aux=True)
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
        loss, aux, grads = loss_and_grads(state["params"], batch, rng)
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, new_opt = tx.update(grads, state["opt_state"], state["params"])
        new_params = optax.apply_updates(state["params"], updates)
        if non_finite == "skip":
            keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
            new_params = jax.tree_util.tree_map(keep, new_params, state["params"])
            new_opt = jax.tree_util.tree_map(keep, new_opt, state["opt_state"])
        metrics = dict(
            aux, grad_norm=grad_norm, finite=finite, learning_rate=lr_schedule(state["step"])
        )
        return {"step": state["step"] + 1, "params": new_params, "opt_state": new_opt}, metrics

    batch_shardings = {
        "encoder_input_tokens": partitioner.batch_sharding(3),
        "decoder_input_tokens": partitioner.batch_sharding(3),
        "decoder_target_tokens": partitioner.batch_sharding(3),
        "label": partitioner.batch_sharding(2),
        "mask": partitioner.batch_sharding(2),
    }
    state_shardings = jax.tree_util.tree_map(lambda x: x.sharding, state)
    step_fn = jax.jit(
        train_step,
        in_shardings=(state_shardings, batch_shardings),
        out_shardings=(state_shardings, partitioner.replicated()),
        donate_argnums=(0,),
    )
    return step_fn, batch_shardings


@gin.configurable
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
    eval_metrics: tuple[str, ...] = metrics_lib.DEFAULT_MEASURES,
    init_checkpoint: str | None = None,
    seed: int = 0,
    grad_accum_steps: int = 1,
    non_finite: str = "stop",
    log_period: int = 10,
    stop_after_steps: int | None = None,
    progress: bool = True,
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
    """
    if non_finite not in ("stop", "skip"):
        raise ConfigError("non_finite must be 'stop' or 'skip'")
    if batch_size % grad_accum_steps:
        raise ConfigError("batch_size must be a multiple of grad_accum_steps")
    partitioner = partitioner or Partitioner()
    if batch_size % (partitioner.data_size * jax.process_count()):
        raise ConfigError(
            f"batch_size {batch_size} is not a multiple of the data axis ({partitioner.data_size})"
        )
    tx, lr_schedule = optimizer or make_optimizer()
    os.makedirs(model_dir, exist_ok=True)
    _write_model_files(model_dir, model, vocab_path)
    logger = _Logger(model_dir, enabled=True)

    # -- parameters, shardings ------------------------------------------------------------------
    length = int(task_feature_lengths["inputs"])
    manager = _manager(model_dir)
    start_step = manager.latest_step() or 0
    if start_step:  # restored into shapes: no fresh params or optimizer state beside it
        abstract = abstract_train_state(model, tx, partitioner, length)
        state = _restore_state(manager, start_step, abstract)
        print(f"resumed from step {start_step}", flush=True)
    else:
        state = init_train_state(model, tx, partitioner, length, seed, init_checkpoint)

    # -- data -----------------------------------------------------------------------------------
    import tensorflow as tf

    dataset = train_dataset(train_task, task_feature_lengths, batch_size, seed)
    iterator = iter(dataset)
    data_ckpt = tf.train.Checkpoint(iterator=iterator)
    if start_step:
        data_path = os.path.join(model_dir, "data_state", str(start_step), "data")
        if not os.path.exists(data_path + ".index"):
            raise CheckpointError(f"{model_dir}: data position for step {start_step} is missing")
        data_ckpt.read(data_path).assert_consumed()

    # -- steps ----------------------------------------------------------------------------------
    step_fn, batch_shardings = make_train_step(
        model, tx, lr_schedule, partitioner, state, grad_accum_steps, non_finite, seed
    )

    history: list[dict[str, float]] = []
    eval_result: dict[str, float] = {}
    skipped = 0
    step = start_step
    last_end = (
        train_steps if stop_after_steps is None else min(train_steps, start_step + stop_after_steps)
    )
    window_start, window_steps = time.time(), 0
    best = _read_best(model_dir)
    evaluator = None
    with partitioner.context():
        while step < last_end:
            host_batch = next(iterator)
            batch = {
                key: jax.make_array_from_process_local_data(
                    sharding,
                    host_batch[key].numpy(),
                    (batch_size,) + tuple(host_batch[key].shape[1:]),
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
                _save(manager, model_dir, step, state, data_ckpt, score)
                if score is not None and (best is None or score > best[1]):
                    best = (step, score)
                    _write_best(model_dir, best)
                _prune(manager, keep_checkpoints, best[0] if best else None, model_dir)
    params = jax.device_get(state["params"])
    return TrainResult(step, params, history, eval_result, skipped)


def _write_model_files(model_dir: str, model: BaseRankingModel, vocab_path: str) -> None:
    spec_path = os.path.join(model_dir, SPEC_FILE)
    spec = model.spec()
    if os.path.isfile(spec_path):
        with open(spec_path) as handle:
            existing = json.load(handle)
        if existing.get("variant") != spec["variant"] or existing.get("t5") != json.loads(
            json.dumps(spec["t5"])
        ):
            raise ConfigError(
                f"{model_dir} holds a different model ({existing.get('variant')}); "
                "use a new model_dir"
            )
    write_spec(model_dir, spec)
    target = os.path.join(model_dir, VOCAB_FILE)
    if os.path.abspath(vocab_path) != os.path.abspath(target):
        shutil.copyfile(vocab_path, target)


def _restore_state(manager, step: int, state: dict) -> dict:
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


def _save(manager, model_dir: str, step: int, state: dict, data_ckpt, score) -> None:
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


def _read_best(model_dir: str):
    path = os.path.join(model_dir, "best_checkpoint.json")
    if os.path.isfile(path):
        with open(path) as handle:
            data = json.load(handle)
        return int(data["step"]), float(data["score"])
    return None


def _write_best(model_dir: str, best) -> None:
    path = os.path.join(model_dir, "best_checkpoint.json")
    with open(path + ".tmp", "w") as handle:
        json.dump({"step": best[0], "score": best[1]}, handle)
    os.replace(path + ".tmp", path)


def _prune(manager, keep: int, best_step: int | None, model_dir: str) -> None:
    steps = sorted(manager.all_steps())
    keep_steps = set(steps[-keep:]) if keep > 0 else set(steps)
    if best_step is not None:
        keep_steps.add(best_step)
    for step in steps:
        if step not in keep_steps:
            manager.delete(step)
            shutil.rmtree(os.path.join(model_dir, "data_state", str(step)), ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------


def evaluate_lists(
    ranker: Ranker,
    lists,
    qrels: Mapping[str, Mapping[str, int]] | None,
    measures=metrics_lib.DEFAULT_MEASURES,
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Scores per-query candidate lists and evaluates the run over the whole set (per query,
    then mean). `lists` yields (qid, docids, tokens [n, T], grades [n]); without `qrels` the
    grades of the candidates are the judgments."""
    run: dict[str, dict[str, float]] = {}
    derived: dict[str, dict[str, int]] = {}
    pending_ids, pending_tokens = [], []

    def flush():
        if not pending_tokens:
            return
        scores = ranker.score_tokens(pending_tokens)
        for (qid, docid), score in zip(pending_ids, scores):
            run.setdefault(qid, {})[docid] = float(score)
        pending_ids.clear()
        pending_tokens.clear()

    for qid, docids, tokens, grades in lists:
        derived[qid] = {d: int(g) for d, g in zip(docids, grades) if g != 0}
        run.setdefault(qid, {})
        for docid, row in zip(docids, tokens):
            pending_ids.append((qid, docid))
            pending_tokens.append(row[: int(np.count_nonzero(row))])
        if len(pending_tokens) >= 8 * ranker.batch_size:
            flush()
    flush()
    result = metrics_lib.evaluate_run(run, qrels if qrels is not None else derived, measures)
    return result, run


class DevEvaluator:
    """Dev re-ranking during training: the scorer (compiled once) and the qrels (read once) are
    kept across evaluations; each call scores the current params and writes the TREC run."""

    def __init__(
        self,
        model,
        partitioner,
        model_dir,
        eval_task,
        eval_split,
        feature_lengths,
        batch_size,
        qrels_path,
        measures,
        vocab_path,
    ):
        from rankt5_jax import io

        scorer_model = build_model(dict(model.spec(), t5=model.config.replace(dropout_rate=0.0)))
        self.ranker = None
        self._make_ranker = lambda params: Ranker(
            scorer_model,
            params,
            Vocabulary(vocab_path),
            max_length=int(feature_lengths["inputs"]),
            batch_size=batch_size,
            partitioner=partitioner,
        )
        self.qrels = io.read_qrels(qrels_path) if qrels_path else None
        self.task, self.split, self.lengths = eval_task, eval_split, feature_lengths
        self.measures = measures
        self.runs_dir = os.path.join(model_dir, "eval_runs")

    def __call__(self, params, step: int) -> dict[str, float]:
        from rankt5_jax import io

        if self.ranker is None:
            self.ranker = self._make_ranker(params)
        else:
            self.ranker.set_params(params)
        lists = eval_lists(self.task, self.lengths, self.split)
        result, run = evaluate_lists(self.ranker, lists, self.qrels, self.measures)
        os.makedirs(self.runs_dir, exist_ok=True)
        io.write_trec_run(
            os.path.join(self.runs_dir, f"step_{step}.run"), run, tag=f"rankt5_step{step}"
        )
        return result


# ----------------------------------------------------------------------------------------------
# CLI entry: rankt5 train --gin_file=... --gin.NAME=VALUE
# ----------------------------------------------------------------------------------------------


def parse_gin_flags(argv: list[str]) -> tuple[list[str], list[str]]:
    files, bindings = [], []
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg.startswith("--gin_file="):
            files.append(arg.split("=", 1)[1])
        elif arg == "--gin_file" and args:
            files.append(args.pop(0))
        elif arg.startswith("--gin."):
            name, _, value = arg[len("--gin.") :].partition("=")
            if not value and args:
                value = args.pop(0)
            bindings.append(f"{name} = {value}")
        elif arg.startswith("--gin_bindings="):
            bindings.append(arg.split("=", 1)[1])
        else:
            raise ConfigError(f"unknown flag {arg!r}: use --gin_file=FILE and --gin.NAME=VALUE")
    if not files:
        raise ConfigError("train needs at least one --gin_file")
    return files, bindings


def _unset_macros() -> list[str]:
    """Macros referenced (`%NAME`) by a binding but never given a value."""
    from gin import config as gin_config

    bound = {name for (name, selector) in gin_config._CONFIG if selector == "gin.macro"}
    referenced = set()

    def visit(value):
        if isinstance(value, gin_config.ConfigurableReference) and value.selector == "gin.macro":
            referenced.add(value.scoped_selector.rsplit("/", 1)[0])
        elif isinstance(value, list | tuple):
            for item in value:
                visit(item)
        elif isinstance(value, dict):
            for item in value.values():
                visit(item)

    for params in gin_config._CONFIG.values():
        for value in params.values():
            visit(value)
    return sorted(referenced - bound)


def main_from_flags(argv: list[str]) -> TrainResult:
    if "--multihost" in argv:  # TPU pod slices / multi-node GPU: one process per host
        argv = [a for a in argv if a != "--multihost"]
        jax.distributed.initialize()
    files, bindings = parse_gin_flags(argv)
    # The repo's gin/ directory first, so `include 'models/tiny.gin'` resolves quietly.
    search = [os.path.join(os.path.dirname(os.path.dirname(__file__)), "gin"), os.getcwd()]
    for path in search:
        gin.add_config_file_search_path(path)
    import logging

    import rankt5_jax.tasks_lib  # noqa: F401  (registers gin configurables)

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.CRITICAL)  # gin logs a spurious error before trying its search paths
    try:
        gin.parse_config_files_and_bindings(files, bindings, finalize_config=False)
    except OSError as err:
        raise ConfigError(f"gin: {err}") from err
    except (ValueError, KeyError, TypeError, NameError) as err:
        message = str(err).strip().splitlines()
        raise ConfigError(
            "gin: " + " | ".join(line.strip() for line in message if line.strip())
        ) from err
    finally:
        root.setLevel(level)
    unset = _unset_macros()
    if unset:
        flags = " ".join(f"--gin.{name}=..." for name in unset)
        raise ConfigError(f"gin: macro(s) {', '.join(unset)} not set; pass {flags}")
    try:
        result = train()
    except (ValueError, TypeError) as err:
        if "gin" in str(err).lower() or "REQUIRED" in str(err):
            raise ConfigError(f"gin: {str(err).splitlines()[0]}") from err
        raise
    print(f"done: step {result.step}", file=sys.stderr)
    return result
