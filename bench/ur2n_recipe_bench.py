"""UR2N's unified regimen: does one checkpoint's XTR retrieval + its own re-ranking beat its
XTR retrieval alone? A recipe per `--recipe`, on the generated collection.

    nice -n 19 .venv/bin/python bench/ur2n_recipe_bench.py --work_dir /tmp/ur2n_recipe \
        --recipe random_negatives=0 --recipe random_negatives=30 \
        --recipe random_negatives=0,xtr_negatives=1

The collection is the demo's (`training/smoke.py`, as `bench/xtr_learning_bench.py`: by default
1,200 queries, 8,600 passages, 200 held out). For each recipe:

1. a tiny RankT5-EncDec is trained with `experiments/smoke_cpu.gin` (`ranker_steps`) on training
   lists whose negatives mix BM25's top 30 with `random_negatives` passages drawn uniformly from
   the whole corpus (`smoke.smoke_data.random_negatives`, i.e. `rankt5 prepare
   --random_negatives`; 0: BM25's top 30 only, as `make demo`);
2. its XTR layer is trained from it with `experiments/smoke_cpu_ur2n.gin` as shipped (T 0.02,
   learning rate 1e-2; `xtr_steps`) on the same data (the XTR task's hard negative is drawn from
   the same mixed candidates);
3. the held-out queries are searched exactly with the XTR layer (brute-force token top-k at
   `--token_k`, XTR's imputation: `xtr_learning_bench.Embedded.search`), then the top
   `--rerank_k` of that run are re-ranked by the same checkpoint (`Ranker.score_token_lists`);
   BM25's top 30 and top 100 re-ranked by it are recorded beside them (BM25 + the same-size
   RankT5), and each re-ranked top k fused with the retrieval by reciprocal rank fusion (k 60).

`xtr_negatives=1` (round 2 of the regimen): the same recipe without it is trained first (round
1, its ranker at `round1_ranker_steps` if set), its exact XTR top 30 of the training queries
is mined, and the ranker and XTR layer are trained again on lists whose candidates interleave
BM25's top 30 with that run (`smoke.smoke_data(train_run=...)`, as
`experiments/smoke_cpu_ur2n_recipe.gin`'s `TRAIN_RUN`). `--reevaluate` evaluates recipes already
in the results again (their trained models are reused).

RR@10 / R@10 / R@100 per stage, the steps and wall times. Results are kept per recipe in
`<work_dir>/results.json` (a recipe already there is not run again).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench import xtr_learning_bench as xlb  # noqa: E402
from bench.common import open_results  # noqa: E402

MEASURES = ("RR@10", "R@10", "R@100")
DEFAULTS = {
    "random_negatives": 0,
    "train_depth": 0,  # the training candidates: BM25's top N (0: the top 30, as the demo)
    "vocab_size": 0,  # the SentencePiece vocabulary's size (0: smoke_data's default, 600)
    "xtr_negatives": 0,
    "round1_ranker_steps": 0,  # with xtr_negatives: round 1's ranker steps (0: ranker_steps)
    "ranker_steps": 1000,
    "xtr_steps": 800,
    "seed": 0,
}


def parse_recipe(text: str) -> dict:
    return xlb.parse_settings(text, DEFAULTS, "--recipe", lambda key, value: int(value))


def recipe_name(recipe: dict) -> str:
    return ",".join(
        f"{k}={v}"
        for k, v in recipe.items()
        if v or k not in ("xtr_negatives", "round1_ranker_steps", "train_depth", "vocab_size")
    )


def _data_flags(data_dir: str, recipe: dict, args, train_run: str | None) -> list[str]:
    flags = [
        *xlb.data_flags(data_dir, args.num_queries, args.dev_queries),
        f"--gin.smoke.smoke_data.random_negatives={recipe['random_negatives']}",
    ]
    if recipe["train_depth"]:
        flags.append(f"--gin.smoke.smoke_data.train_depth={recipe['train_depth']}")
    if recipe["vocab_size"]:
        flags.append(f"--gin.smoke.smoke_data.vocab_size={recipe['vocab_size']}")
    return flags + ([f"--gin.smoke.smoke_data.train_run='{train_run}'"] if train_run else [])


def mine(model: str, info: dict, output: str, top_k: int = 30) -> float:
    """The training queries' top `top_k` by `model`'s exact XTR search (token_k as
    `--token_k`) written as a TREC run: the model's own retrieval as negatives."""
    from rankt5_jax.data import formats

    started = time.time()
    collection = xlb.Collection({"dev": info["train"]})
    embedded = collection.embed(model)
    run, _ = embedded.search(min(8600, embedded.num_tokens), top_k=top_k)
    formats.write_trec_run(output, run, tag="xtr")
    return round(time.time() - started, 1)


def _train_once(
    what: str, model_dir: str, steps: int, gin_file: str, flags: list[str], times: dict
) -> None:
    """`rankt5 train --gin_file=GIN_FILE` of an encdec model into `model_dir` for `steps`
    steps unless that checkpoint is there already; the seconds go to `times[f"{what}_s"]`."""
    if os.path.isdir(os.path.join(model_dir, "checkpoints", str(steps))):
        return
    started = time.time()
    xlb._train(
        [
            f"--gin_file={gin_file}",
            f"--gin.MODEL_DIR='{model_dir}'",
            f"--gin.TRAIN_STEPS={steps}",
            "--gin.VARIANT='encdec'",
            "--gin.trainer.train.log_period=100",
            *flags,
        ]
    )
    times[f"{what}_s"] = round(time.time() - started, 1)
    print(f"{what}: {steps} steps in {times[f'{what}_s']}s", flush=True)


def train(recipe: dict, args) -> dict:
    """The recipe's ranker, then its XTR layer (each trained once; kept under work_dir).
    `xtr_negatives`: the training lists also take the top 30 of the XTR retrieval (training
    queries) of the same recipe without them (trained first: round 1 of the regimen)."""
    folder = os.path.join(args.work_dir, recipe_name(recipe).replace("=", "").replace(",", "_"))
    # one data folder per negatives mix: smoke_data rewrites a folder of another flavour
    data_dir = os.path.join(args.work_dir, f"data_rn{recipe['random_negatives']}")
    if recipe["train_depth"]:
        data_dir += f"_td{recipe['train_depth']}"
    if recipe["vocab_size"]:
        data_dir += f"_v{recipe['vocab_size']}"
    train_run, times = None, {}
    if recipe["xtr_negatives"]:
        steps = recipe["round1_ranker_steps"] or recipe["ranker_steps"]
        first = train(
            dict(recipe, xtr_negatives=0, round1_ranker_steps=0, ranker_steps=steps), args
        )
        data_dir += "_xtr"
        train_run = os.path.join(folder, "train_xtr.run")
        if not os.path.isfile(train_run):
            os.makedirs(folder, exist_ok=True)
            times["mine_s"] = mine(first["model"], args.info, train_run)
            print(f"mined the training queries' XTR top 30 in {times['mine_s']}s", flush=True)
    ranker, model = os.path.join(folder, "ranker"), os.path.join(folder, "ur2n")
    data = _data_flags(data_dir, recipe, args, train_run)
    _train_once(
        "ranker", ranker, recipe["ranker_steps"], "experiments/smoke_cpu.gin",
        ["--gin.EVAL_PERIOD=None", *data], times,
    )  # fmt: skip
    xtr_flags = [
        f"--gin.INIT_CHECKPOINT='{ranker}'",
        f"--gin.smoke.smoke_xtr_train_task.seed={recipe['seed']}",
    ]
    _train_once(
        "xtr", model, recipe["xtr_steps"], "experiments/smoke_cpu_ur2n.gin", xtr_flags + data, times
    )
    return {"model": model, "data_dir": data_dir, **times}


def rerank(ranker, collection: xlb.Collection, run: dict, k: int) -> dict:
    """The top `k` of each query of `run` re-scored by `ranker` ({qid: {docid: score}})."""
    text = {d: f"{t} {x}".strip() for d, t, x in zip(
        collection.doc_ids, collection.titles, collection.texts)}  # fmt: skip
    order = []
    for qid, docs in run.items():
        top = sorted(docs.items(), key=lambda item: (-item[1], item[0]))[:k]
        order.append((qid, [d for d, _ in top]))
    lists = [ranker.tokenize(collection.queries[q], [text[d] for d in ids]) for q, ids in order]
    scores = ranker.score_token_lists(lists)
    return {q: dict(zip(ids, map(float, s))) for (q, ids), s in zip(order, scores)}


def rrf(first: dict, second: dict, k: int = 60) -> dict:
    """Reciprocal rank fusion (k 60) of two runs over the documents of `second`."""
    fused = {}
    for qid, docs in second.items():
        ranks = [
            {d: r for r, (d, _) in enumerate(sorted(run[qid].items(), key=lambda i: -i[1]), 1)}
            for run in (first, second)
        ]
        fused[qid] = {d: sum(1.0 / (k + r[d]) for r in ranks if d in r) for d in docs}
    return fused


def evaluate(model: str, collection: xlb.Collection, bm25_run: dict, args) -> dict:
    from rankt5_jax import Ranker
    from rankt5_jax.evaluation import measures

    def measure(run):
        return measures.evaluate_run(run, collection.qrels, MEASURES)

    started = time.time()
    embedded = collection.embed(model)
    xtr_run, _ = embedded.search(args.token_k)
    result = {"tokens": embedded.num_tokens, f"xtr token_k={args.token_k}": measure(xtr_run)}
    result["embed_search_s"] = round(time.time() - started, 1)
    ranker = Ranker.load(model, max_length=64)
    started = time.time()
    for k in args.rerank_k:
        reranked = rerank(ranker, collection, xtr_run, k)
        result[f"xtr top {k} + rerank"] = measure(reranked)
        result[f"xtr top {k} + rerank, RRF with the retrieval"] = measure(rrf(xtr_run, reranked))
    for k in (30, 100):
        result[f"bm25 top {k} + rerank"] = measure(rerank(ranker, collection, bm25_run, k))
    result["rerank_s"] = round(time.time() - started, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work_dir", default="/tmp/ur2n_recipe")
    parser.add_argument("--num_queries", type=int, default=1200)
    parser.add_argument("--dev_queries", type=int, default=200)
    parser.add_argument("--recipe", action="append", default=[], help="k=v,... (see DEFAULTS)")
    parser.add_argument("--token_k", type=int, default=8600, help="default: the demo's rule")
    parser.add_argument("--rerank_k", default="10,20,100", help="comma-separated")
    parser.add_argument("--output", default=None, help="default: <work_dir>/results.json")
    parser.add_argument("--reevaluate", action="store_true", help="recipes already run too")
    args = parser.parse_args(argv)
    args.rerank_k = [int(k) for k in args.rerank_k.split(",")]
    output, results = open_results(args.work_dir, args.output, "recipes")
    from rankt5_jax.evaluation import measures
    from rankt5_jax.retrieval import bm25
    from rankt5_jax.training import smoke

    info = smoke.smoke_data(
        os.path.join(args.work_dir, "data_rn0"),
        num_queries=args.num_queries,
        dev_queries=args.dev_queries,
    )
    args.info = info
    collection = xlb.Collection(info)
    corpus = {d: {"title": t, "text": x} for d, t, x in zip(
        collection.doc_ids, collection.titles, collection.texts)}  # fmt: skip
    bm25_run = bm25.bm25_run(corpus, collection.queries, top_k=100)
    results["bm25"] = measures.evaluate_run(bm25_run, collection.qrels, MEASURES)
    print("BM25:", results["bm25"], flush=True)
    for recipe in map(parse_recipe, args.recipe):
        name = recipe_name(recipe)
        if name in results["recipes"] and not args.reevaluate:
            print(name, "(kept)", results["recipes"][name], flush=True)
            continue
        trained = train(recipe, args)
        result = {
            **results["recipes"].get(name, {}),
            "recipe": recipe,
            **{k: v for k, v in trained.items() if k.endswith("_s")},
            **evaluate(trained["model"], collection, bm25_run, args),
        }
        print(name, json.dumps(result), flush=True)
        if os.path.isfile(output):  # another process may have written its recipes meanwhile
            results["recipes"] = json.load(open(output))["recipes"]
        results["recipes"][name] = result
        with open(output + ".tmp", "w") as handle:
            json.dump(results, handle, indent=2)
        os.replace(output + ".tmp", output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
