"""Reciprocal rank fusion (Cormack, Clarke and Buettcher, SIGIR 2009): a hybrid first stage.

    fused = fuse_runs([xtr_run, bm25_run])            # k = 60, every document of every run
    rankt5 search ... --fuse bm25.run                 # the XTR run fused with a run file

Each run ranks its documents in trec_eval's order (score descending, then docid descending:
what `rankt5 evaluate` and trec_eval read from the file, so two runs with tied scores fuse as
their files say). A document's fused score is

    RRF(d) = sum over the runs r that hold d of  1 / (k + rank_r(d))      (rank from 1)

with k = 60, the paper's constant (it damps the top ranks' weight; Cormack et al. found it
robust from 10 to 100, and Pyserini, Elasticsearch and Vespa use 60). A query that only some
runs hold is fused from those; `depth` keeps each run's top `depth` documents before fusing, and
`top_k` the fused top `top_k` (ties in trec_eval's order).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rankt5_jax.errors import ConfigError
from rankt5_jax.evaluation.measures import rank_documents

RRF_K = 60

Run = Mapping[str, Mapping[str, float]]


def fuse_runs(
    runs: Sequence[Run], k: float = RRF_K, depth: int | None = None, top_k: int | None = None
) -> dict[str, dict[str, float]]:
    """Reciprocal rank fusion of `runs` (module doc); -> `{qid: {docid: fused score}}`, the
    queries in the order they first appear."""
    if not runs:
        raise ConfigError("fuse_runs needs at least one run")
    if k < 0:
        raise ConfigError(f"the fusion constant k must be >= 0, got {k}")
    for name, value in (("depth", depth), ("top_k", top_k)):
        if value is not None and value < 1:
            raise ConfigError(f"{name} must be positive, got {value}")
    fused: dict[str, dict[str, float]] = {}
    for run in runs:
        for qid, scores in run.items():
            into = fused.setdefault(qid, {})
            ranked = rank_documents(scores)
            for rank, docid in enumerate(ranked[:depth] if depth else ranked, start=1):
                into[docid] = into.get(docid, 0.0) + 1.0 / (k + rank)
    if top_k is not None:
        fused = {
            qid: {d: docs[d] for d in rank_documents(docs)[:top_k]} for qid, docs in fused.items()
        }
    return fused


def fuse_with_file(
    run: Run, path: str, k: float = RRF_K, top_k: int | None = None, strict: bool = True
) -> dict[str, dict[str, float]]:
    """`run` fused with the TREC run file `path` over `run`'s queries (the file's other
    queries are left out), each cut to `top_k` before and after fusing."""
    from rankt5_jax.data import formats

    other = formats.read_run(path, strict=strict)
    other = {qid: other[qid] for qid in run if qid in other}
    return fuse_runs([run, other], k=k, depth=top_k, top_k=top_k)
