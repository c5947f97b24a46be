"""Modeling: the Flax T5 network, ranking models, losses, in-graph metrics, the variant registry
and the parameter partitioning rules.

`network` (T5 with T5X parameter and axis names, score heads), `models` (the `BaseRankingModel`
contract: `score_lists([B, L, T]) -> [B, L]`; RankT5EncDec, RankT5Enc, MonoT5), `registry` (one
table: variant name -> model class, spec token ids, Hugging Face layout), `losses` (Rax),
`metrics` (Rax, in graph), `partitioning` (mesh and T5X logical-axis rules).

May import: `errors`, `evaluation`, `data`.
"""
