"""seqio FeatureConverter for list-shaped ranking features.

Task features (per query)            Model features
  inputs   int32 [L, T]        ->      encoder_input_tokens   int32 [L, T]
  targets  int32 [L, 1]        ->      decoder_input_tokens   int32 [L, 1]  (zeros: start token)
                                       decoder_target_tokens  int32 [L, 1]
  label    float32 [L]         ->      label                  float32 [L]
  mask     bool [L]            ->      mask                   bool [L]

Batching adds the leading `B`. Packing does not apply to lists (`pack=True` is refused).
`task_feature_lengths` is `{"inputs": T, "targets": 1}`; the list size L comes from the data (or
is checked against `list_size` when given). Usable as `FEATURE_CONVERTER_CLS(pack=False)` and with
every option bound through gin.

UR2N's XTR task (`tasks_lib.register_xtr_task`) has its own converter, `XTRFeatureConverter`:

  queries  int32 [Tq]          ->      query_tokens           int32 [Tq]
  inputs   int32 [M, Td]       ->      doc_tokens             int32 [M, Td]  (positive first)

with `task_feature_lengths` `{"inputs": Td, "queries": Tq}`. `for_task(name)` picks the converter
a registered task needs.
"""

from __future__ import annotations

from collections.abc import Mapping

import seqio
import tensorflow as tf

FeatureSpec = seqio.FeatureConverter.FeatureSpec


class RankingFeatureConverter(seqio.FeatureConverter):
    """Maps list-shaped task features to RankT5 model features (see module docstring).

    Args:
      pack: must be False (lists are not packed).
      list_size: expected L; None accepts any (fixed by the preprocessors).
      passthrough_features: extra features to carry (e.g. `qid`, `docids` for evaluation).
    """

    TASK_FEATURES = {
        "inputs": FeatureSpec(dtype=tf.int32, rank=2, sequence_dim=1),
        "targets": FeatureSpec(dtype=tf.int32, rank=2, sequence_dim=1),
    }
    MODEL_FEATURES = {
        "encoder_input_tokens": FeatureSpec(dtype=tf.int32, rank=2, sequence_dim=1),
        "decoder_input_tokens": FeatureSpec(dtype=tf.int32, rank=2, sequence_dim=1),
        "decoder_target_tokens": FeatureSpec(dtype=tf.int32, rank=2, sequence_dim=1),
        "label": FeatureSpec(dtype=tf.float32, rank=1, sequence_dim=0),
        "mask": FeatureSpec(dtype=tf.bool, rank=1, sequence_dim=0),
    }
    PACKING_FEATURE_DTYPES = {}

    def __init__(self, pack: bool = False, list_size: int | None = None, **kwargs):
        if pack:
            raise ValueError("RankingFeatureConverter: lists cannot be packed; use pack=False")
        self.list_size = list_size
        super().__init__(pack=False, **kwargs)

    def _convert_features(
        self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]
    ) -> tf.data.Dataset:
        length = int(task_feature_lengths["inputs"])
        passthrough = set(self._passthrough_features)

        def convert(features):
            for key in ("label", "mask"):
                if key not in features:
                    raise ValueError(f"RankingFeatureConverter needs a '{key}' feature")
            inputs = features["inputs"][:, :length]
            pad = length - tf.shape(inputs)[1]
            inputs = tf.pad(inputs, [[0, 0], [0, pad]])
            decoder_inputs = tf.zeros_like(features["targets"][:, :1])
            out = {
                "encoder_input_tokens": tf.ensure_shape(inputs, [None, length]),
                "decoder_input_tokens": decoder_inputs,
                "decoder_target_tokens": features["targets"][:, :1],
                "label": tf.cast(features["label"], tf.float32),
                "mask": tf.cast(features["mask"], tf.bool),
            }
            for key in passthrough:
                out[key] = features[key]
            return out

        return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def _validate_dataset(self, ds, expected_features, expected_lengths, strict, error_label):
        if self.list_size is None:
            expected_lengths = {
                k: v for k, v in expected_lengths.items() if k not in ("label", "mask")
            }
        return super()._validate_dataset(
            ds, expected_features, expected_lengths, strict, error_label
        )

    def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> dict:
        lengths = {
            "encoder_input_tokens": int(task_feature_lengths["inputs"]),
            "decoder_input_tokens": 1,
            "decoder_target_tokens": 1,
            "label": self.list_size or 0,
            "mask": self.list_size or 0,
        }
        for key in self._passthrough_features:
            lengths[key] = task_feature_lengths.get(key, self.list_size or 0)
        return lengths


class XTRFeatureConverter(seqio.FeatureConverter):
    """UR2N's XTR examples -> `query_tokens [Tq]`, `doc_tokens [M, Td]` (see module docstring)."""

    TASK_FEATURES = {
        "queries": FeatureSpec(dtype=tf.int32, rank=1, sequence_dim=0),
        "inputs": FeatureSpec(dtype=tf.int32, rank=2, sequence_dim=1),
    }
    MODEL_FEATURES = {
        "query_tokens": FeatureSpec(dtype=tf.int32, rank=1, sequence_dim=0),
        "doc_tokens": FeatureSpec(dtype=tf.int32, rank=2, sequence_dim=1),
    }
    PACKING_FEATURE_DTYPES = {}

    def __init__(self, pack: bool = False, **kwargs):
        if pack:
            raise ValueError("XTRFeatureConverter: examples cannot be packed; use pack=False")
        super().__init__(pack=False, **kwargs)

    def _convert_features(
        self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]
    ) -> tf.data.Dataset:
        doc_length = int(task_feature_lengths["inputs"])
        query_length = int(task_feature_lengths["queries"])

        def convert(features):
            queries = features["queries"][:query_length]
            docs = features["inputs"][:, :doc_length]
            queries = tf.pad(queries, [[0, query_length - tf.shape(queries)[0]]])
            docs = tf.pad(docs, [[0, 0], [0, doc_length - tf.shape(docs)[1]]])
            return {
                "query_tokens": tf.ensure_shape(queries, [query_length]),
                "doc_tokens": tf.ensure_shape(docs, [None, doc_length]),
            }

        return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> dict:
        return {
            "query_tokens": int(task_feature_lengths["queries"]),
            "doc_tokens": int(task_feature_lengths["inputs"]),
        }


def for_task(task_name: str) -> seqio.FeatureConverter:
    """The converter of a registered task's examples: `XTRFeatureConverter` for UR2N's XTR
    tasks, `RankingFeatureConverter` for everything else."""
    from rankt5_jax.data.tasks_lib import is_xtr_task

    if is_xtr_task(task_name):
        return XTRFeatureConverter(pack=False)
    return RankingFeatureConverter(pack=False)
