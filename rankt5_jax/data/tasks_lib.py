"""seqio task construction for RankT5: prepared-record tasks and the TFDS MS MARCO task.

`register_prepared_task` registers (idempotently) a training task and/or an evaluation task over
the TFRecords `prepare.py` writes. Training tasks sample lists (seeded, per epoch); evaluation
tasks keep the first `max_candidates` candidates in run order with their ids. Both are gin
configurable, so a gin file can say `TRAIN_TASK = @tasks_lib.register_prepared_task()`.

FiT5 tasks are the same tasks with `features=` (the `data.features.FeatureConfig` fields, a dict
or the config): their inputs are FiT5's template with the first-stage score as a feature
(`preprocessors.build_feature_inputs`), from records that carry scores, titles and bodies. The
features must be the ones the model saves (`trainer.make_model.features`): the gin files pass one
macro, `FEATURES`, to both. `task_features(name)` returns a task's settings (None for RankT5's
template), for checks against a model.

`register_xtr_task` registers UR2N's XTR training task (a query, its positive and one hard
negative, each encoded on its own; `is_xtr_task` tells them apart).

`ListTask` is a `seqio.Task` whose output trimming cuts only the token axis of `[L, T]` features
(seqio's default would cut the list axis).

Records and vocabularies may be in a bucket (`gs://`): the records are read from copies on the
host, each process downloading the files its seqio shard reads (`BucketRecordSource`).
"""

from __future__ import annotations

import functools
import glob
from collections.abc import Mapping
from typing import Any

import seqio
import tensorflow as tf

import gin
from rankt5_jax.data import paths, preprocessors
from rankt5_jax.data.features import FeatureConfig
from rankt5_jax.data.prepare import feature_description
from rankt5_jax.data.vocab import RANKT5_TEMPLATE, model_file
from rankt5_jax.errors import ConfigError

DEFAULT_EXTRA_IDS = 100
_TASK_FEATURES: dict[str, FeatureConfig | None] = {}
# Pair tasks registered here: their registration arguments, and the template their inputs build.
_PAIR_TASKS: dict[str, dict[str, Any]] = {}
_PAIR_TASK_BUILT: dict[str, str] = {}


class ListTask(seqio.Task):
    """A seqio Task for list-shaped features: trims only the last (token) axis of outputs."""

    def _trim_output_features(self, dataset, sequence_length):
        if not sequence_length:
            return dataset
        features = self.output_features

        def trim(example):
            out = dict(example)
            for key in features:
                if key in out and sequence_length.get(key) is not None:
                    length = sequence_length[key]
                    length = length[-1] if isinstance(length, list | tuple) else length
                    out[key] = out[key][..., :length]
            return out

        return dataset.map(trim, num_parallel_calls=tf.data.AUTOTUNE)


@functools.cache
def get_vocabulary(spm_path: str, extra_ids: int = DEFAULT_EXTRA_IDS) -> seqio.Vocabulary:
    return seqio.SentencePieceVocabulary(model_file(spm_path), extra_ids=extra_ids)


def output_features(spm_path: str) -> dict[str, seqio.Feature]:
    vocab = get_vocabulary(spm_path)
    return {
        "inputs": seqio.Feature(vocab, add_eos=False, rank=2, dtype=tf.int32),
        "targets": seqio.Feature(vocab, add_eos=False, rank=2, dtype=tf.int32, required=False),
    }


def _split_patterns(data_dir: str, splits) -> dict[str, str]:
    patterns = {}
    for split in splits:
        pattern = paths.join(data_dir, f"{split}.tfrecord-*")
        found = paths.cached(pattern, "records") if paths.is_remote(pattern) else glob.glob(pattern)
        if not found:
            raise ConfigError(f"no prepared records for split {split!r}: {pattern}")
        patterns[split] = pattern
    return patterns


class BucketRecordSource(seqio.TFExampleDataSource):
    """Prepared records in a bucket (`gs://`), read from copies on this host: `get_dataset`
    downloads the files its shard reads (`ShardInfo`: every S-th file; all files where there
    are fewer than S), once per host (`paths.cached`), and reads them as seqio reads local
    files. TensorFlow's own GCS client is never used: it has no endpoint setting (no emulator
    can test it), and a Python generator streaming the objects into tf.data would lose the
    exact resume (tf.data cannot save its iterator state)."""

    def __init__(self, split_to_filepattern: Mapping[str, str], feature_description):
        self._objects = {
            split: paths.cached(pattern, "records")
            for split, pattern in split_to_filepattern.items()
        }
        local = {split: [o.local for o in objs] for split, objs in self._objects.items()}
        super().__init__(split_to_filepattern=local, feature_description=feature_description)

    def fetch(self, split: str, shard_info: seqio.ShardInfo | None = None) -> list[str]:
        """Downloads the files of `split` that `shard_info` reads; -> their local paths."""
        objects = self._objects[split]
        if shard_info and len(objects) >= shard_info.num_shards:
            objects = objects[shard_info.index :: shard_info.num_shards]
        paths.fetch(objects)
        return [o.local for o in objects]

    def get_dataset(self, split="train", shuffle=True, seed=None, shard_info=None, **kwargs):
        self.fetch(split, shard_info)
        return super().get_dataset(split, shuffle, seed, shard_info, **kwargs)


def _record_source(patterns: Mapping[str, str]) -> seqio.TFExampleDataSource:
    remote = any(paths.is_remote(pattern) for pattern in patterns.values())
    source_cls = BucketRecordSource if remote else seqio.TFExampleDataSource
    return source_cls(split_to_filepattern=patterns, feature_description=feature_description())


@gin.configurable
def register_prepared_task(
    name: str = gin.REQUIRED,
    data_dir: str = gin.REQUIRED,
    vocab_path: str = gin.REQUIRED,
    mode: str = "train",
    splits: tuple[str, ...] = ("train",),
    list_size: int = 36,
    seed: int = 0,
    upsample_positives: bool = False,
    max_candidates: int = 1000,
    max_query_length: int = 64,
    num_epochs: int | None = None,
    negatives: str = "random",
    features: Mapping[str, Any] | FeatureConfig | None = None,
    template: str | None = None,
) -> str:
    """Registers a task over prepared TFRecords and returns its name.

    Args:
      name: task name (re-registering the same name replaces it).
      data_dir: directory holding `<split>.tfrecord-*` from `rankt5 prepare`.
      vocab_path: SentencePiece model (100 extra ids are added, as in T5).
      mode: `train` (sampled lists) or `eval` (candidate lists with ids).
      splits: the splits to expose.
      list_size: m, items per training list (paper: 36).
      seed: sampling seed; lists are a function of (seed, qid, epoch).
      upsample_positives: repeat the positive to the number of negatives (pointwise losses).
      max_candidates: candidates per evaluation list (paper: 1000).
      max_query_length: tokens kept of `Query: {q}` (FiT5: of the query text).
      num_epochs: training epochs in the stream (None: forever).
      negatives: training lists' negatives, "random" (uniform samples, the RankT5 paper) or
        "top" (the top-ranked candidates not judged relevant, FiT5).
      features: FiT5's feature settings (`FeatureConfig` fields: mode fixed|per_query|none,
        low, high, template); None (default): RankT5's `Query: {q} Document: {d}` template.
      template: the pair template without `features` (default RankT5's; monoT5's published
        one is `Query: {q} Document: {d} Relevant:`, `data.vocab.MONOT5_TEMPLATE`): it must be
        the model's (`trainer.make_model.template`, the family's by default).
    """
    if mode not in ("train", "eval"):
        raise ConfigError(f"mode must be 'train' or 'eval', got {mode!r}")
    if negatives not in preprocessors.NEGATIVES:
        raise ConfigError(f"negatives must be one of {preprocessors.NEGATIVES}, got {negatives!r}")
    config = None if features is None else FeatureConfig.from_dict(features)
    if config is not None and template is not None:
        raise ConfigError("give features (FiT5's template) or a pair template, not both")
    source = _record_source(_split_patterns(data_dir, splits))
    if config is not None:
        _check_fit5_records(source, splits)
    with_features = config is not None
    if mode == "train":
        list_step = functools.partial(
            preprocessors.sample_training_lists,
            list_size=list_size,
            seed=seed,
            upsample_positives=upsample_positives,
            num_epochs=num_epochs,
            negatives=negatives,
            with_features=with_features,
        )
    else:
        list_step = functools.partial(
            preprocessors.candidate_lists,
            max_candidates=max_candidates,
            with_features=with_features,
        )
    if config is None:
        input_step = functools.partial(
            preprocessors.build_inputs,
            max_query_length=max_query_length,
            template=template or RANKT5_TEMPLATE,
        )
    else:
        input_step = functools.partial(
            preprocessors.build_feature_inputs, features=config, max_query_length=max_query_length
        )
    steps = [list_step, input_step]
    if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    _TASK_FEATURES[name] = config
    if config is None:  # a pair task: `follow_model_template` may rebuild it with the model's
        _PAIR_TASKS[name] = dict(
            name=name, data_dir=data_dir, vocab_path=vocab_path, mode=mode, splits=splits,
            list_size=list_size, seed=seed, upsample_positives=upsample_positives,
            max_candidates=max_candidates, max_query_length=max_query_length,
            num_epochs=num_epochs, negatives=negatives, template=template,
        )  # fmt: skip
        _PAIR_TASK_BUILT[name] = template or RANKT5_TEMPLATE
    else:
        _PAIR_TASKS.pop(name, None)
    evaluation = {}
    if mode == "eval":  # t5x eval.py: the paper's metrics per query over the whole set
        from rankt5_jax.evaluation.seqio_metrics import seqio_postprocess, seqio_ranking_metric

        evaluation = dict(postprocess_fn=seqio_postprocess, metric_fns=[seqio_ranking_metric])
    seqio.TaskRegistry.add(
        name,
        source=source,
        output_features=output_features(vocab_path),
        preprocessors=steps,
        task_cls=ListTask,
        **evaluation,
    )
    return name


def follow_model_template(name: str | None, template: str | None) -> None:
    """Makes the pair task `name` build the model's pair `template`, so a model trains on the
    inputs it re-ranks (monoT5's `... Relevant:`). A task registered here without a template
    (RankT5's by default) is registered again with the model's; one registered with another
    template is a ConfigError naming both. Tasks registered elsewhere are left as they are."""
    args = _PAIR_TASKS.get(name) if name else None
    if args is None or template is None:
        return
    given = args["template"]
    if given is None:
        if _PAIR_TASK_BUILT[name] != template:
            register_prepared_task(**{**args, "template": template})
            _PAIR_TASKS[name] = args  # it still follows whichever model trains on it
    elif given != template:
        raise ConfigError(
            f"task {name!r} builds {given!r} but the model reads {template!r}: bind "
            "tasks_lib.register_prepared_task.template to the model's template (or leave it "
            "unset to follow the model)"
        )


def task_features(name: str) -> FeatureConfig | None:
    """The FiT5 feature settings a prepared-record task was registered with (None: RankT5's
    template, or a task not registered here)."""
    return _TASK_FEATURES.get(name)


def _check_fit5_records(source: seqio.TFExampleDataSource, splits) -> None:
    """FiT5 needs the records' scores, titles and bodies: a ConfigError now, for records written
    before them, rather than a failure inside the input pipeline."""
    from rankt5_jax.data.prepare import FIT5_FEATURES

    for split in splits:
        if isinstance(source, BucketRecordSource):
            path = source.fetch(split, seqio.ShardInfo(0, len(source.list_shards(split))))[0]
        else:
            path = sorted(source.list_shards(split))[0]
        for raw in tf.data.TFRecordDataset(path).take(1):
            present = tf.train.Example.FromString(raw.numpy()).features.feature
            missing = [key for key in FIT5_FEATURES if key not in present]
            # A record whose lists are empty leaves its list fields out: judge by the candidates.
            if "cand_ids" in present and missing:
                raise ConfigError(
                    f"{path}: prepared records without {', '.join(missing)} (written before "
                    f"FiT5's fields); run `rankt5 prepare` again to train or evaluate FiT5 on "
                    f"split {split!r}"
                )


def xtr_output_features(spm_path: str) -> dict[str, seqio.Feature]:
    """UR2N's task features: `queries [Tq]` and the documents `inputs [M, Td]`."""
    vocab = get_vocabulary(spm_path)
    return {
        "queries": seqio.Feature(vocab, add_eos=False, rank=1, dtype=tf.int32),
        "inputs": seqio.Feature(vocab, add_eos=False, rank=2, dtype=tf.int32),
    }


def is_xtr_task(name: str) -> bool:
    """Whether a registered task gives UR2N's XTR examples (`register_xtr_task`)."""
    task = seqio.get_mixture_or_task(name)
    return "queries" in task.output_features


@gin.configurable
def register_xtr_task(
    name: str = gin.REQUIRED,
    data_dir: str = gin.REQUIRED,
    vocab_path: str = gin.REQUIRED,
    splits: tuple[str, ...] = ("train",),
    seed: int = 0,
    hard_negatives: int = 1,
    num_epochs: int | None = None,
) -> str:
    """Registers UR2N's XTR training task over prepared TFRecords and returns its name.

    Per example: the query (`queries [Tq]`, `Query: {q}` + EOS) and `1 + hard_negatives`
    documents (`inputs [M, Td]`, `Document: {d}` + EOS): a positive (cycling through the
    query's positives across epochs) and hard negatives sampled uniformly from the first-stage
    candidates not judged relevant, as a function of (seed, query id, epoch), exactly as the
    ranking lists are sampled (`preprocessors.sample_training_lists`). A query with fewer
    negatives gets all-zero rows. Feature lengths: `{"inputs": Td, "queries": Tq}`; the feature
    converter is `feature_converters.XTRFeatureConverter`.
    """
    if hard_negatives < 1:
        raise ConfigError(f"hard_negatives must be at least 1, got {hard_negatives}")
    source = _record_source(_split_patterns(data_dir, splits))
    steps = [
        functools.partial(
            preprocessors.sample_training_lists,
            list_size=1 + hard_negatives,
            seed=seed,
            num_epochs=num_epochs,
            negatives="random",
        ),
        preprocessors.build_xtr_inputs,
    ]
    if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    _TASK_FEATURES[name] = None
    seqio.TaskRegistry.add(
        name,
        source=source,
        output_features=xtr_output_features(vocab_path),
        preprocessors=steps,
        task_cls=ListTask,
    )
    return name


# ----------------------------------------------------------------------------------------------
# MS MARCO from TensorFlow Datasets (`huggingface:ms_marco/v2.1`, as the Rax T5X example uses)
# ----------------------------------------------------------------------------------------------


def msmarco_tfds_to_record(example: dict) -> dict:
    """Maps a TFDS `huggingface:ms_marco/v2.1` example (10 Bing passages with `is_selected`) to the
    prepared-record layout: selected passages are positives, all passages are candidates."""
    passages = example["passages"]
    count = tf.minimum(tf.size(passages["passage_text"]), tf.size(passages["is_selected"]))
    texts = passages["passage_text"][:count]
    labels = tf.cast(passages["is_selected"][:count], tf.int64)
    ids = tf.strings.join(
        [tf.strings.as_string(example["query_id"]), tf.strings.as_string(tf.range(tf.size(texts)))],
        separator="_",
    )
    selected = tf.where(labels > 0)[:, 0]
    return {
        "qid": tf.strings.as_string(example["query_id"]),
        "query": example["query"],
        "pos_ids": tf.gather(ids, selected),
        "pos_texts": tf.gather(texts, selected),
        "pos_labels": tf.gather(labels, selected),
        "cand_ids": ids,
        "cand_texts": texts,
        "cand_labels": labels,
    }


@gin.configurable
def register_msmarco_tfds_task(
    name: str = "msmarco_tfds",
    vocab_path: str = gin.REQUIRED,
    tfds_name: str = "huggingface:ms_marco/v2.1",
    tfds_data_dir: str | None = None,
    list_size: int = 10,
    seed: int = 0,
    upsample_positives: bool = False,
) -> str:
    """Registers MS MARCO from TFDS: lists of the query's passages (1 positive + negatives)."""

    def keep_with_positive(dataset):
        dataset = dataset.map(msmarco_tfds_to_record, num_parallel_calls=tf.data.AUTOTUNE)
        return dataset.filter(lambda ex: tf.size(ex["pos_ids"]) > 0)

    if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(
        name,
        source=seqio.TfdsDataSource(tfds_name=tfds_name, tfds_data_dir=tfds_data_dir),
        output_features=output_features(vocab_path),
        preprocessors=[
            keep_with_positive,
            functools.partial(
                preprocessors.sample_training_lists,
                list_size=list_size,
                seed=seed,
                upsample_positives=upsample_positives,
            ),
            preprocessors.build_inputs,
        ],
        task_cls=ListTask,
    )
    return name
