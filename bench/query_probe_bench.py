"""Does the tiny ranker read the query? Trains a tiny RankT5-EncDec per `--setting` and measures
it three ways on the generated collections (`training/smoke.py`, `data/synthetic.py`):

    nice -n 19 .venv/bin/python bench/query_probe_bench.py --work_dir /tmp/query_probe \
        --setting generator=make_collection \
        --setting generator=make_collection,train_depth=100 \
        --setting generator=make_same_shape_collection \
        --setting generator=make_same_shape_collection,train_depth=100 \
        --setting generator=make_same_shape_collection,train_depth=100,num_queries=3200,vocab_size=2000,steps=2000

1. RR@10 of BM25 and of the ranker re-ranking BM25's top 30 and top 100 for the held-out
   queries, and its RR@10 on BM25's top 30 of 200 *training* queries (memorisation: high on
   the training queries, low on the held-out ones);
2. the probe: each held-out query's relevant passage (it holds the query's phrase `a b`) is
   scored beside copies of it with the phrase changed: `b -> c` and `a -> c` (c another
   query's topic word: one query word left, the phrase's shape kept), `b -> filler` (one query
   word, no phrase), `swap` (`b a`) and `apart` (`a filler b`); a ranker that reads the query
   scores the original above the first four nearly always; one that has learned only what a
   relevant passage looks like (two topic words side by side) scores it above the phrase-keeping
   copies half the time (0.5 = a coin);
3. what the ranker puts first among BM25's top 100 (the relevant passage, a passage with
   one query word in a phrase with another topic word, ...).

`make_collection` is the demo's (relevant passages alone hold a topic-word phrase and no repeated
topic word); `make_same_shape_collection` gives every passage the same shape, so that only the
query tells the relevant passage. `smoke_cpu.gin` as the demo trains it (1,000 steps, batch 8,
lists of 8, learning rate 3e-3). Results are kept per setting in `<work_dir>/results.json`.
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import os
import random
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench import xtr_learning_bench as xlb  # noqa: E402
from bench.common import open_results  # noqa: E402
from bench.ur2n_recipe_bench import rerank  # noqa: E402

DEFAULTS = {
    "generator": "make_collection",
    "train_depth": 0,  # the training candidates: BM25's top N (0: the top 30, as the demo)
    "num_queries": 1200,
    "vocab_size": 600,
    "steps": 1000,
    "seed": 0,
    "init": "",  # a checkpoint to fine-tune from (--gin.INIT_CHECKPOINT), e.g. pseudo-query pretrained
    "learning_rate": "",  # default: smoke_cpu.gin's (3e-3)
}
VARIANTS = ("b -> c", "a -> c", "b -> filler", "swap", "apart")


def parse_setting(text: str) -> dict:
    return xlb.parse_settings(
        text,
        DEFAULTS,
        "--setting",
        lambda key, value: value if key in ("generator", "init", "learning_rate") else int(value),
    )


def setting_name(setting: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in setting.items() if v != DEFAULTS[k] or k == "generator")


def data_kwargs(setting: dict) -> dict:
    kwargs = dict(
        num_queries=setting["num_queries"],
        dev_queries=200,
        vocab_size=setting["vocab_size"],
        generator=setting["generator"],
        seed=setting["seed"],
    )
    if setting["train_depth"]:
        kwargs["train_depth"] = setting["train_depth"]
    return kwargs


def train_flags(setting: dict) -> list[str]:
    flags = [f"--gin.INIT_CHECKPOINT='{setting['init']}'"] if setting["init"] else []
    if setting["learning_rate"]:
        flags.append(f"--gin.LEARNING_RATE={setting['learning_rate']}")
    return flags


def probe(ranker, collection: xlb.Collection, topics: set, seed: int = 0) -> dict:
    """The share of held-out queries whose relevant passage outscores each changed copy
    (`topics`: every query's words, training queries' too)."""
    import numpy as np

    text = dict(zip(collection.doc_ids, collection.texts))
    topics = sorted(topics)
    fillers = sorted({w for t in collection.texts for w in t.split()} - set(topics))
    rng = random.Random(seed)
    lists, order = [], []
    for qid, relevant in collection.qrels.items():
        a, b = collection.queries[qid].split()
        passage = text[next(iter(relevant))]
        c = rng.choice([t for t in topics if t not in (a, b)])
        f = rng.choice(fillers)
        changed = [f"{a} {c}", f"{c} {b}", f"{a} {f}", f"{b} {a}", f"{a} {f} {b}"]
        passages = [passage] + [passage.replace(f"{a} {b}", new, 1) for new in changed]
        lists.append(ranker.tokenize(collection.queries[qid], passages))
        order.append(qid)
    scores = ranker.score_token_lists(lists)
    wins = np.array([[s[0] > v for v in s[1:]] for s in scores], dtype=float)
    return {name: round(float(w), 3) for name, w in zip(VARIANTS, wins.mean(axis=0))}


def first_places(reranked: dict, collection: xlb.Collection, topics: set) -> dict:
    """What the ranker puts first per held-out query: the relevant passage, or a passage by
    how many query words it holds and whether two topic words stand side by side in it."""
    text = dict(zip(collection.doc_ids, collection.texts))
    counts: collections.Counter = collections.Counter()
    for qid, docs in reranked.items():
        top = max(docs, key=lambda d: (docs[d], d))
        if collection.qrels[qid].get(top):
            counts["relevant"] += 1
            continue
        words = text[top].split()
        held = sum(w in words for w in set(collection.queries[qid].split()))
        pair = any(x in topics and y in topics for x, y in zip(words, words[1:]))
        counts[f"{held} query word(s), {'a' if pair else 'no'} topic-word phrase"] += 1
    return dict(counts.most_common())


def run_setting(setting: dict, args) -> dict:
    from rankt5_jax import Ranker
    from rankt5_jax.data import formats
    from rankt5_jax.evaluation import measures
    from rankt5_jax.retrieval import bm25
    from rankt5_jax.training import smoke

    name = setting_name(setting).replace("=", "").replace(",", "_").replace("/", "_")
    data_dir = os.path.join(args.work_dir, "data_" + name)
    model = os.path.join(args.work_dir, "ranker_" + name)
    kwargs = data_kwargs(setting)
    info = smoke.smoke_data(data_dir, **kwargs)
    result: dict = {}
    if not os.path.isdir(os.path.join(model, "checkpoints", str(setting["steps"]))):
        started = time.time()
        xlb._train(
            [
                "--gin_file=experiments/smoke_cpu.gin",
                f"--gin.MODEL_DIR='{model}'",
                f"--gin.DATA_DIR='{data_dir}'",
                f"--gin.TRAIN_STEPS={setting['steps']}",
                "--gin.EVAL_PERIOD=None",
                "--gin.trainer.train.log_period=200",
                *(f"--gin.smoke.smoke_data.{k}={v!r}" for k, v in kwargs.items()),
                *train_flags(setting),
            ]
        )
        result["train_s"] = round(time.time() - started, 1)
    ranker = Ranker.load(model, max_length=64)
    held_out = xlb.Collection(info)
    # the training queries over the same corpus (read once): 200 of them for memorisation
    training_queries = formats.read_queries(info["train"]["queries"])
    topics = {
        w for q in (*held_out.queries.values(), *training_queries.values()) for w in q.split()
    }
    training = copy.copy(held_out)
    training.queries = dict(list(training_queries.items())[:200])
    qrels = formats.read_qrels(info["train"]["qrels"])
    training.qrels = {q: qrels[q] for q in training.queries}
    corpus = {d: {"title": t, "text": x} for d, t, x in zip(
        held_out.doc_ids, held_out.titles, held_out.texts)}  # fmt: skip
    run = bm25.bm25_run(corpus, held_out.queries, top_k=100)

    def rr(run_, qrels):
        return round(measures.evaluate_run(run_, qrels, ("RR@10",))["RR@10"], 4)

    result["bm25"] = rr(run, held_out.qrels)
    for k in (30, 100):
        reranked = rerank(ranker, held_out, run, k)
        result[f"top {k}"] = rr(reranked, held_out.qrels)
    result["first at top 100"] = first_places(reranked, held_out, topics)
    train_run = bm25.bm25_run(corpus, training.queries, top_k=30)
    result["training queries, top 30"] = rr(rerank(ranker, training, train_run, 30), training.qrels)
    result["probe"] = probe(ranker, held_out, topics, setting["seed"])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work_dir", default="/tmp/query_probe")
    parser.add_argument("--setting", action="append", default=[], help="k=v,... (see DEFAULTS)")
    parser.add_argument("--output", default=None, help="default: <work_dir>/results.json")
    args = parser.parse_args(argv)
    output, results = open_results(args.work_dir, args.output, "settings")
    for setting in map(parse_setting, args.setting or [""]):
        name = setting_name(setting)
        if name in results["settings"]:
            print(name, "(kept)", json.dumps(results["settings"][name]), flush=True)
            continue
        results["settings"][name] = run_setting(setting, args)
        print(name, json.dumps(results["settings"][name]), flush=True)
        with open(output, "w") as handle:
            json.dump(results, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
