"""All model classes in one namespace (the names this module has always exported).

Each family lives in its own module: `rankt5` (RankT5EncDec, RankT5Enc), `monot5` (MonoT5),
`fit5` (FiT5, FiT5EncDec, FiT5Enc), UR2N's XTR layer in `ur2n` and its training model in `xtr`;
the contract and the shared bases in `base`, the shared score heads in `heads`. The variants are
listed in `registry`.
"""

from rankt5_jax.modeling.base import (
    BaseRankingModel,
    FamilyConfig,
    PairwiseModel,
    RankingLossModel,
    config_from_spec,
)
from rankt5_jax.modeling.fit5 import FiT5, FiT5Enc, FiT5EncDec
from rankt5_jax.modeling.heads import DecoderColumnsModel
from rankt5_jax.modeling.monot5 import MonoT5
from rankt5_jax.modeling.rankt5 import RankT5Enc, RankT5EncDec

__all__ = [
    "BaseRankingModel",
    "DecoderColumnsModel",
    "FamilyConfig",
    "FiT5",
    "FiT5Enc",
    "FiT5EncDec",
    "MonoT5",
    "PairwiseModel",
    "RankT5Enc",
    "RankT5EncDec",
    "RankingLossModel",
    "config_from_spec",
]
