"""Data preparation at scale: time and peak memory of `rankt5 prepare`.

    .venv/bin/python bench/prepare_bench.py [--passages 1000000] [--queries 100000] [--candidates 100]

Generates (once, under --work_dir) a corpus.jsonl of N passages (BEIR layout, 20-60 words each),
queries, qrels (one positive per query) and a TREC run of K candidates per query, then runs
`rankt5 prepare` in a child process and reports wall time, the child's peak RSS, and the sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench.common import write_json  # noqa: E402


def generate(work_dir: str, passages: int, queries: int, candidates: int, seed: int = 0) -> dict:
    os.makedirs(work_dir, exist_ok=True)
    paths = {
        name: os.path.join(work_dir, f)
        for name, f in [
            ("corpus", "corpus.jsonl"),
            ("queries", "queries.tsv"),
            ("qrels", "qrels.txt"),
            ("run", "run.txt"),
        ]
    }
    marker = os.path.join(work_dir, f"generated-{passages}-{queries}-{candidates}")
    if os.path.exists(marker):
        return paths
    rng = np.random.default_rng(seed)
    words = np.array([f"w{i}" for i in range(50000)])
    with open(paths["corpus"], "w") as handle:
        for start in range(0, passages, 10000):
            count = min(10000, passages - start)
            lengths = rng.integers(20, 61, size=count)
            picks = rng.integers(0, len(words), size=int(lengths.sum()))
            offset = 0
            for i, length in enumerate(lengths):
                text = " ".join(words[picks[offset : offset + length]])
                offset += length
                handle.write(json.dumps({"_id": f"p{start + i}", "title": "", "text": text}) + "\n")
    with (
        open(paths["queries"], "w") as qh,
        open(paths["qrels"], "w") as rh,
        open(paths["run"], "w") as runh,
    ):
        for q in range(queries):
            qh.write(f"q{q}\t{' '.join(words[rng.integers(0, len(words), size=6)])}\n")
            docs = rng.choice(passages, size=candidates, replace=False)
            rh.write(f"q{q} 0 p{docs[int(rng.integers(0, candidates))]} 1\n")
            runh.write(
                "".join(
                    f"q{q} Q0 p{d} {rank + 1} {100.0 - rank:.3f} bench\n"
                    for rank, d in enumerate(docs)
                )
            )
    open(marker, "w").close()
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--passages", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=100_000)
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--work_dir", default="/tmp/rankt5_prepare_bench")
    parser.add_argument("--output", default="bench/prepare_results.json")
    args = parser.parse_args(argv)

    started = time.time()
    paths = generate(args.work_dir, args.passages, args.queries, args.candidates)
    generated = time.time() - started
    out_dir = os.path.join(args.work_dir, "records")
    for name in os.listdir(args.work_dir):
        if name.endswith(".idx.npz"):
            os.remove(os.path.join(args.work_dir, name))  # measure the index build too
    cmd = [
        sys.executable,
        "-m",
        "rankt5_jax",
        "prepare",
        "--queries",
        paths["queries"],
        "--corpus",
        paths["corpus"],
        "--qrels",
        paths["qrels"],
        "--run",
        paths["run"],
        "--output_dir",
        out_dir,
        "--top_k",
        str(args.candidates),
        "--num_shards",
        "16",
    ]
    started = time.time()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    seconds = time.time() - started
    if proc.returncode:
        print(proc.stderr[-3000:], file=sys.stderr)
        return proc.returncode
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    size_mb = sum(os.path.getsize(os.path.join(out_dir, f)) for f in os.listdir(out_dir)) / 2**20
    result = {
        "passages": args.passages,
        "queries": args.queries,
        "candidates_per_query": args.candidates,
        "corpus_mb": os.path.getsize(paths["corpus"]) / 2**20,
        "generate_seconds": generated,
        "prepare_seconds": seconds,
        "candidates_per_second": args.queries * args.candidates / seconds,
        "prepare_peak_rss_mb": peak_mb,
        "records_mb": size_mb,
        "summary": proc.stdout.strip().splitlines()[-1],
    }
    print(json.dumps(result, indent=2))
    write_json(args.output, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
