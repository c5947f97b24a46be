"""In-graph ranking metrics (Rax) for training logs: `[B, L]` lists, mean over lists."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import rax


def in_graph_metrics(scores: jax.Array, labels: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
    """MRR@10, NDCG@5, NDCG@10 and MAP of `[B, L]` lists, mean over lists (Rax).

    Lists are per query, so this is a per-query mean over the batch's queries.
    """
    scores = scores.astype(jnp.float32)
    labels = labels.astype(jnp.float32)
    where = mask.astype(bool)
    return {
        "mrr@10": rax.mrr_metric(scores, labels, where=where, topn=10),
        "ndcg@5": rax.ndcg_metric(scores, labels, where=where, topn=5),
        "ndcg@10": rax.ndcg_metric(scores, labels, where=where, topn=10),
        "map": rax.ap_metric(scores, labels, where=where),
    }
