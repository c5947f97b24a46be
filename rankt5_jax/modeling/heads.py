"""The score heads families share, as model classes a family's class puts in its bases:

  DecoderColumnsModel   pairs scored from decoder step 0: only the requested logit columns
  ScoreTokenModel       the score token's step-0 logit, any ranking loss (RankT5-EncDec)
  PooledModel           Dense(Pool(Encoder)), any ranking loss (RankT5-Enc)
  TrueFalseModel        log-softmax of "true" over {"true", "false"} at step 0 (monoT5)

A family (`rankt5`, `monot5`, `fit5`) adds its config dataclass, its variant name and what is its
own (monoT5's token loss, FiT5's global encoder and list-aware loss).
"""

from __future__ import annotations

from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from rankt5_jax.errors import ConfigError
from rankt5_jax.modeling.base import PairwiseModel, RankingLossModel
from rankt5_jax.modeling.config import T5Config
from rankt5_jax.modeling.network import Transformer


class DecoderColumnsModel(PairwiseModel):
    """Pairs scored from decoder step 0: only the requested columns of the output projection."""

    def __init__(self, config: T5Config, **kwargs: Any):
        if not config.has_decoder:
            raise ConfigError(f"{type(self).__name__} needs a decoder (config.has_decoder=True)")
        super().__init__(config, **kwargs)

    def columns(self, params, tokens, token_ids, dropout_rng=None, list_mask=None) -> jax.Array:
        """`tokens [N, T] -> [N, len(token_ids)]` float32 step-0 logits of `token_ids`."""
        return self._apply(
            params,
            Transformer.encdec_score_columns,
            tokens,
            tuple(token_ids),
            dropout_rng is None,
            list_mask,
            dropout_rng=dropout_rng,
        )


class ScoreTokenModel(RankingLossModel, DecoderColumnsModel):
    """Score = decoder step-0 logit of the score token (`score_token_id`, `<extra_id_10>`); only
    that column of the output projection is computed."""

    score_token_id: int

    def pair_scores(self, params, tokens, dropout_rng=None, list_mask=None):
        return self.columns(params, tokens, (self.score_token_id,), dropout_rng, list_mask)[:, 0]


class PooledModel(RankingLossModel, PairwiseModel):
    """Score = Dense(Pool(Encoder(s))); pooling `first` (default) or `mean` (`config.pooling`).
    The model has no decoder parameters."""

    with_score_head: ClassVar[bool] = True

    def __init__(self, config: T5Config, **kwargs: Any):
        super().__init__(config.replace(has_decoder=False, num_decoder_layers=0), **kwargs)

    def pair_scores(self, params, tokens, dropout_rng=None, list_mask=None):
        return self._apply(
            params,
            Transformer.pooled_score,
            tokens,
            dropout_rng is None,
            list_mask,
            dropout_rng=dropout_rng,
        )


class TrueFalseModel(DecoderColumnsModel):
    """Score = log-softmax of "true" over {"true", "false"} at decoder step 0
    (`true_token_id`, `false_token_id`)."""

    true_token_id: int
    false_token_id: int

    def pair_scores(self, params, tokens, dropout_rng=None, list_mask=None):
        columns = self.true_false_columns(params, tokens, dropout_rng, list_mask)
        return jax.nn.log_softmax(columns, axis=-1)[:, 0]

    def true_false_columns(self, params, tokens, dropout_rng=None, list_mask=None):
        """`[N, 2]` step-0 logits of ("true", "false")."""
        token_ids = (self.true_token_id, self.false_token_id)
        return self.columns(params, tokens, token_ids, dropout_rng, list_mask)

    @staticmethod
    def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
        """Mean of `values [N]` over the real candidates (`mask`, any shape of N)."""
        weights = mask.reshape(-1).astype(jnp.float32)
        return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)
