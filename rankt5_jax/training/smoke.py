"""Generated data as gin-callable pieces, for `gin/experiments/smoke_cpu*.gin` and the demo.

`smoke_data(data_dir)` writes (once) a learnable synthetic collection (see `synthetic.py`), a BM25
candidate run, a SentencePiece vocabulary trained on the text, and prepared TFRecords for a train
split and a held-out dev split, then registers the seqio tasks `smoke_train` and `smoke_dev`.

With `features=` (FiT5's `FeatureConfig` fields) it registers `smoke_fit5_train` and
`smoke_fit5_dev` instead: FiT5's template with the BM25 score as the feature (the records carry
every candidate's run score, and its title). The data is then FiT5's flavour: the generated
documents have titles (unless `titles=False`) and the vocabulary has FiT5's template words and
digits (`synthetic.train_sentencepiece(fit5_words=True)`). `smoke_cpu_fit5.gin` uses it.

The data directory is reused while its `smoke_data.json` says it was written by this version in
the same flavour (titles, vocabulary); otherwise it is written again.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from typing import Any

import gin
from rankt5_jax.data import atomic, prepare, synthetic, tasks_lib
from rankt5_jax.errors import ConfigError
from rankt5_jax.retrieval import bm25

_DONE = "smoke_data.json"
# 2: records with first-stage scores, titles and bodies (FiT5's fields); the flavour recorded.
# 3: the BM25 run through bm25s (Lucene's BM25, stopwords, stemmer, trec_eval's tie order).
_VERSION = 3
# The collections `smoke_data` writes (`data.synthetic`): the demo's, and one whose passages all
# have the same shape (only the query tells the relevant one; docs/learning.md).
_GENERATORS = ("make_collection", "make_same_shape_collection")
_FLAVOUR_DEFAULTS = {
    "random_negatives": 0,
    "train_run": None,
    "train_depth": None,
    "vocab_size": 600,
    "generator": "make_collection",
}


def _is_current(marker: str, flavour: dict) -> bool:
    if not os.path.isfile(marker):
        return False
    with open(marker) as handle:
        info = json.load(handle)
    # (data written before an option was added has that option's default)
    return info.get("version") == _VERSION and all(
        info.get(k, _FLAVOUR_DEFAULTS.get(k)) == v for k, v in flavour.items()
    )


@gin.configurable
def smoke_data(
    data_dir: str = gin.REQUIRED,
    num_queries: int = 240,
    dev_queries: int = 40,
    top_k: int = 30,
    vocab_size: int = 600,
    list_size: int = 8,
    seed: int = 0,
    titles: bool | None = None,
    negatives: str = "random",
    features: Mapping[str, Any] | None = None,
    random_negatives: int = 0,
    train_run: str | None = None,
    train_depth: int | None = None,
    generator: str = "make_collection",
    vocab: str | None = None,
) -> dict:
    """Creates the data under `data_dir` (idempotent) and returns its paths and task names.

    `titles`: generated documents get titles (None: with `features`); `negatives`: the training
    lists' negatives ("random" or "top", see `preprocessors`); `features`: register FiT5 tasks
    with these feature settings (None: RankT5's tasks); `random_negatives`: passages drawn from
    the whole corpus added to each training query's BM25 candidates (`prepare.prepare`), so the
    training lists (and the XTR task's hard negative) mix BM25's and random negatives;
    `train_run`: a run over the training queries (e.g. the model's own XTR retrieval, UR2N's
    unified regimen) whose top `top_k` are interleaved rank by rank with BM25's top `top_k`
    into each training query's candidates (`merge_runs`; duplicates once); `train_depth`: the
    training queries' candidates are BM25's top `train_depth` instead of its top `top_k` (RankT5's
    recipe: negatives sampled from a deep first-stage list; the dev candidates stay the top
    `top_k`); `generator`: the `data.synthetic` function that writes the collection
    (`make_collection`, the demo's, or `make_same_shape_collection`, whose passages all have
    the same shape); `vocab`: a SentencePiece model to use as the data's vocabulary (copied in;
    e.g. a pretrained checkpoint's, so that its embeddings read the same ids) instead of one
    trained on the collection; None takes the folder as written, whichever vocabulary it has.
    """
    fit5 = features is not None
    flavour = {"titles": fit5 if titles is None else bool(titles), "fit5_vocab": fit5}
    flavour["random_negatives"] = int(random_negatives)
    flavour["train_run"] = os.path.abspath(train_run) if train_run else None
    flavour["train_depth"] = int(train_depth) if train_depth else None
    flavour["vocab_size"] = int(vocab_size)
    if generator not in _GENERATORS:
        raise ConfigError(f"smoke_data: generator {generator!r} is not one of {_GENERATORS}")
    flavour["generator"] = generator
    if vocab:  # (None: not compared, the folder's own)
        flavour["vocab_source"] = os.path.abspath(vocab)
    depth = max(top_k, flavour["train_depth"] or top_k)
    marker = os.path.join(data_dir, _DONE)
    if not _is_current(marker, flavour):
        os.makedirs(data_dir, exist_ok=True)
        collection = getattr(synthetic, generator)(
            num_queries=num_queries, seed=seed, titles=flavour["titles"]
        )
        for stale in ("corpus.jsonl", "corpus.jsonl.idx.npz"):  # kept by write_collection
            if os.path.exists(os.path.join(data_dir, stale)):
                os.remove(os.path.join(data_dir, stale))
        run = bm25.bm25_run(collection["corpus"], collection["queries"], top_k=depth)
        qids = list(collection["queries"])
        train_ids, dev_ids = qids[: num_queries - dev_queries], qids[num_queries - dev_queries :]
        train = synthetic.write_collection(data_dir, collection, run, train_ids, prefix="train_")
        cut = {q: dict(list(docs.items())[:top_k]) for q, docs in run.items()}  # ranked order
        dev = synthetic.write_collection(data_dir, collection, cut, dev_ids, prefix="dev_")
        if vocab:
            if not os.path.isfile(vocab):
                raise ConfigError(f"smoke_data: vocabulary not found: {vocab}")
            vocab = shutil.copy(vocab, os.path.join(data_dir, "spiece.model"))
        else:
            vocab = synthetic.train_sentencepiece(
                os.path.join(data_dir, "spiece"), vocab_size, collection, fit5_words=fit5
            )
        records = os.path.join(data_dir, "records")
        train_candidates, train_top_k = train["run"], depth
        if train_run:
            train_candidates = os.path.join(data_dir, "train_mixed_run.txt")
            merge_runs(train["run"], train_run, train_candidates, depth)
            train_top_k = 2 * depth
        prepare.prepare(
            train["queries"],
            train["corpus"],
            train["qrels"],
            train_candidates,
            records,
            split="train",
            top_k=train_top_k,
            num_shards=2,
            verbose=False,
            random_negatives=random_negatives,
            seed=seed,
        )
        prepare.prepare(
            dev["queries"],
            dev["corpus"],
            dev["qrels"],
            dev["run"],
            records,
            split="validation",
            top_k=top_k,
            num_shards=1,
            require_positive=False,
            verbose=False,
        )
        info = {
            "train": train,
            "dev": dev,
            "vocab": vocab,
            "records": records,
            "version": _VERSION,
            **flavour,
        }
        atomic.write_json(marker, info, indent=2)
    with open(marker) as handle:
        info = json.load(handle)
    prefix = "smoke_fit5" if fit5 else "smoke"
    info["train_task"] = tasks_lib.register_prepared_task(
        f"{prefix}_train",
        info["records"],
        info["vocab"],
        mode="train",
        splits=("train",),
        list_size=list_size,
        seed=seed,
        negatives=negatives,
        features=features,
    )
    info["eval_task"] = tasks_lib.register_prepared_task(
        f"{prefix}_dev",
        info["records"],
        info["vocab"],
        mode="eval",
        splits=("validation",),
        max_candidates=top_k,
        features=features,
    )
    return info


def merge_runs(first: str, second: str, output: str, top_k: int) -> None:
    """Writes the queries of `first` with each query's top `top_k` of both runs interleaved
    rank by rank (first's rank 1, second's rank 1, first's rank 2, ...; a document already
    listed is skipped), scored by descending merged rank so that `prepare` keeps the order."""
    from rankt5_jax.data import formats

    runs = [formats.read_run(first), formats.read_run(second)]
    lines = []
    for qid in runs[0]:
        ranked = [
            sorted(run.get(qid, {}).items(), key=lambda item: (-item[1], item[0]))[:top_k]
            for run in runs
        ]
        merged: list[str] = []
        for pair in zip(*(r + [None] * (top_k - len(r)) for r in ranked)):
            for docid, _ in filter(None, pair):
                if docid not in merged:
                    merged.append(docid)
        lines += [f"{qid} Q0 {d} {i + 1} {len(merged) - i} merged" for i, d in enumerate(merged)]
    with atomic.atomic_open(output) as handle:
        handle.writelines(line + "\n" for line in lines)


@gin.configurable
def smoke_vocab(data_dir: str = gin.REQUIRED) -> str:
    return smoke_data(data_dir)["vocab"]


@gin.configurable
def smoke_train_task(data_dir: str = gin.REQUIRED) -> str:
    return smoke_data(data_dir)["train_task"]


@gin.configurable
def smoke_eval_task(data_dir: str = gin.REQUIRED) -> str:
    return smoke_data(data_dir)["eval_task"]


@gin.configurable
def smoke_dev_qrels(data_dir: str = gin.REQUIRED) -> str:
    return smoke_data(data_dir)["dev"]["qrels"]


@gin.configurable
def smoke_xtr_train_task(data_dir: str = gin.REQUIRED, seed: int = 0) -> str:
    """UR2N's XTR training task (`smoke_xtr_train`: a query, its positive, one BM25 negative)
    over the generated records (`smoke_cpu_ur2n.gin`)."""
    info = smoke_data(data_dir)
    return tasks_lib.register_xtr_task("smoke_xtr_train", info["records"], info["vocab"], seed=seed)
