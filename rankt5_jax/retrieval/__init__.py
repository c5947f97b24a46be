"""Retrieval: first stages that produce candidate runs.

`base`: the `Retriever` contract (`search(queries, k) -> run`, `Retriever.load(index_dir)`).
`bm25`: BM25 on bm25s (`rankt5 retrieve`, a saved and reused index; in memory for the demo).
`token_index` (+ `index_meta`, `index_shards`, `codecs`), `xtr_search`, `xtr_retriever`,
`xtr_encoder`: UR2N's first stage, an XTR token index built with a checkpoint's XTR layer
(`rankt5 index --codec`) and searched with XTR's scoring (`rankt5 search`).
`fusion`: reciprocal rank fusion of runs (`--fuse`).

May import: `errors`, `evaluation`, `data`, `modeling`, `checkpoints`.
"""
