"""Retrieval: first stages that produce candidate runs.

`bm25`: BM25 on bm25s (`rankt5 retrieve`, a saved and reused index; in memory for the demo).

May import: `errors`, `evaluation`, `data`, `modeling`, `checkpoints`.
"""
