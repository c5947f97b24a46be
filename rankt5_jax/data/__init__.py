"""Data: file formats, vocabulary and input template, `prepare`, seqio preprocessors, feature
converters, the seqio task library and generated data.

`formats` (corpus, queries, qrels and run readers/writers with `file:line` errors), `vocab`
(SentencePiece with T5 extra ids; the `Query: {q} Document: {d}` template built from tokens),
`prepare` (streaming per-query TFRecords), `preprocessors`, `feature_converters`, `tasks_lib`,
`synthetic` (a learnable corpus and a tiny vocabulary for the demo and tests).

May import: `errors`, `evaluation`.
"""
