"""How well UR2N's XTR layer learns: a sweep of its training settings on the generated collection.

    nice -n 5 .venv/bin/python bench/xtr_learning_bench.py --work_dir /tmp/xtr_learning \
        --point temperature=1.0,steps=200 --point temperature=0.05,steps=800 ...

The collection is the demo's (`data/synthetic.py` through `training/smoke.py`: 1,200 queries,
8,600 passages, relevance = the two query words as an adjacent phrase; 200 held-out queries).
A tiny RankT5-EncDec is trained once (`experiments/smoke_cpu.gin`, `--ranker_steps`, as
`make demo`), then for every sweep point its XTR layer is trained from it with
`experiments/smoke_cpu_ur2n.gin` (the point's settings as gin bindings: `temperature`,
`k_train`, `lr`, `steps`, `normalizer`, `batch`, `seed`) and evaluated on the held-out queries:

* exact search with XTR's imputation at each `--token_k` (the token search is a brute-force top
  k over every document token, as `ExactSearcher`; documents scored by `xtr_search.xtr_score`);
* `full`: f over every document without imputation (the mean over query tokens of the best
  similarity in the document: what any token_k at least the index's size gives).

RR@10, R@10, R@100 (`evaluation.measures`), the XTR training's wall time and steps. Results
are kept per point in `<work_dir>/results.json` (a point already there is not run again), so
the sweep can be extended run by run. `--untrained` adds the XTR layer as training starts (a
copy of the ranker's last encoder layer, random projection: one step at learning rate 0).
BM25's figures (bm25s, top 100) are recorded beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench.common import cpu_model  # noqa: E402

MEASURES = ("RR@10", "R@10", "R@100")
DEFAULTS = {
    "temperature": None,  # None: the gin file's
    "k_train": None,
    "lr": None,
    "steps": 200,
    "normalizer": None,
    "batch": None,
    "seed": 0,
}


def parse_settings(text: str, defaults: dict, flag: str, cast) -> dict:
    """`k=v,...` over `defaults` (an unknown key exits naming `flag` and the known ones);
    `cast(key, value)` converts each value."""
    settings = dict(defaults)
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        if key not in settings:
            raise SystemExit(f"{flag}: unknown setting {key!r} (known: {', '.join(settings)})")
        settings[key] = cast(key, value)
    return settings


def parse_point(text: str) -> dict:
    point = parse_settings(
        text, DEFAULTS, "--point", lambda key, v: v if key == "normalizer" else float(v)
    )
    for key in ("k_train", "steps", "batch", "seed"):
        if point[key] is not None:
            point[key] = int(point[key])
    return point


def point_name(point: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in point.items() if v is not None)


def _train(flags: list[str]):
    import gin
    from rankt5_jax.training import gin_flags

    try:
        return gin_flags.main_from_flags(flags)
    finally:
        gin.clear_config()


def data_flags(data_dir: str, num_queries: int, dev_queries: int) -> list[str]:
    return [
        f"--gin.DATA_DIR='{data_dir}'",
        f"--gin.smoke.smoke_data.num_queries={num_queries}",
        f"--gin.smoke.smoke_data.dev_queries={dev_queries}",
    ]


def train_ranker(work_dir: str, args) -> str:
    """The tiny RankT5-EncDec that every point's XTR layer starts from (trained once)."""
    ranker = os.path.join(work_dir, f"ranker_{args.ranker_steps}")
    if not os.path.isdir(os.path.join(ranker, "checkpoints", str(args.ranker_steps))):
        started = time.time()
        _train(
            [
                "--gin_file=experiments/smoke_cpu.gin",
                f"--gin.MODEL_DIR='{ranker}'",
                f"--gin.TRAIN_STEPS={args.ranker_steps}",
                "--gin.VARIANT='encdec'",
                "--gin.EVAL_PERIOD=None",
                *data_flags(args.data_dir, args.num_queries, args.dev_queries),
            ]
        )
        print(f"ranker: {args.ranker_steps} steps in {time.time() - started:.0f}s", flush=True)
    return ranker


def train_xtr(work_dir: str, ranker: str, point: dict, args) -> tuple[str, float]:
    model_dir = os.path.join(work_dir, "xtr", point_name(point).replace("=", "").replace(",", "_"))
    flags = [
        "--gin_file=experiments/smoke_cpu_ur2n.gin",
        f"--gin.MODEL_DIR='{model_dir}'",
        f"--gin.INIT_CHECKPOINT='{ranker}'",
        "--gin.VARIANT='encdec'",
        f"--gin.TRAIN_STEPS={max(point['steps'], 1)}",
        "--gin.trainer.train.log_period=1000000",
        f"--gin.smoke.smoke_xtr_train_task.seed={point['seed']}",
        *data_flags(args.data_dir, args.num_queries, args.dev_queries),
    ]
    if point["steps"] == 0:  # the untrained layer: one step that moves nothing
        flags.append("--gin.LEARNING_RATE=0.0")
    elif point["lr"] is not None:
        flags.append(f"--gin.LEARNING_RATE={point['lr']}")
    for key, macro in (
        ("temperature", "TEMPERATURE"),
        ("k_train", "K_TRAIN"),
        ("batch", "BATCH_SIZE"),
    ):
        if point[key] is not None:
            flags.append(f"--gin.{macro}={point[key]}")
    if point["normalizer"] is not None:
        flags.append(f"--gin.xtr.make_xtr_model.normalizer='{point['normalizer']}'")
    started = time.time()
    _train(flags)
    return model_dir, time.time() - started


class Collection:
    """The held-out queries, qrels and the corpus's passages, embedded by one model at a time."""

    def __init__(self, info: dict):
        from rankt5_jax.data import formats

        self.queries = formats.read_queries(info["dev"]["queries"])
        self.qrels = formats.read_qrels(info["dev"]["qrels"])
        rows = [json.loads(line) for line in open(info["dev"]["corpus"])]
        self.doc_ids = [row["_id"] for row in rows]
        self.titles = [row.get("title", "") for row in rows]
        self.texts = [row["text"] for row in rows]

    def embed(self, model_dir: str, max_length: int = 64, max_query_length: int = 16):
        from rankt5_jax.retrieval import xtr_encoder

        encoder = xtr_encoder.load_encoder(
            model_dir, max_length=max_length, max_query_length=max_query_length
        )
        docs = encoder.encode(encoder.tokenize_documents(self.titles, self.texts))
        qids = list(self.queries)
        queries = encoder.encode_queries([self.queries[q] for q in qids])
        return Embedded(docs, queries, qids, self.doc_ids)


class Embedded:
    """Exact XTR search over in-memory token embeddings."""

    def __init__(self, docs, queries, qids, doc_ids):
        self.matrix = np.concatenate(docs).astype(np.float32)
        lengths = np.array([len(d) for d in docs])
        self.doc_of = np.repeat(np.arange(len(docs)), lengths)
        self.starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        self.query_matrix = np.concatenate(queries).astype(np.float32)
        self.row_query = np.repeat(np.arange(len(queries)), [len(q) for q in queries])
        self.qids = qids
        self.doc_ids = doc_ids

    @property
    def num_tokens(self) -> int:
        return len(self.matrix)

    def _blocks(self, rows: int = 64):
        for start in range(0, len(self.query_matrix), rows):
            yield start, self.query_matrix[start : start + rows] @ self.matrix.T

    def search(self, token_k: int, top_k: int = 100) -> tuple[dict, float]:
        """XTR search with imputation (`xtr_search.xtr_score`) over a brute-force token top-k."""
        from rankt5_jax.retrieval import xtr_search

        started = time.time()
        k = min(token_k, self.num_tokens)
        scores = np.empty((len(self.query_matrix), k), np.float32)
        docs = np.empty((len(self.query_matrix), k), np.int64)
        for start, sims in self._blocks():
            part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
            values = np.take_along_axis(sims, part, 1)
            order = np.argsort(-values, axis=1, kind="stable")
            scores[start : start + len(sims)] = np.take_along_axis(values, order, 1)
            docs[start : start + len(sims)] = self.doc_of[np.take_along_axis(part, order, 1)]
        found = xtr_search.xtr_score(scores, docs, self.row_query, len(self.qids), top_k)
        return self._run(found), time.time() - started

    def full(self, top_k: int = 100) -> dict:
        """f over every document: the mean over query tokens of each document's best match."""
        totals = np.zeros((len(self.qids), len(self.starts)))
        for start, sims in self._blocks():
            best = np.maximum.reduceat(sims, self.starts, axis=1)
            np.add.at(totals, self.row_query[start : start + len(sims)], best)
        totals /= np.bincount(self.row_query)[:, None]
        found = []
        for row in totals:
            order = np.lexsort((np.arange(len(row)), -row))[:top_k]
            found.append((order, row[order]))
        return self._run(found)

    def _run(self, found) -> dict:
        return {
            qid: {self.doc_ids[d]: float(s) for d, s in zip(numbers, scores)}
            for qid, (numbers, scores) in zip(self.qids, found)
        }


def evaluate(collection: Collection, model_dir: str, token_ks: list[int]) -> dict:
    from rankt5_jax.evaluation import measures

    embedded = collection.embed(model_dir)
    result = {"tokens": embedded.num_tokens}
    for token_k in token_ks:
        run, seconds = embedded.search(token_k)
        values = measures.evaluate_run(run, collection.qrels, MEASURES)
        result[f"token_k={token_k}"] = dict(values, search_s=round(seconds, 3))
    result["full"] = measures.evaluate_run(embedded.full(), collection.qrels, MEASURES)
    return result


def search_timing(model_dir: str, info: dict, collection: Collection, token_ks, args) -> dict:
    """`rankt5 index` (exact vectors and the default compression) of one model, then
    `xtr_search.search` at each token_k, exact (JAX) and compressed (Faiss): RR@10, R@100 and
    queries/s over the held-out queries (after a warm-up search)."""
    from rankt5_jax import cli
    from rankt5_jax.evaluation import measures
    from rankt5_jax.retrieval import xtr_encoder, xtr_search

    index_dir = os.path.join(args.work_dir, "index", os.path.basename(model_dir))
    if not os.path.isfile(os.path.join(index_dir, "shard_00000", "shard.json")):
        command = ["index", "--checkpoint", model_dir, "--corpus", info["dev"]["corpus"]]
        command += ["--index_dir", index_dir, "--max_length", "64", "--store_vectors", "yes"]
        assert cli.main(command) == 0
    encoder = xtr_encoder.load_encoder(model_dir, max_length=64, max_query_length=16)
    result = {}
    for kind in ("exact", "compressed"):
        searcher = xtr_search.Searcher(index_dir, exact=kind == "exact")
        some = dict(list(collection.queries.items())[:16])
        xtr_search.search(searcher, encoder, some, 100, max(token_ks), progress=False)
        for token_k in token_ks:
            started = time.time()
            run = xtr_search.search(
                searcher, encoder, collection.queries, 100, token_k, progress=False
            )
            seconds = time.time() - started
            values = measures.evaluate_run(run, collection.qrels, MEASURES)
            values["queries_per_s"] = round(len(collection.queries) / seconds, 1)
            result[f"{kind} token_k={token_k}"] = values
            print(kind, token_k, values, flush=True)
    result["tokens"] = searcher.index.num_tokens
    result["passages"] = len(searcher.index.doc_ids)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work_dir", default="/tmp/xtr_learning")
    parser.add_argument("--num_queries", type=int, default=1200)
    parser.add_argument("--dev_queries", type=int, default=200)
    parser.add_argument("--ranker_steps", type=int, default=1000)
    parser.add_argument("--point", action="append", default=[], help="k=v,... (see DEFAULTS)")
    parser.add_argument("--untrained", action="store_true")
    parser.add_argument("--token_k", default="500,4000", help="comma-separated")
    parser.add_argument("--output", default=None, help="default: <work_dir>/results.json")
    parser.add_argument(
        "--search_point",
        default=None,
        help="a point already run: index its model and time search at each --token_k",
    )
    args = parser.parse_args(argv)
    from rankt5_jax import quiet

    quiet.silence_startup_logs()
    quiet.import_tensorflow()
    from rankt5_jax.evaluation import measures
    from rankt5_jax.retrieval import bm25
    from rankt5_jax.training import smoke

    os.makedirs(args.work_dir, exist_ok=True)
    args.data_dir = os.path.join(args.work_dir, "data")
    output = args.output or os.path.join(args.work_dir, "results.json")
    results = json.load(open(output)) if os.path.isfile(output) else {"points": {}}
    results["machine"] = f"{cpu_model()}, {os.cpu_count()} cores"
    info = smoke.smoke_data(
        args.data_dir, num_queries=args.num_queries, dev_queries=args.dev_queries
    )
    collection = Collection(info)
    if "bm25" not in results:
        corpus = {d: {"title": t, "text": x} for d, t, x in zip(
            collection.doc_ids, collection.titles, collection.texts)}  # fmt: skip
        run = bm25.bm25_run(corpus, collection.queries, top_k=100)
        results["bm25"] = measures.evaluate_run(run, collection.qrels, MEASURES)
    print("BM25:", results["bm25"], flush=True)
    ranker = train_ranker(args.work_dir, args)
    token_ks = [int(k) for k in args.token_k.split(",")]
    points = [parse_point(p) for p in args.point]
    if args.untrained:
        points.insert(0, dict(DEFAULTS, steps=0))
    for point in points:
        name = point_name(point)
        if name in results["points"]:
            print(name, "(kept)", results["points"][name], flush=True)
            continue
        model_dir, seconds = train_xtr(args.work_dir, ranker, point, args)
        result = {
            "train_s": round(seconds, 1),
            "point": point,
            **evaluate(collection, model_dir, token_ks),
        }
        results["points"][name] = result
        print(name, json.dumps(result), flush=True)
        with open(output + ".tmp", "w") as handle:
            json.dump(results, handle, indent=2)
        os.replace(output + ".tmp", output)
    if args.search_point:
        point = parse_point(args.search_point)
        name = point_name(point)
        model_dir = os.path.join(args.work_dir, "xtr", name.replace("=", "").replace(",", "_"))
        timing = search_timing(model_dir, info, collection, token_ks, args)
        results.setdefault("search", {})[name] = timing
        with open(output + ".tmp", "w") as handle:
            json.dump(results, handle, indent=2)
        os.replace(output + ".tmp", output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
