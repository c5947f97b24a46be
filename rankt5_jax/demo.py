"""`make demo`: the whole RankT5 loop on CPU in a few minutes.

1. Generate a corpus whose relevance is learnable (`data/synthetic.py`), train/dev queries, qrels.
2. A BM25 first stage (`retrieval/bm25.py`) retrieves candidates; print its dev metrics.
3. `rankt5 train --gin_file=experiments/smoke_cpu.gin`: a tiny RankT5-EncDec, listwise softmax.
4. `rankt5 rerank` the held-out dev candidates and print the metrics before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from rankt5_jax import quiet  # noqa: E402

quiet.silence_startup_logs()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default="demo_output")
    parser.add_argument("--train_steps", type=int, default=1000)
    parser.add_argument("--num_queries", type=int, default=1200)
    parser.add_argument("--dev_queries", type=int, default=200)
    parser.add_argument("--variant", default="encdec", choices=["encdec", "enc"])
    args = parser.parse_args(argv)
    quiet.import_tensorflow()

    from rankt5_jax.data import formats
    from rankt5_jax.evaluation import measures
    from rankt5_jax.inference import rerank
    from rankt5_jax.training import gin_flags, smoke

    started = time.time()
    data_dir = os.path.abspath(os.path.join(args.output_dir, "data"))
    model_dir = os.path.abspath(os.path.join(args.output_dir, f"model_{args.variant}"))
    print(f"[1/4] generating data in {data_dir}", flush=True)
    info = smoke.smoke_data(data_dir, num_queries=args.num_queries, dev_queries=args.dev_queries)
    qrels = formats.read_qrels(info["dev"]["qrels"])
    bm25 = formats.read_run(info["dev"]["run"])
    first_stage = measures.evaluate_run(bm25, qrels)
    print("[2/4] BM25 on held-out queries: " + _fmt(first_stage), flush=True)

    print(f"[3/4] training a tiny RankT5-{args.variant} ({args.train_steps} steps)", flush=True)
    gin_flags.main_from_flags(
        [
            "--gin_file=experiments/smoke_cpu.gin",
            f"--gin.MODEL_DIR='{model_dir}'",
            f"--gin.DATA_DIR='{data_dir}'",
            f"--gin.TRAIN_STEPS={args.train_steps}",
            f"--gin.VARIANT='{args.variant}'",
            "--gin.EVAL_PERIOD=None",
            f"--gin.smoke.smoke_data.num_queries={args.num_queries}",
            f"--gin.smoke.smoke_data.dev_queries={args.dev_queries}",
        ]
    )
    print("[4/4] re-ranking the held-out BM25 candidates", flush=True)
    output = os.path.join(args.output_dir, "dev_reranked.run")
    reranked = rerank.rerank_files(
        model_dir,
        info["dev"]["queries"],
        info["dev"]["corpus"],
        info["dev"]["run"],
        output,
        max_length=64,
        batch_size=32,
        progress=False,
    )
    after = measures.evaluate_run(reranked, qrels)
    print()
    print(f"{'':10s}{'BM25':>10s}{'RankT5':>10s}")
    for name in after:
        print(f"{name:10s}{first_stage[name]:10.4f}{after[name]:10.4f}")
    print(f"\nrun file: {output}   model: {model_dir}   ({time.time() - started:.0f}s)")
    summary = {"bm25": first_stage, "rankt5": after}
    with open(os.path.join(args.output_dir, "demo_metrics.json"), "w") as handle:
        json.dump(summary, handle, indent=2)
    if after["RR@10"] <= first_stage["RR@10"]:
        print("RankT5 did not beat BM25 on RR@10", file=sys.stderr)
        return 1
    return 0


def _fmt(values: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:.4f}" for k, v in values.items())


if __name__ == "__main__":
    sys.exit(main())
