"""Retrieval: first stages that produce candidate runs.

`bm25`: BM25 on bm25s (`rankt5 retrieve`, a saved and reused index; in memory for the demo).
`token_index`, `xtr_search`, `xtr_encoder`: UR2N's first stage, an XTR token index built with a
checkpoint's XTR layer (`rankt5 index`) and searched with XTR's scoring (`rankt5 search`).

May import: `errors`, `evaluation`, `data`, `modeling`, `checkpoints`.
"""
