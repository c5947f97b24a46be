"""Retrieval: first stages that produce candidate runs.

`bm25` (BM25 over an in-memory corpus, the demo's first stage).

May import: `errors`, `evaluation`, `data`, `modeling`, `checkpoints`.
"""
