"""Modeling: the Flax T5 network, one module per model family, losses, in-graph metrics, the
variant registry and the parameter partitioning rules.

The shared core: `config` (`T5Config`, sizes), `layers` (T5's blocks with T5X parameter and axis
names), `network` (the encoder/decoder stacks and `Transformer`), `base` (the `BaseRankingModel`
contract: `score_lists([B, L, T]) -> [B, L]`; `FamilyConfig`, the dataclass a family declares its
options in), `heads` (score heads families share). The families, each a room of its own: `rankt5`
(RankT5EncDec, RankT5Enc), `monot5` (MonoT5), `fit5` (FiT5, FiT5EncDec, FiT5Enc and the global
encoder), `ur2n` + `xtr` (UR2N's XTR layer and its training). `models` gathers every class's name;
`registry` lists the variants; `losses` (Rax), `metrics` (Rax, in graph), `partitioning` (mesh
and T5X logical-axis rules), `multihost`.

May import: `errors`, `evaluation`, `data`.
"""
