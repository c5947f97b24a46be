"""Pseudo-query pretraining data for a tiny ranker: the measured way to make it read the query.

    nice -n 5 .venv/bin/python bench/pseudo_query_data.py --demo_data DEMO_DATA_DIR \
        --output_dir /tmp/pseudo_queries --passages 60000 --mentions 3

From the words of a `smoke.smoke_data` folder (its queries' topic words, the rest of its corpus's
words as fillers, its SentencePiece model), writes a new `smoke_data`-style folder: passages of
20 filler words with `--mentions` distinct topic words inserted at random; each passage's
pseudo-query is two of its topic words, kept only where no other passage holds both (its one
relevant passage) and is not a held-out demo query's word pair; candidates are BM25's top 30 (BM25 scores 1.0 here: the task is lexical
matching, which a tiny T5 trained from scratch does not learn on the generated collections);
200 pseudo-queries are held out. `rankt5 train --gin_file=experiments/smoke_cpu.gin
--gin.DATA_DIR=<output_dir>` pretrains on it; the ranker is then fine-tuned on the demo's data
with `--gin.INIT_CHECKPOINT` (bench/RESULTS.md "Does the ranker read the query?").
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo_data", required=True, help="a smoke_data folder")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--passages", type=int, default=60000)
    parser.add_argument("--mentions", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    from rankt5_jax import quiet

    quiet.silence_startup_logs()
    quiet.import_tensorflow()
    import numpy as np

    from rankt5_jax.data import formats, prepare, synthetic
    from rankt5_jax.evaluation import measures
    from rankt5_jax.retrieval import bm25

    info = json.load(open(os.path.join(args.demo_data, "smoke_data.json")))
    queries = {
        **formats.read_queries(info["train"]["queries"]),
        **formats.read_queries(info["dev"]["queries"]),
    }
    topics = sorted({w for q in queries.values() for w in q.split()})
    words: set[str] = set()
    for line in open(info["dev"]["corpus"]):
        words.update(json.loads(line)["text"].split())
    fillers = sorted(words - set(topics))
    rng = np.random.default_rng(args.seed)
    corpus, pseudo, qrels = {}, {}, {}
    for i in range(args.passages):
        picked = [str(w) for w in rng.choice(topics, size=args.mentions, replace=False)]
        text = [str(w) for w in rng.choice(fillers, size=20)]
        for word in picked:
            text.insert(int(rng.integers(0, len(text) + 1)), word)
        corpus[f"p{i}"] = {"title": "", "text": " ".join(text)}
        a, b = rng.choice(picked, size=2, replace=False)
        pseudo[f"pq{i}"], qrels[f"pq{i}"] = f"{a} {b}", {f"p{i}": 1}
    holders: dict[str, set] = {}
    for docid, doc in corpus.items():
        for word in set(doc["text"].split()):
            holders.setdefault(word, set()).add(docid)
    # No pseudo-query is a held-out demo query's word pair (in either order): pretraining sees
    # the demo's words, never its evaluation queries.
    held_out = {frozenset(q.split()) for q in formats.read_queries(info["dev"]["queries"]).values()}
    kept = [
        q
        for q, t in pseudo.items()
        if len(set.intersection(*map(holders.get, t.split()))) == 1
        and frozenset(t.split()) not in held_out
    ]
    collection = {
        "corpus": corpus,
        "queries": {q: pseudo[q] for q in kept},
        "qrels": {q: qrels[q] for q in kept},
    }
    run = bm25.bm25_run(corpus, collection["queries"], top_k=30)
    out = args.output_dir
    os.makedirs(out, exist_ok=True)
    train = synthetic.write_collection(out, collection, run, kept[:-200], prefix="train_")
    dev = synthetic.write_collection(out, collection, run, kept[-200:], prefix="dev_")
    vocab = shutil.copy(info["vocab"], os.path.join(out, "spiece.model"))
    records = os.path.join(out, "records")
    prepare.prepare(train["queries"], train["corpus"], train["qrels"], train["run"], records,
                    split="train", top_k=30, num_shards=2, verbose=False)  # fmt: skip
    prepare.prepare(dev["queries"], dev["corpus"], dev["qrels"], dev["run"], records,
                    split="validation", top_k=30, num_shards=1, require_positive=False,
                    verbose=False)  # fmt: skip
    # smoke_data's marker with the demo folder's flavour: smoke_cpu.gin reads this folder as is
    marker = {k: v for k, v in info.items() if k not in ("train", "dev", "vocab", "records")}
    marker.update(train=train, dev=dev, vocab=vocab, records=records)
    with open(os.path.join(out, "smoke_data.json"), "w") as handle:
        json.dump(marker, handle, indent=2)
    held = {q: run[q] for q in kept[-200:]}
    rr = measures.evaluate_run(held, collection["qrels"], ["RR@10"])["RR@10"]
    print(f"{len(kept)} pseudo-queries of {args.passages} passages; BM25 RR@10 {rr:.3f} held out")
    return 0


if __name__ == "__main__":
    sys.exit(main())
