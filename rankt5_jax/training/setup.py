"""Model and data setup for training: the gin model factory and the seqio input streams."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import numpy as np

import gin
from rankt5_jax.data import feature_converters
from rankt5_jax.data.vocab import Vocabulary, padded_vocab_size
from rankt5_jax.errors import CheckpointError, ConfigError
from rankt5_jax.modeling import registry
from rankt5_jax.modeling.base import BaseRankingModel
from rankt5_jax.modeling.network import get_config


@gin.configurable(module="trainer")
def make_model(
    variant: str = gin.REQUIRED,
    size: str = gin.REQUIRED,
    vocab_path: str = gin.REQUIRED,
    loss: str | None = None,
    loss_kwargs: Mapping[str, Any] | None = None,
    score_token: str = registry.SCORE_TOKEN,
    dtype: str = "float32",
    dropout_rate: float = 0.1,
    remat: str = "none",
    pooling: str = "first",
    num_global_layers: int | None = None,
    features: Mapping[str, Any] | None = None,
    config_overrides: Mapping[str, Any] | None = None,
    template: str | None = None,
) -> BaseRankingModel:
    """Builds a ranking model of a registered `variant` from a named T5 size and a vocabulary.

    The options a variant takes are the fields of its family's config dataclass
    (`registry.get(variant).config_class`); an argument for an option the family does not have
    is refused:

    `loss` (default `softmax`) and `loss_kwargs`: the families trained with a ranking loss
    (RankT5 EncDec and Enc, FiT5 EncDec and Enc); monoT5 and FiT5 train with their own
    objectives and take neither.

    List-aware families (`fit5`, `fit5_encdec`, `fit5_enc`) take `num_global_layers` (default
    3: after the last three encoder layers, as the paper) and `features`, the
    `data.features.FeatureConfig` fields (`mode`: fixed, per_query or none; `low`, `high`;
    `template`).

    `template`: the pair input template of the families that have one (default the family's:
    `Query: {q} Document: {d}`, monoT5's `Query: {q} Document: {d} Relevant:`); the training
    task must build the same inputs (`tasks_lib.register_prepared_task.template`).

    For the named T5 sizes the embedding has 32128 rows (standard vocabulary); the `tiny` sizes
    take the vocabulary's size rounded up to a multiple of 128.
    """
    entry = registry.get(variant)
    family = entry.config_class
    fields = {field.name for field in dataclasses.fields(family)}
    if not family.list_aware and (num_global_layers or features is not None):
        raise ConfigError(
            f"variant {variant!r} scores pairs independently: num_global_layers and features "
            "are FiT5 settings (variants fit5, fit5_encdec, fit5_enc)"
        )
    if "loss" not in fields and (loss is not None or loss_kwargs):
        raise ConfigError(
            f"variant {variant!r} trains with its own objective, not a ranking loss: "
            "remove trainer.make_model.loss / loss_kwargs"
        )
    if "template" not in fields and template is not None:
        raise ConfigError(f"variant {variant!r} has no pair template: remove its template")
    vocab = Vocabulary(vocab_path)
    overrides = dict(config_overrides or {})
    if family.list_aware:
        overrides.setdefault(
            "num_global_layers",
            family.global_layers if num_global_layers is None else num_global_layers,
        )
    if size.startswith("tiny"):
        overrides.setdefault("vocab_size", padded_vocab_size(vocab.size))
    config = get_config(
        size, dtype=dtype, dropout_rate=dropout_rate, remat=remat, pooling=pooling, **overrides
    )
    if vocab.size > config.vocab_size:
        raise ConfigError(f"vocabulary has {vocab.size} ids, model embeds {config.vocab_size}")
    spec = registry.make_spec(variant, config, vocab, score_token)
    given = dict(features=dict(features or {}), loss=loss, loss_kwargs=loss_kwargs)
    spec.update({key: value for key, value in given.items() if key in fields})
    if template is not None:
        spec["template"] = template
    return registry.build_model(spec)


def train_dataset(
    task_name: str,
    feature_lengths: Mapping[str, int],
    batch_size: int,
    seed: int,
    shard: int | None = None,
    num_shards: int | None = None,
):
    """A training stream (seqio task -> feature converter -> batches of `batch_size`, tf.data).

    `shard` of `num_shards`: seqio's `ShardInfo` (its files, or its examples where there are
    fewer files than shards); by default this process's shard of `jax.process_count()`, with
    `batch_size` the global batch (each process yields `batch_size / processes`).
    """
    import seqio

    if num_shards is None:
        num_shards, shard = jax.process_count(), jax.process_index()
        batch_size //= num_shards
    shard_info = seqio.ShardInfo(index=shard, num_shards=num_shards) if num_shards > 1 else None
    dataset = seqio.get_dataset(
        task_name,
        dict(feature_lengths),
        dataset_split="train",
        shuffle=True,
        num_epochs=None,
        seed=seed,
        shard_info=shard_info,
        feature_converter=feature_converters.for_task(task_name),
    )
    return dataset.batch(batch_size, drop_remainder=True).prefetch(2)


def shards_of_rows(rows: tuple[int, int], batch_size: int, data_shards: int) -> range:
    """The data shards whose lists fall in global batch rows `[lo, hi)` (shard `s` fills rows
    `s * B/S .. (s + 1) * B/S` of every step)."""
    per = batch_size // data_shards
    lo, hi = rows
    return range(lo // per, -(-hi // per))


class TrainStream:
    """This process's rows of every global training batch, read from `data_shards` shards.

    A step's global batch of `batch_size` lists is shard 0's next `B/S` lists, then shard 1's,
    and so on (shard `s` is seqio's `ShardInfo(s, S)`: its own files, or its own examples). A
    process reads only the shards that overlap the batch rows its devices hold (`rows`, from the
    batch sharding) and yields those rows. The global batches therefore depend on `S`, never
    on how many processes read them: 1 process x 8 devices and 2 processes x 4 devices with the
    same `S` train on the same lists in the same order, and the data position (one tf.data
    iterator state per shard) resumes on any number of processes. With `S` equal to the number
    of processes (the default for a fresh run) each process reads its own shard, as T5X does.
    """

    def __init__(
        self,
        task_name: str,
        feature_lengths: Mapping[str, int],
        batch_size: int,
        seed: int,
        data_shards: int,
        rows: tuple[int, int],
    ):
        import tensorflow as tf

        if data_shards < 1 or batch_size % data_shards:
            raise ConfigError(
                f"batch_size {batch_size} is not a multiple of data_shards {data_shards}"
            )
        self.rows, self.data_shards = rows, data_shards
        self.shards = shards_of_rows(rows, batch_size, data_shards)
        per = batch_size // data_shards
        self._offset = rows[0] - self.shards.start * per  # first row of ours in our shards' rows
        self._iterators = {}
        self._checkpoints = {}
        for shard in self.shards:
            dataset = train_dataset(
                task_name, feature_lengths, per, seed, shard=shard, num_shards=data_shards
            )
            self._iterators[shard] = iter(dataset)
            self._checkpoints[shard] = tf.train.Checkpoint(iterator=self._iterators[shard])

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        parts = [next(self._iterators[shard]) for shard in self.shards]
        lo, hi = self._offset, self._offset + self.rows[1] - self.rows[0]
        return {
            key: np.concatenate([part[key].numpy() for part in parts])[lo:hi] for key in parts[0]
        }

    def save(self, prefix: Callable[[int], str], shards: Iterable[int]) -> None:
        """Writes the iterator state of `shards` (of ours) to `prefix(shard)`."""
        for shard in shards:
            self._checkpoints[shard].write(prefix(shard))

    def restore(self, prefix: Callable[[int], str]) -> None:
        """Restores every shard's iterator state from `prefix(shard)`; a missing one is a
        `CheckpointError` naming it."""
        for shard in self.shards:
            path = prefix(shard)
            if not os.path.exists(path + ".index"):
                raise CheckpointError(f"{path}: data position of shard {shard} is missing")
            self._checkpoints[shard].read(path).assert_consumed()


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
