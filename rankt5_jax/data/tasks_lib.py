"""seqio task construction for RankT5: prepared-record tasks and the TFDS MS MARCO task.

`register_prepared_task` registers (idempotently) a training task and/or an evaluation task over
the TFRecords `prepare.py` writes. Training tasks sample lists (seeded, per epoch); evaluation
tasks keep the first `max_candidates` candidates in run order with their ids. Both are gin
configurable, so a gin file can say `TRAIN_TASK = @tasks_lib.register_prepared_task()`.

`ListTask` is a `seqio.Task` whose output trimming cuts only the token axis of `[L, T]` features
(seqio's default would cut the list axis).
"""

from __future__ import annotations

import functools
import glob
import os

import seqio
import tensorflow as tf

import gin
from rankt5_jax.data import preprocessors
from rankt5_jax.data.prepare import feature_description
from rankt5_jax.errors import ConfigError

DEFAULT_EXTRA_IDS = 100


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
    if not os.path.isfile(spm_path):
        raise ConfigError(f"SentencePiece model not found: {spm_path}")
    return seqio.SentencePieceVocabulary(spm_path, extra_ids=extra_ids)


def output_features(spm_path: str) -> dict[str, seqio.Feature]:
    vocab = get_vocabulary(spm_path)
    return {
        "inputs": seqio.Feature(vocab, add_eos=False, rank=2, dtype=tf.int32),
        "targets": seqio.Feature(vocab, add_eos=False, rank=2, dtype=tf.int32, required=False),
    }


def _split_patterns(data_dir: str, splits) -> dict[str, str]:
    patterns = {}
    for split in splits:
        pattern = os.path.join(data_dir, f"{split}.tfrecord-*")
        if not glob.glob(pattern):
            raise ConfigError(f"no prepared records for split {split!r}: {pattern}")
        patterns[split] = pattern
    return patterns


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
      max_query_length: tokens kept of `Query: {q}`.
      num_epochs: training epochs in the stream (None: forever).
    """
    if mode not in ("train", "eval"):
        raise ConfigError(f"mode must be 'train' or 'eval', got {mode!r}")
    source = seqio.TFExampleDataSource(
        split_to_filepattern=_split_patterns(data_dir, splits),
        feature_description=feature_description(),
    )
    if mode == "train":
        list_step = functools.partial(
            preprocessors.sample_training_lists,
            list_size=list_size,
            seed=seed,
            upsample_positives=upsample_positives,
            num_epochs=num_epochs,
        )
    else:
        list_step = functools.partial(preprocessors.candidate_lists, max_candidates=max_candidates)
    steps = [
        list_step,
        functools.partial(preprocessors.build_inputs, max_query_length=max_query_length),
    ]
    if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
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
