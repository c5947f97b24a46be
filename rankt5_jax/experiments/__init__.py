"""Experiments: whole pipelines run as the papers run them.

`sweep` (`rankt5 sweep`: zero-shot re-ranking over BEIR-layout folders: first stage, re-rank,
evaluate, one table with the average, resumable per dataset).

May import: `errors`, `evaluation`, `data`, `modeling`, `checkpoints`, `retrieval`, `inference`.
"""
