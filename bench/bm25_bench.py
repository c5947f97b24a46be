"""BM25 at scale: our `BM25Index` (what `rankt5 retrieve` runs) against bm25s called directly,
side by side in one run.

    .venv/bin/python bench/bm25_bench.py [--passages 1000000] [--queries 1000] [--top_k 1000]

Generates (once, under --work_dir) a TSV corpus of N passages whose words follow a Zipf law
(exponent 1) over 500k pseudo-words, Lucene's 33 English stopwords being the most frequent;
20 to 92 words per passage (mean 56, as MS MARCO's passages), and Q queries of 2 to 8 words from
the same law. Then each side runs in its own child process, one after the other (so each peak
RSS is its own):

  ours      `bm25.build_from_file` (one pass: read, tokenise, index; token ids kept, not texts),
            `save`, `load`, `search` (top-k with trec_eval's tie order, positive scores only)
  bm25s     bm25s as its README shows, with our settings (Lucene's BM25, k1=0.9, b=0.4,
            English stopwords, Snowball stemmer): texts read into a list, `bm25s.tokenize`,
            `BM25(method="lucene").index`, `retrieve(k=top_k)`. The same work as ours, so
            ours/bm25s is what our layer costs.
  defaults  bm25s with every default (`tokenize`'s English stopwords, no stemmer; `BM25()`:
            k1=1.5, b=0.75): what a plain bm25s user gets.

Indexing time counts reading the file. Both bm25s sides import bm25s as a user would, so its
top-k runs through JAX where JAX is installed (here); ours imports it with JAX hidden and selects
with numpy. The run checks that ours and bm25s (same settings) give the same top-10 scores.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

STOPWORDS = (
    "a an and are as at be but by for if in into is it no not of on or such that the their "
    "then there these they this to was will with"
).split()
_ONSETS = list("bdfgklmnprstvz")
_VOWELS = list("aeiou")
_SYLLABLES = [o + v for o in _ONSETS for v in _VOWELS]  # 70


def _pseudo_word(i: int) -> str:
    """The i-th pseudo-word: i in base 70, at least two syllables."""
    parts = []
    i += len(_SYLLABLES)  # two syllables at least
    while i:
        i, digit = divmod(i, len(_SYLLABLES))
        parts.append(_SYLLABLES[digit])
    return "".join(reversed(parts))


def generate(work_dir: str, passages: int, queries: int, vocab: int, seed: int = 0) -> dict:
    """Writes corpus.tsv and queries.tsv (once per size and seed); -> their paths."""
    os.makedirs(work_dir, exist_ok=True)
    tag = f"{passages}-{queries}-{vocab}-{seed}"
    paths = {
        "corpus": os.path.join(work_dir, f"corpus-{tag}.tsv"),
        "queries": os.path.join(work_dir, f"queries-{tag}.tsv"),
    }
    if all(os.path.exists(p) for p in paths.values()):
        return paths
    words = np.array(STOPWORDS + [_pseudo_word(i) for i in range(vocab)])
    cdf = np.cumsum(1.0 / np.arange(1, len(words) + 1))
    cdf /= cdf[-1]
    rng = np.random.default_rng(seed)

    def draw(count: int) -> np.ndarray:
        return words[np.minimum(np.searchsorted(cdf, rng.random(count)), len(words) - 1)]

    with open(paths["corpus"] + ".tmp", "w") as handle:
        for start in range(0, passages, 20000):
            count = min(20000, passages - start)
            lengths = rng.integers(20, 93, size=count)
            drawn = draw(int(lengths.sum())).tolist()
            bounds = np.concatenate([[0], np.cumsum(lengths)]).tolist()
            handle.write(
                "".join(
                    f"p{start + i}\t{' '.join(drawn[bounds[i] : bounds[i + 1]])}\n"
                    for i in range(count)
                )
            )
    os.replace(paths["corpus"] + ".tmp", paths["corpus"])
    with open(paths["queries"], "w") as handle:
        for q in range(queries):
            handle.write(f"q{q}\t{' '.join(draw(int(rng.integers(2, 9))).tolist())}\n")
    return paths


def write_json(path: str, result: dict) -> None:
    """As `bench.common.write_json`, which imports JAX (the children must not: their peak RSS
    and bm25s's top-k backend would change)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as handle:
        json.dump(result, handle, indent=2)


def _peak_rss_mb() -> float:
    """This process's peak RSS: VmHWM (Linux; ru_maxrss of a child starts from its parent's
    peak at fork), else ru_maxrss."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def side_ours(paths: dict, top_k: int, work_dir: str) -> dict:
    from rankt5_jax.data import formats
    from rankt5_jax.retrieval import bm25

    bm25._bm25s()
    queries = formats.read_queries(paths["queries"])
    baseline = _peak_rss_mb()
    start = time.perf_counter()
    index = bm25.build_from_file(paths["corpus"], progress=False)
    index_s = time.perf_counter() - start
    index_dir = os.path.join(work_dir, "ours_index")
    start = time.perf_counter()
    index.save(index_dir)
    save_s = time.perf_counter() - start
    documents, terms = len(index), index.num_terms
    del index
    start = time.perf_counter()
    index = bm25.BM25Index.load(index_dir)
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    run = index.search(queries, top_k)
    search_s = time.perf_counter() - start
    top = {}
    for qid, docs in run.items():
        ranked = sorted(docs.items(), key=lambda item: -item[1])[:10]
        top[qid] = [[d, s] for d, s in ranked]
    return {
        "baseline_rss_mb": baseline,
        "documents": documents,
        "terms": terms,
        "index_s": index_s,
        "save_s": save_s,
        "load_s": load_s,
        "search_s": search_s,
        "returned_per_query": float(np.mean([len(d) for d in run.values()])),
        "top10": top,
    }


def side_bm25s(paths: dict, top_k: int, defaults: bool) -> dict:
    import bm25s
    import Stemmer

    qids, qtexts = [], []
    with open(paths["queries"]) as handle:
        for line in handle:
            qid, text = line.rstrip("\n").split("\t", 1)
            qids.append(qid)
            qtexts.append(text)
    baseline = _peak_rss_mb()
    start = time.perf_counter()
    docids, texts = [], []
    with open(paths["corpus"]) as handle:
        for line in handle:
            docid, text = line.rstrip("\n").split("\t", 1)
            docids.append(docid)
            texts.append(text)
    if defaults:
        tokens = bm25s.tokenize(texts, show_progress=False)
        retriever = bm25s.BM25()
        stemmer = None
    else:
        stemmer = Stemmer.Stemmer("english")
        tokens = bm25s.tokenize(texts, stopwords="en", stemmer=stemmer, show_progress=False)
        retriever = bm25s.BM25(method="lucene", k1=0.9, b=0.4)
    del texts
    retriever.index(tokens, show_progress=False)
    index_s = time.perf_counter() - start
    del tokens
    start = time.perf_counter()
    query_tokens = (
        bm25s.tokenize(qtexts, stopwords="en", stemmer=stemmer, show_progress=False)
        if not defaults
        else bm25s.tokenize(qtexts, show_progress=False)
    )
    docs, scores = retriever.retrieve(query_tokens, k=top_k, show_progress=False)
    search_s = time.perf_counter() - start
    top = {
        qid: [[docids[i], float(s)] for i, s in zip(docs[row][:10], scores[row][:10]) if s > 0]
        for row, qid in enumerate(qids)
    }
    return {
        "baseline_rss_mb": baseline,
        "documents": len(docids),
        "index_s": index_s,
        "search_s": search_s,
        "top10": top,
    }


def _compare_top10(ours: dict, theirs: dict) -> dict:
    """Same top-10 scores (docids may differ only inside ties)?"""
    max_diff, same_docs, same_length = 0.0, 0, 0
    for qid, ranked in theirs.items():
        mine = ours.get(qid, [])
        same_length += len(mine) == len(ranked)
        if mine and len(mine) == len(ranked):
            diff = np.abs(np.array([s for _, s in mine]) - np.array([s for _, s in ranked]))
            max_diff = max(max_diff, float(diff.max()))
        same_docs += sorted(d for d, _ in mine) == sorted(d for d, _ in ranked)
    return {
        "queries": len(theirs),
        "queries_same_top10_length": same_length,
        "queries_same_top10_docs": same_docs,
        "max_abs_top10_score_diff": max_diff,
    }


def _child(args) -> None:
    paths = {"corpus": args.corpus, "queries": args.queries_file}
    if args.side == "ours":
        result = side_ours(paths, args.top_k, args.work_dir)
    else:
        result = side_bm25s(paths, args.top_k, defaults=args.side == "defaults")
    result["peak_rss_mb"] = _peak_rss_mb()
    write_json(args.output, result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passages", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--vocab", type=int, default=500_000, help="pseudo-words (+33 stopwords)")
    parser.add_argument("--top_k", type=int, default=1000)
    parser.add_argument("--sides", default="ours,bm25s,defaults")
    parser.add_argument("--work_dir", default="/tmp/rankt5_bm25_bench")
    parser.add_argument(
        "--in_process",
        action="store_true",
        help="run the sides in this process (a quick check: peak RSS figures then mean nothing)",
    )
    parser.add_argument("--output", default=os.path.join(REPO, "bench", "bm25_results.json"))
    parser.add_argument("--side", help=argparse.SUPPRESS)  # child process: one side
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--queries_file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        return _child(args)

    start = time.perf_counter()
    paths = generate(args.work_dir, args.passages, args.queries, args.vocab)
    generate_s = time.perf_counter() - start
    sides = {}
    for side in args.sides.split(","):
        out = os.path.join(args.work_dir, f"side-{side}.json")
        child = ["--side", side, "--corpus", paths["corpus"], "--queries_file", paths["queries"]]
        child += ["--top_k", str(args.top_k), "--work_dir", args.work_dir, "--output", out]
        if args.in_process:
            _child(parser.parse_args(child))
        else:
            subprocess.run(
                [sys.executable, os.path.abspath(__file__), *child], check=True, cwd=REPO
            )
        with open(out) as handle:
            sides[side] = json.load(handle)
        print(side, {k: v for k, v in sides[side].items() if k != "top10"}, file=sys.stderr)

    rows = {}
    for side, result in sides.items():
        rows[side] = {
            "index_s": result["index_s"],
            "docs_per_s": result["documents"] / result["index_s"],
            "search_s": result["search_s"],
            "queries_per_s": args.queries / result["search_s"],
            "peak_rss_mb": result["peak_rss_mb"],
            "rss_growth_mb": result["peak_rss_mb"] - result["baseline_rss_mb"],
        }
        for key in ("save_s", "load_s", "terms", "returned_per_query"):
            if key in result:
                rows[side][key] = result[key]
    from bench.common import cpu_model

    report = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "passages": args.passages,
        "queries": args.queries,
        "vocab": args.vocab + len(STOPWORDS),
        "top_k": args.top_k,
        "corpus_mb": os.path.getsize(paths["corpus"]) / 2**20,
        "generate_s": generate_s,
        "rows": rows,
    }
    if "ours" in sides and "bm25s" in sides:
        report["ours_over_bm25s"] = {
            "index_time": rows["ours"]["index_s"] / rows["bm25s"]["index_s"],
            "search_time": rows["ours"]["search_s"] / rows["bm25s"]["search_s"],
            "rss_growth": rows["ours"]["rss_growth_mb"] / rows["bm25s"]["rss_growth_mb"],
        }
        report["check"] = _compare_top10(sides["ours"]["top10"], sides["bm25s"]["top10"])
    write_json(args.output, report)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
