"""Builds the shipped tiny pretrained ranker (`rankt5_jax/pretrained/tiny_pseudo_query/`).

    make pretrained        # = nice -n 5 .venv/bin/python bench/pretrain_tiny.py

The papers fine-tune a pretrained T5; no pretrained weights exist at the demo's size (2+2 layers,
d_model 32, the demo's 600-piece vocabulary), and trained from scratch on the demo's data the
tiny T5 does not learn to read the query (`bench/query_probe_bench.py`, docs/learning.md "Does
the ranker read the query?"). This pretrains it on pseudo-queries of the demo's words
(`bench/pseudo_query_data.py`: 60,000 passages, each pseudo-query two of a passage's three topic
words that no other passage holds, none a held-out demo query's word pair), 8,000 steps of
`experiments/smoke_cpu.gin` at learning rate 1e-2 (about 12 minutes on 2 cores), and writes the
parameters alone (no optimizer state) as one of our model directories, with `PROVENANCE.json`:
the commands, the data's fingerprint and the pretrained model's held-out RR@10 on its own task.
`make demo` fine-tunes from it (`rankt5_jax.pretrained.TINY_PSEUDO_QUERY`).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

TRAIN_FLAGS = (
    "--gin_file=experiments/smoke_cpu.gin",
    "--gin.LEARNING_RATE=1e-2",
    "--gin.CHECKPOINT_PERIOD=1000",
    "--gin.EVAL_PERIOD=None",
)


def main(argv: list[str] | None = None) -> int:
    from rankt5_jax import pretrained

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default=pretrained.TINY_PSEUDO_QUERY)
    parser.add_argument("--work_dir", default="/tmp/rankt5_pretrain_tiny")
    parser.add_argument("--passages", type=int, default=60000)
    parser.add_argument(
        "--seed", type=int, default=7, help="the pseudo-queries' (7: the shipped weights')"
    )
    parser.add_argument("--train_steps", type=int, default=8000)
    parser.add_argument(
        "--num_queries", type=int, default=1200, help="the demo data's (its words, vocabulary)"
    )
    args = parser.parse_args(argv)
    from rankt5_jax import quiet

    quiet.silence_startup_logs()
    quiet.import_tensorflow()
    from rankt5_jax.checkpoints import convert
    from rankt5_jax.data import formats
    from rankt5_jax.evaluation import measures
    from rankt5_jax.training import smoke

    started = time.time()
    work = os.path.abspath(args.work_dir)
    demo_data, pq_data = os.path.join(work, "demo_data"), os.path.join(work, "pseudo_queries")
    model = os.path.join(work, "model")
    # the demo's data (its words, its vocabulary)
    smoke.smoke_data(demo_data, num_queries=args.num_queries, dev_queries=args.num_queries // 6)
    train_flags = (*TRAIN_FLAGS, f"--gin.TRAIN_STEPS={args.train_steps}")
    commands = [
        [sys.executable, "bench/pseudo_query_data.py", "--demo_data", demo_data,
         "--output_dir", pq_data, "--passages", str(args.passages), "--mentions", "3",
         "--seed", str(args.seed)],
        [sys.executable, "-m", "rankt5_jax", "train", *train_flags,
         f"--gin.DATA_DIR='{pq_data}'", f"--gin.MODEL_DIR='{model}'"],
    ]  # fmt: skip
    for command in commands:
        print("$ " + " ".join(command), flush=True)
        subprocess.run(command, check=True, cwd=REPO)
    if os.path.exists(args.output_dir):
        shutil.rmtree(args.output_dir)
    convert.convert(None, model, args.output_dir, None, None, to="rankt5")
    # Its own task, held out: the 200 last pseudo-queries, BM25's top 30 re-ranked.
    info = json.load(open(os.path.join(pq_data, "smoke_data.json")))
    rerun = os.path.join(work, "dev_reranked.run")
    subprocess.run(
        [sys.executable, "-m", "rankt5_jax", "rerank", "--checkpoint", args.output_dir,
         "--queries", info["dev"]["queries"], "--corpus", info["dev"]["corpus"],
         "--run", info["dev"]["run"], "--output", rerun, "--top_k", "30", "--max_length", "64"],
        check=True, cwd=REPO,
    )  # fmt: skip
    qrels = formats.read_qrels(info["dev"]["qrels"])
    held_out = measures.evaluate_run(formats.read_run(rerun), qrels, ["RR@10"])["RR@10"]
    digest = hashlib.sha256()
    for split in ("train", "dev"):
        for key in ("queries", "qrels"):
            with open(info[split][key], "rb") as handle:
                digest.update(handle.read())
    provenance = {
        "built": datetime.date.today().isoformat(),
        "script": "bench/pretrain_tiny.py",
        # the commands run, their folders named
        "commands": [
            " ".join(command[1:])
            .replace(demo_data, "<demo data>")
            .replace(pq_data, "<pq>")
            .replace(model, "<model>")
            for command in commands
        ],
        "pseudo_queries": sum(1 for _ in open(info["train"]["queries"]))
        + sum(1 for _ in open(info["dev"]["queries"])),
        "pseudo_query_sha256": digest.hexdigest(),
        "held_out_rr10_top30": round(held_out, 4),
        "seconds": round(time.time() - started),
    }
    with open(os.path.join(args.output_dir, "PROVENANCE.json"), "w") as handle:
        json.dump(provenance, handle, indent=2)
        handle.write("\n")
    print(json.dumps(provenance, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
