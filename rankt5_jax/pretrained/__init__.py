"""Pretrained weights shipped with the package (parameters only, our model-directory layout).

`TINY_PSEUDO_QUERY`: the demo's tiny RankT5-EncDec (`experiments/smoke_cpu.gin`: 2+2 layers,
d_model 32, the demo's 600-piece SentencePiece vocabulary), pretrained on pseudo-queries of the
demo's words so that it compares the passage with the query, as a pretrained T5 does
(`bench/pretrain_tiny.py` rebuilds it: `make pretrained`; how and why in its
`PROVENANCE.json`, `docs/learning.md` "Does the ranker read the query?"). `make demo` fine-tunes
from it (`--gin.INIT_CHECKPOINT`); training checks that the data's vocabulary has its pieces.
It is for the demo's generated data only: its vocabulary knows no other words.
"""

import os

import gin

TINY_PSEUDO_QUERY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny_pseudo_query")


@gin.configurable
def tiny_pseudo_query() -> str:
    """`TINY_PSEUDO_QUERY` for gin files (`experiments/smoke_cpu_pretrained.gin`)."""
    return TINY_PSEUDO_QUERY


@gin.configurable
def tiny_pseudo_query_vocab() -> str:
    """Its SentencePiece model: generated data read through it matches its embeddings."""
    return os.path.join(TINY_PSEUDO_QUERY, "spiece.model")
