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
