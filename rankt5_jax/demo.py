"""`make demo`: the whole pipeline on CPU in a few minutes, with the commands the README shows.

1. Generate a corpus whose relevance is learnable (`data/synthetic.py`), train/dev queries, qrels.
2. `rankt5 retrieve`: BM25 (bm25s) retrieves each held-out query's top 100.
3. `rankt5 train --gin_file=experiments/smoke_cpu_pretrained.gin`: a tiny RankT5-EncDec,
   listwise softmax, fine-tuned (1,000 steps, learning rate 1e-2) from the shipped pseudo-query
   pretrained weights (`rankt5_jax.pretrained`: the papers fine-tune a pretrained T5;
   `--init_checkpoint none` trains from scratch with `smoke_cpu.gin`, and from scratch the tiny
   T5 does not learn to read the query).
4. `rankt5 rerank` BM25's top 30 and top 100 with it.
5. UR2N: `rankt5 train --gin_file=experiments/smoke_cpu_ur2n.gin` trains the same ranker's XTR
   layer (every other parameter frozen), `rankt5 index` builds its compressed token index,
   `rankt5 search` retrieves with it, and `rankt5 rerank` re-ranks that retrieval with the same
   checkpoint.
6. One table: every row's metrics over the same held-out queries (trec_eval's conventions), and
   whether the papers' claims it can show hold (RankT5 holds its depth; UR2N's one checkpoint
   retrieves and re-ranks better than either stage alone).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time

from rankt5_jax import quiet  # noqa: E402

quiet.silence_startup_logs()

MEASURES = ("RR@10", "nDCG@10", "R@10", "AP")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default="demo_output")
    parser.add_argument("--train_steps", type=int, default=1000)
    parser.add_argument("--xtr_steps", type=int, default=800, help="UR2N's XTR layer (0: no UR2N)")
    parser.add_argument("--num_queries", type=int, default=1200)
    parser.add_argument("--dev_queries", type=int, default=200)
    parser.add_argument("--variant", default="encdec", choices=["encdec", "enc"])
    parser.add_argument("--ur2n_rerank_k", type=int, default=10, help="UR2N: re-rank its own top k")
    parser.add_argument(
        "--init_checkpoint",
        default="pretrained",
        help="the ranker's initial weights: 'pretrained' (the shipped tiny pseudo-query "
        "pretrained ranker, rankt5_jax.pretrained), 'none' (from scratch) or a model directory",
    )
    parser.add_argument("--seed", type=int, default=0, help="both trainings' seed")
    parser.add_argument(
        "--learning_rate",
        type=float,
        default=None,
        help="the ranker's learning rate (Adafactor; default: its gin file's, 1e-2 from the "
        "pretrained weights as measured in bench/RESULTS.md 'The demo over seeds', 3e-3 from "
        "scratch)",
    )
    args = parser.parse_args(argv)
    quiet.import_tensorflow()

    from rankt5_jax import pretrained
    from rankt5_jax.checkpoints import model_dir as model_dir_lib
    from rankt5_jax.data import formats
    from rankt5_jax.evaluation import measures
    from rankt5_jax.training import smoke

    init = {"pretrained": pretrained.TINY_PSEUDO_QUERY, "none": None}.get(
        args.init_checkpoint, args.init_checkpoint
    )
    # The shipped weights have their gin file (INIT_CHECKPOINT, vocabulary, learning rate)
    shipped = init == pretrained.TINY_PSEUDO_QUERY
    gin_file = "experiments/smoke_cpu_pretrained.gin" if shipped else "experiments/smoke_cpu.gin"
    init_flags = [f"--gin.INIT_CHECKPOINT='{init}'"] if init and not shipped else []
    seed_flags = [f"--gin.trainer.train.seed={args.seed}"] if args.seed else []
    lr_flags = [f"--gin.LEARNING_RATE={args.learning_rate:g}"] if args.learning_rate else []

    started = time.time()
    out = os.path.abspath(args.output_dir)
    data_dir = os.path.join(out, "data")
    model_dir = os.path.join(out, f"model_{args.variant}")
    total = 5 if args.xtr_steps else 4
    print(f"[1/{total}] generating data in {data_dir}", flush=True)
    # Fine-tuning reads the data through the initial checkpoint's vocabulary (its embeddings' ids)
    vocab = os.path.join(init, model_dir_lib.VOCAB_FILE) if init else None
    info = smoke.smoke_data(
        data_dir, num_queries=args.num_queries, dev_queries=args.dev_queries, vocab=vocab
    )
    dev, corpus = info["dev"], info["dev"]["corpus"]
    qrels = formats.read_qrels(dev["qrels"])
    runs: dict[str, str] = {}  # row -> run file, in the table's order
    notes: dict[str, str] = {}

    print(f"[2/{total}] BM25 (bm25s) over the held-out queries", flush=True)
    bm25_run = os.path.join(out, "dev_bm25.run")
    _rankt5("retrieve", "--corpus", corpus, "--queries", dev["queries"], "--output", bm25_run,
            "--top_k", "100", "--bm25_index", os.path.join(out, "bm25_index"))  # fmt: skip
    runs["BM25"] = bm25_run

    start = "from the pretrained weights" if init else "from scratch"
    print(
        f"[3/{total}] training a tiny RankT5-{args.variant} ({args.train_steps} steps, {start})",
        flush=True,
    )
    _rankt5(
        "train",
        f"--gin_file={gin_file}",
        f"--gin.MODEL_DIR='{model_dir}'",
        f"--gin.DATA_DIR='{data_dir}'",
        f"--gin.TRAIN_STEPS={args.train_steps}",
        f"--gin.VARIANT='{args.variant}'",
        "--gin.EVAL_PERIOD=None",
        f"--gin.smoke.smoke_data.num_queries={args.num_queries}",
        f"--gin.smoke.smoke_data.dev_queries={args.dev_queries}",
        *init_flags,
        *seed_flags,
        *lr_flags,
    )
    print(f"[4/{total}] re-ranking BM25's top 30 and top 100 with it", flush=True)
    for k in (30, 100):
        output = os.path.join(out, f"dev_bm25_top{k}_rankt5.run")
        _rerank(model_dir, dev, corpus, bm25_run, output, k)
        runs[f"BM25 top {k} + RankT5"] = output

    if args.xtr_steps:
        ur2n_dir, index_dir = os.path.join(out, "model_ur2n"), os.path.join(out, "ur2n_index")
        print(
            f"[5/{total}] UR2N: the same ranker's XTR layer ({args.xtr_steps} steps), its "
            "token index, its retrieval, re-ranked by the same checkpoint",
            flush=True,
        )
        _rankt5(
            "train",
            "--gin_file=experiments/smoke_cpu_ur2n.gin",
            f"--gin.MODEL_DIR='{ur2n_dir}'",
            f"--gin.INIT_CHECKPOINT='{model_dir}'",
            f"--gin.VARIANT='{args.variant}'",
            f"--gin.DATA_DIR='{data_dir}'",
            f"--gin.TRAIN_STEPS={args.xtr_steps}",
            f"--gin.smoke.smoke_data.num_queries={args.num_queries}",
            f"--gin.smoke.smoke_data.dev_queries={args.dev_queries}",
            *seed_flags,
        )
        _rankt5("index", "--checkpoint", ur2n_dir, "--corpus", corpus, "--index_dir", index_dir)
        xtr_run = os.path.join(out, "dev_ur2n.run")
        _rankt5("search", "--index_dir", index_dir, "--queries", dev["queries"],
                "--output", xtr_run, "--top_k", "100")  # fmt: skip
        from rankt5_jax.retrieval import token_index

        stats = token_index.index_stats(index_dir)
        name = (
            f"UR2N retrieval ({stats['codec']}, {stats['compressed_bytes_per_token']:.0f} B/token)"
        )
        runs[name] = xtr_run
        k = args.ur2n_rerank_k
        output = os.path.join(out, f"dev_ur2n_top{k}_rerank.run")
        _rerank(ur2n_dir, dev, corpus, xtr_run, output, k)
        runs[f"UR2N top {k} + re-rank (same checkpoint)"] = output
        notes["ur2n_index"] = {k: stats[k] for k in ("tokens", "codec", "dim")}

    table = {row: measures.evaluate_run(formats.read_run(path), qrels, MEASURES)
             for row, path in runs.items()}  # fmt: skip
    print()
    width = max(map(len, table)) + 2
    print(f"{'':{width}s}" + "".join(f"{m:>9s}" for m in MEASURES))
    for row, values in table.items():
        print(f"{row:{width}s}" + "".join(f"{values[m]:9.4f}" for m in MEASURES))
    elapsed = time.time() - started
    print(f"\n{len(qrels)} held-out queries; runs, models and index in {out} ({elapsed:.0f}s)")
    summary = {"rows": table, "runs": runs, "seconds": round(elapsed, 1), "init_checkpoint": init,
               "seed": args.seed, **notes}  # fmt: skip
    with open(os.path.join(out, "demo_metrics.json"), "w") as handle:
        json.dump(summary, handle, indent=2)
    print(_claims(table))
    if table["BM25 top 30 + RankT5"]["RR@10"] <= table["BM25"]["RR@10"]:
        print("RankT5 did not beat BM25 on RR@10", file=sys.stderr)
        return 1
    return 0


def _claims(table: dict) -> str:
    """The papers' claims the table can show (issues 23 and 27), each with its figures."""
    rr = {row: values["RR@10"] for row, values in table.items()}
    top30, top100 = rr["BM25 top 30 + RankT5"], rr["BM25 top 100 + RankT5"]
    lines = [
        f"RankT5 holds its depth (top 100 >= top 30 - 0.05, above BM25): {top100:.3f} vs "
        f"{top30:.3f} and {rr['BM25']:.3f}: "
        + ("yes" if top100 >= top30 - 0.05 and top100 > rr["BM25"] else "no"),
    ]
    retrieval = next((row for row in rr if row.startswith("UR2N retrieval")), None)
    reranked = next((row for row in rr if row.startswith("UR2N top")), None)
    if retrieval and reranked:
        best_bm25 = max(top30, top100)
        lines.append(
            f"UR2N: one checkpoint's retrieve + re-rank beats its retrieval and BM25 + RankT5: "
            f"{rr[reranked]:.3f} vs {rr[retrieval]:.3f} and {best_bm25:.3f}: "
            + ("yes" if rr[reranked] > max(rr[retrieval], best_bm25) else "no")
        )
    return "\n".join(lines)


def _rerank(checkpoint: str, dev: dict, corpus: str, run: str, output: str, k: int) -> None:
    for stale in (output, output + ".journal"):  # an earlier demo's: re-ranked afresh
        if os.path.isdir(stale):
            shutil.rmtree(stale)
        elif os.path.exists(stale):
            os.remove(stale)
    _rankt5("rerank", "--checkpoint", checkpoint, "--queries", dev["queries"], "--corpus", corpus,
            "--run", run, "--output", output, "--top_k", str(k), "--max_length", "64")  # fmt: skip


def _rankt5(*argv: str) -> None:
    """Runs `rankt5 ARGV` in this process (the command printed as a user would type it)."""
    from rankt5_jax import cli

    print("  $ rankt5 " + " ".join(shlex.quote(a) for a in argv), flush=True)
    code = cli.main(list(argv))
    if code:
        raise SystemExit(f"demo: `rankt5 {argv[0]}` failed (exit {code})")


if __name__ == "__main__":
    sys.exit(main())
