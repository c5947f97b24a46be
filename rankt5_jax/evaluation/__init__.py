"""Evaluation: trec_eval-equal measures over `{qid: {docid: score}}` runs, and their seqio adapter.

`measures` (RR@k, nDCG@k, AP, R@k, P@k; trec_eval's tie order and aggregation) and
`seqio_metrics` (whole-set metrics for t5x eval.py). Pure Python and numpy: no JAX.

May import: `rankt5_jax.errors` only. The lowest stage: every other stage may import it.
"""
