"""The RankT5 family (Zhuang et al., 2023): RankT5-EncDec and RankT5-Enc, trained with any
ranking loss (PointCE, Pair, Softmax, Poly1 or any Rax loss) over `Query: {q} Document: {d}`."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from rankt5_jax.modeling.base import PairTemplateConfig, RankingLossConfig, token_field
from rankt5_jax.modeling.heads import PooledModel, ScoreTokenModel


@dataclasses.dataclass(frozen=True, kw_only=True)
class RankT5EncDecConfig(RankingLossConfig, PairTemplateConfig):
    """`score_token_id`: the token whose step-0 logit is the score (`<extra_id_10>`)."""

    score_token_id: int = token_field(None)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RankT5EncConfig(RankingLossConfig, PairTemplateConfig):
    hf_architecture: ClassVar[str] = "T5EncoderModel"
    score_head: ClassVar[bool] = True


class RankT5EncDec(ScoreTokenModel):
    """RankT5-EncDec: score = decoder step-0 logit of the score token (`<extra_id_10>`).

    Only the score token's column of the output projection is computed.
    """

    variant = "encdec"
    Config = RankT5EncDecConfig


class RankT5Enc(PooledModel):
    """RankT5-Enc: score = Dense(Pool(Encoder(s))); pooling `first` (default) or `mean`.

    The model has no decoder parameters.
    """

    variant = "enc"
    Config = RankT5EncConfig
