"""Generated data as gin-callable pieces, for `gin/experiments/smoke_cpu.gin` and the demo.

`smoke_data(data_dir)` writes (once) a learnable synthetic collection (see `synthetic.py`), a BM25
candidate run, a SentencePiece vocabulary trained on the text, and prepared TFRecords for a train
split and a held-out dev split, then registers the seqio tasks `smoke_train` and `smoke_dev`.
"""

from __future__ import annotations

import json
import os

import gin
from rankt5_jax.data import prepare, synthetic, tasks_lib
from rankt5_jax.retrieval import bm25

_DONE = "smoke_data.json"


@gin.configurable
def smoke_data(
    data_dir: str = gin.REQUIRED,
    num_queries: int = 240,
    dev_queries: int = 40,
    top_k: int = 30,
    vocab_size: int = 600,
    list_size: int = 8,
    seed: int = 0,
) -> dict:
    """Creates the data under `data_dir` (idempotent) and returns its paths and task names."""
    marker = os.path.join(data_dir, _DONE)
    if not os.path.isfile(marker):
        os.makedirs(data_dir, exist_ok=True)
        collection = synthetic.make_collection(num_queries=num_queries, seed=seed)
        run = bm25.bm25_run(collection["corpus"], collection["queries"], top_k=top_k)
        qids = list(collection["queries"])
        train_ids, dev_ids = qids[: num_queries - dev_queries], qids[num_queries - dev_queries :]
        train = synthetic.write_collection(data_dir, collection, run, train_ids, prefix="train_")
        dev = synthetic.write_collection(data_dir, collection, run, dev_ids, prefix="dev_")
        vocab = synthetic.train_sentencepiece(
            os.path.join(data_dir, "spiece"), vocab_size, collection
        )
        records = os.path.join(data_dir, "records")
        prepare.prepare(
            train["queries"],
            train["corpus"],
            train["qrels"],
            train["run"],
            records,
            split="train",
            top_k=top_k,
            num_shards=2,
            verbose=False,
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
        info = {"train": train, "dev": dev, "vocab": vocab, "records": records}
        with open(marker + ".tmp", "w") as handle:
            json.dump(info, handle, indent=2)
        os.replace(marker + ".tmp", marker)
    with open(marker) as handle:
        info = json.load(handle)
    info["train_task"] = tasks_lib.register_prepared_task(
        "smoke_train",
        info["records"],
        info["vocab"],
        mode="train",
        splits=("train",),
        list_size=list_size,
        seed=seed,
    )
    info["eval_task"] = tasks_lib.register_prepared_task(
        "smoke_dev",
        info["records"],
        info["vocab"],
        mode="eval",
        splits=("validation",),
        max_candidates=top_k,
    )
    return info


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
