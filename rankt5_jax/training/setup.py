"""Model and data setup for training: the gin model factory and the seqio input streams."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax

import gin
from rankt5_jax.data.feature_converters import RankingFeatureConverter
from rankt5_jax.data.vocab import Vocabulary, padded_vocab_size
from rankt5_jax.errors import ConfigError
from rankt5_jax.modeling import registry
from rankt5_jax.modeling.models import BaseRankingModel, RankingLossModel
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
) -> BaseRankingModel:
    """Builds a ranking model of a registered `variant` from a named T5 size and a vocabulary.

    `loss` (default `softmax`) and `loss_kwargs` apply to the models trained with a ranking loss
    (RankT5 EncDec and Enc); monoT5 trains with token cross-entropy and takes neither.

    FiT5 variants (`fit5`, `fit5_encdec`, `fit5_enc`) take `num_global_layers` (default 3: after
    the last three encoder layers, as the paper) and `features`, the `data.features.FeatureConfig`
    fields (`mode`: fixed, per_query or none; `low`, `high`; `template`); the other variants take
    neither.

    For the named T5 sizes the embedding has 32128 rows (standard vocabulary); the `tiny` sizes
    take the vocabulary's size rounded up to a multiple of 128.
    """
    entry = registry.get(variant)
    if not entry.list_aware and (num_global_layers or features is not None):
        raise ConfigError(
            f"variant {variant!r} scores pairs independently: num_global_layers and features "
            "are FiT5 settings (variants fit5, fit5_encdec, fit5_enc)"
        )
    vocab = Vocabulary(vocab_path)
    overrides = dict(config_overrides or {})
    if entry.list_aware:
        overrides.setdefault(
            "num_global_layers",
            entry.global_layers if num_global_layers is None else num_global_layers,
        )
    if size.startswith("tiny"):
        overrides.setdefault("vocab_size", padded_vocab_size(vocab.size))
    config = get_config(
        size, dtype=dtype, dropout_rate=dropout_rate, remat=remat, pooling=pooling, **overrides
    )
    if vocab.size > config.vocab_size:
        raise ConfigError(f"vocabulary has {vocab.size} ids, model embeds {config.vocab_size}")
    spec = registry.make_spec(variant, config, vocab, score_token)
    if entry.list_aware:
        spec["features"] = dict(features or {})
    if issubclass(entry.load_class(), RankingLossModel):
        spec.update(loss=loss or "softmax", loss_kwargs=loss_kwargs)
    elif loss is not None or loss_kwargs:
        raise ConfigError(
            f"variant {variant!r} trains with its own objective, not a ranking loss: "
            "remove trainer.make_model.loss / loss_kwargs"
        )
    return registry.build_model(spec)


def train_dataset(task_name: str, feature_lengths: Mapping[str, int], batch_size: int, seed: int):
    """The training stream of this host: seqio task -> feature converter -> batches (tf.data).

    With several processes each host reads its own shard and yields `batch_size / processes`
    lists per step.
    """
    import seqio

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
