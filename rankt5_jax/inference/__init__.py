"""Inference: `Ranker` (load any checkpoint, score pairs in length-bucketed, token-budget
batches, optionally sharded over a mesh) and `rerank` (`rankt5 rerank`: a run in, a run out).

May import: `errors`, `evaluation`, `data`, `modeling`, `checkpoints`, `retrieval`.
"""
