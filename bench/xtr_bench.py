"""UR2N's first stage at scale: token indexing, index size, search speed and recall.

    nice .venv/bin/python bench/xtr_bench.py [--passages 100000] [--queries 200] [--dtype bfloat16]

Generates (once, under --work_dir) a corpus of N passages (20-40 pseudo-words each, Zipf-drawn
from 5,000 words) and queries (4-6 words of a random passage), trains a SentencePiece vocabulary
on a sample, and builds a tiny T5 ranker with an XTR layer (`xtr_dim` 128, as UR2N; 2 layers
of width `emb_dim` 128, so the embeddings span all 128 dimensions as a real model's do; fresh
random weights, its XTR layer a copy of the last encoder layer, as training starts; or
`--checkpoint` for a trained UR2N model). Then on whatever `jax.devices()` is:

* indexing: `token_index.build_index` (training the compression, then the streamed chunks) ->
  passages/s of the encoding phase and of the whole build, the process's peak RSS;
* size: bytes per token, flat float32 against the compressed index (codes, doc numbers, list
  offsets and quantizer), and Faiss's in-memory bytes per token;
* search: queries/s of exact search (JAX, on the device) and of the compressed index (Faiss,
  each --nprobe), timed after a warm-up batch; recall@100 of each compressed setting against
  exact search (the fraction of exact search's top 100 it finds).

Writes a JSON of everything (--output).

    nice .venv/bin/python bench/xtr_bench.py codecs [--steps 800] [--codecs ivfpq4,ivfsq4,...]

The codec comparison (`docs/retrieval.md`, "Choosing the codec"): generates the smoke
collection at demo size (1,200 queries, ~8,600 passages, 200 held-out queries), trains a tiny
UR2N model on it with `smoke_cpu_ur2n.gin` (`--steps`, `--temperature`), encodes the corpus once
and builds one index per codec from those vectors; for each: bytes per token on disk, recall@100
of exact search's top 100, RR@10 of the held-out queries, the codec's build time (training and
compressing, the encoder's time left out: it is the same for all) and search queries/s.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import sys
import threading
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench.common import cpu_model, device_name, write_json  # noqa: E402


def generate(
    work_dir: str, passages: int, queries: int, seed: int = 0, vocab_size: int = 2000
) -> dict:
    """corpus.jsonl, queries.tsv and spiece.model under `work_dir` (kept between runs)."""
    from rankt5_jax.data import synthetic

    os.makedirs(work_dir, exist_ok=True)
    paths = {
        "corpus": os.path.join(work_dir, f"corpus_{passages}.jsonl"),
        "queries": os.path.join(work_dir, f"queries_{passages}_{queries}.tsv"),
        "vocab": os.path.join(work_dir, "spiece.model"),
    }
    rng = np.random.default_rng(seed)
    words = np.array(synthetic._words(5000, rng, 3))
    weights = 1.0 / np.arange(1, len(words) + 1)  # Zipf
    weights /= weights.sum()
    if not os.path.isfile(paths["corpus"]):
        with open(paths["corpus"] + ".tmp", "w") as handle:
            for start in range(0, passages, 10_000):
                count = min(10_000, passages - start)
                lengths = rng.integers(20, 41, size=count)
                picks = rng.choice(len(words), size=int(lengths.sum()), p=weights)
                offset = 0
                for i, length in enumerate(lengths):
                    text = " ".join(words[picks[offset : offset + length]])
                    offset += length
                    record = {"_id": f"p{start + i}", "title": "", "text": text}
                    handle.write(json.dumps(record) + "\n")
        os.replace(paths["corpus"] + ".tmp", paths["corpus"])
    if not os.path.isfile(paths["vocab"]):  # trained on the first 2,000 passages
        with open(paths["corpus"]) as handle:
            sample = [json.loads(line)["text"] for _, line in zip(range(2000), handle)]
        collection = {"corpus": {str(i): {"text": t} for i, t in enumerate(sample)}, "queries": {}}
        synthetic.train_sentencepiece(os.path.join(work_dir, "spiece"), vocab_size, collection)
    if not os.path.isfile(paths["queries"]):
        chosen = np.sort(rng.choice(passages, size=queries, replace=False))
        lines, position = [], 0
        with open(paths["corpus"]) as handle:
            for number, line in enumerate(handle):
                if position < len(chosen) and number == chosen[position]:
                    text = json.loads(line)["text"].split()
                    take = int(rng.integers(4, 7))
                    start = int(rng.integers(0, max(len(text) - take, 1)))
                    lines.append(f"q{position}\t{' '.join(text[start : start + take])}\n")
                    position += 1
        with open(paths["queries"], "w") as handle:
            handle.writelines(lines)
    return paths


def make_encoder(args, vocab_path: str):
    import jax

    from rankt5_jax.data.vocab import Vocabulary, padded_vocab_size
    from rankt5_jax.modeling import registry
    from rankt5_jax.modeling.network import get_config
    from rankt5_jax.retrieval import xtr_encoder

    if args.checkpoint:
        return xtr_encoder.load_encoder(
            args.checkpoint,
            dtype=args.dtype,
            max_length=args.max_length,
            batch_tokens=args.batch_tokens,
        )
    vocab = Vocabulary(vocab_path)
    widths = {}
    if args.emb_dim:  # a wider tiny model: its token embeddings span all xtr_dim dimensions
        heads = get_config(args.size).num_heads
        widths = dict(
            emb_dim=args.emb_dim, head_dim=args.emb_dim // heads, mlp_dim=2 * args.emb_dim
        )
    config = get_config(
        args.size,
        vocab_size=padded_vocab_size(vocab.size),
        xtr_dim=args.xtr_dim,
        **widths,
        dtype=args.dtype,
        dropout_rate=0.0,
    )
    model = registry.build_model(registry.make_spec("monot5", config, vocab))
    shapes = {"encoder_input_tokens": (1, 1, 16)}
    params = model.get_initial_variables(jax.random.PRNGKey(args.seed), shapes)["params"]
    return xtr_encoder.encoder_from_model(
        model,
        params,
        vocab,
        max_length=args.max_length,
        batch_tokens=args.batch_tokens,
        source=f"random {args.size}",
    )


class PeakAnonymousMemory:
    """Samples this process's anonymous resident memory (`RssAnon`: heap and arrays, not the
    memory-mapped index files, whose pages the kernel can drop) every 50 ms; `.peak_mb`."""

    def __init__(self):
        self.peak_mb = 0.0
        self._stop = threading.Event()

    @staticmethod
    def current_mb() -> float:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def _run(self):
        while not self._stop.wait(0.05):
            self.peak_mb = max(self.peak_mb, self.current_mb())

    def __enter__(self):
        self.peak_mb = self.current_mb()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self.current_mb())


def time_search(searcher, query_vectors, batch: int, top_k: int, token_k: int):
    """(queries/s after a warm-up batch, results)."""
    searcher.search_vectors(query_vectors[:batch], top_k, token_k)  # compile, first touch
    started = time.perf_counter()
    results = []
    for start in range(0, len(query_vectors), batch):
        results += searcher.search_vectors(query_vectors[start : start + batch], top_k, token_k)
    return len(query_vectors) / (time.perf_counter() - started), results


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passages", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--work_dir", default="/tmp/rankt5_xtr_bench")
    parser.add_argument("--vocab_size", type=int, default=2000, help="SentencePiece pieces")
    parser.add_argument("--checkpoint", help="a UR2N checkpoint (default: a fresh tiny model)")
    parser.add_argument("--size", default="tiny", help="T5 size of the fresh model")
    parser.add_argument("--xtr_dim", type=int, default=128)
    parser.add_argument(
        "--emb_dim",
        type=int,
        default=128,
        help="d_model of the fresh model (0: the size's own; tiny's 32 would make the 128-wide "
        "XTR embeddings rank 32)",
    )
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--batch_tokens", type=int, help="encoder tokens per call")
    parser.add_argument("--chunk_passages", type=int, default=4096)
    parser.add_argument("--shard_passages", type=int, default=50_000)
    parser.add_argument(
        "--codec",
        default="ivfpq",
        help="the token index's codec (retrieval/codecs.py; the figures in bench/RESULTS.md's "
        "100k-passage table are IVF-PQ's, the index's default before the codec comparison)",
    )
    parser.add_argument("--pq_m", type=int, default=0, help="ivfpq/opq: 0: xtr_dim / 8")
    parser.add_argument("--top_k", type=int, default=100)
    parser.add_argument("--token_k", type=int, default=500)
    parser.add_argument("--nprobe", default="8,32", help="comma-separated Faiss nprobe values")
    parser.add_argument("--batch_queries", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=os.path.join(REPO, "bench", "xtr_results.json"))
    args = parser.parse_args(argv)

    import jax

    from rankt5_jax.retrieval import token_index, xtr_search

    paths = generate(args.work_dir, args.passages, args.queries, args.seed, args.vocab_size)
    encoder = make_encoder(args, paths["vocab"])
    index_dir = os.path.join(args.work_dir, f"index_{args.passages}_{args.dtype}")
    shutil.rmtree(index_dir, ignore_errors=True)
    settings = token_index.IndexSettings(
        chunk_passages=args.chunk_passages,
        shard_passages=args.shard_passages,
        codec=args.codec,
        pq_m=args.pq_m,
        seed=args.seed,
        exact="yes",
    )
    before_mb = PeakAnonymousMemory.current_mb()
    started = time.perf_counter()
    with PeakAnonymousMemory() as train_memory:
        token_index.build_index(paths["corpus"], index_dir, encoder, settings, train_only=True)
    trained = time.perf_counter()
    with PeakAnonymousMemory() as index_memory:
        token_index.build_index(paths["corpus"], index_dir, encoder, settings)
    built = time.perf_counter()
    stats = token_index.index_stats(index_dir)
    info = token_index.read_index_info(index_dir)

    with open(paths["queries"]) as handle:
        texts = [line.rstrip("\n").split("\t", 1)[1] for line in handle]
    query_vectors = encoder.encode_queries(texts)
    exact = xtr_search.Searcher(index_dir, exact=True, dtype=args.dtype)
    exact_qps, truth = time_search(
        exact, query_vectors, args.batch_queries, args.top_k, args.token_k
    )
    rows = []
    for nprobe in [int(n) for n in args.nprobe.split(",")]:
        opened = time.perf_counter()
        compressed = xtr_search.Searcher(index_dir, nprobe=nprobe)
        load_s = time.perf_counter() - opened
        qps, found = time_search(
            compressed, query_vectors, args.batch_queries, args.top_k, args.token_k
        )
        recall = np.mean(
            [len(set(f[0]) & set(t[0])) / max(len(t[0]), 1) for f, t in zip(found, truth)]
        )
        rows.append(
            {"nprobe": nprobe, "queries_per_s": qps, "recall_at_100": recall, "load_s": load_s}
        )

    result = {
        "device": device_name(),
        "devices": len(jax.devices()),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "dtype": args.dtype,
        "model": encoder.fingerprint,
        "passages": args.passages,
        "queries": len(texts),
        "tokens": stats["tokens"],
        "tokens_per_passage": stats["tokens_per_passage"],
        "settings": info["settings"],
        "train_s": trained - started,
        "index_s": built - trained,
        "index_passages_per_s": args.passages / (built - trained),
        "build_passages_per_s": args.passages / (built - started),
        "anon_mb_before_build": before_mb,
        "train_peak_anon_mb": train_memory.peak_mb,
        "index_peak_anon_mb": index_memory.peak_mb,
        "peak_rss_mb_with_mapped_files": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "flat_bytes_per_token": stats["flat_bytes_per_token"],
        "compressed_bytes_per_token": stats["compressed_bytes_per_token"],
        "compressed_reduction": stats["compressed_reduction"],
        "code_bytes_per_token": stats["code_bytes_per_token"],
        "search_memory_bytes_per_token": stats["search_memory_bytes_per_token"],
        "exact_bytes_per_token": stats["exact_bytes_per_token"],
        "quantizer_bytes": stats["quantizer_bytes"],
        "top_k": args.top_k,
        "token_k": args.token_k,
        "batch_queries": args.batch_queries,
        "exact_queries_per_s": exact_qps,
        "compressed": rows,
    }
    write_json(args.output, result)
    print(json.dumps(result, indent=1))
    return result


def codec_main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description="token index codecs on a trained tiny model")
    parser.add_argument("--work_dir", default="/tmp/rankt5_codec_bench")
    parser.add_argument("--queries", type=int, default=1200, help="generated queries")
    parser.add_argument("--dev_queries", type=int, default=200, help="held out, for RR@10")
    parser.add_argument("--steps", type=int, default=800, help="XTR training steps")
    parser.add_argument("--temperature", type=float, default=0.05)
    parser.add_argument("--model", help="a trained UR2N model (default: train one)")
    parser.add_argument(
        "--codecs",
        default="ivfpq4,opq4,ivfres1,ivfpq8,opq8,ivfres2,ivfpq16,ivfres4,ivfsq4,ivfpq32,ivfsq8,ivfflat",
    )
    parser.add_argument("--token_k", type=int, default=500)
    parser.add_argument("--nprobe", type=int, default=32)
    parser.add_argument("--rescore", type=int, default=4, help="also each codec re-scored")
    parser.add_argument("--top_k", type=int, default=100)
    parser.add_argument("--max_length", type=int, default=64)
    parser.add_argument("--output", default=os.path.join(REPO, "bench", "codec_results.json"))
    args = parser.parse_args(argv)

    import subprocess

    from rankt5_jax.data import formats
    from rankt5_jax.evaluation import measures
    from rankt5_jax.retrieval import token_index, xtr_encoder, xtr_search
    from rankt5_jax.training import smoke

    data_dir = os.path.join(args.work_dir, "data")
    info = smoke.smoke_data(data_dir, num_queries=args.queries, dev_queries=args.dev_queries)
    model = args.model or os.path.join(args.work_dir, f"model_{args.steps}_{args.temperature}")
    if not os.path.isfile(os.path.join(model, "rankt5.json")):
        started = time.perf_counter()
        subprocess.run(
            [
                sys.executable, "-m", "rankt5_jax", "train",
                "--gin_file=experiments/smoke_cpu_ur2n.gin",
                f"--gin.MODEL_DIR='{model}'", f"--gin.DATA_DIR='{data_dir}'",
                f"--gin.TRAIN_STEPS={args.steps}", f"--gin.TEMPERATURE={args.temperature}",
            ],
            check=True, cwd=REPO,
        )  # fmt: skip
        print(f"trained {model} in {time.perf_counter() - started:.0f}s", file=sys.stderr)
    encoder = xtr_encoder.CachedEncoder(xtr_encoder.load_encoder(model, max_length=args.max_length))
    corpus = info["dev"]["corpus"]
    queries = formats.read_queries(info["dev"]["queries"])
    qrels = formats.read_qrels(info["dev"]["qrels"])
    query_vectors = encoder.encode_queries(list(queries.values()))
    qids = list(queries)

    def run_of(searcher, found):
        ids = searcher.index.doc_ids
        return {
            q: {ids[n]: float(x) for n, x in zip(numbers, scores)}
            for q, (numbers, scores) in zip(qids, found)
        }

    def rr10(run):
        return measures.evaluate_run(run, qrels, ["RR@10"])["RR@10"]

    rows, truth, exact_row = [], None, None
    for name in ["ivfflat"] + [c for c in args.codecs.split(",") if c != "ivfflat"]:
        index_dir = os.path.join(args.work_dir, f"index_{name}")
        shutil.rmtree(index_dir, ignore_errors=True)
        settings = token_index.IndexSettings(
            chunk_passages=2048, codec=name, exact="yes" if truth is None else "no"
        )
        started = time.perf_counter()
        token_index.build_index(corpus, index_dir, encoder, settings, progress=False)
        build_s = time.perf_counter() - started
        stats = token_index.index_stats(index_dir)
        if truth is None:  # the first index (ivfflat) also holds the float vectors
            exact = xtr_search.Searcher(index_dir, exact=True)
            exact_qps, truth = time_search(exact, query_vectors, 32, args.top_k, args.token_k)
            exact_row = {
                "queries_per_s": exact_qps,
                "rr_at_10": rr10(run_of(exact, truth)),
                "tokens": stats["tokens"],
                "passages": stats["passages"],
                "exact_bytes_per_token": stats["exact_bytes_per_token"],
                "nlist": stats["nlist"],
            }
        searcher = xtr_search.Searcher(index_dir, nprobe=args.nprobe)
        qps, found = time_search(searcher, query_vectors, 32, args.top_k, args.token_k)
        recall = np.mean(
            [len(set(f[0]) & set(t[0])) / max(len(t[0]), 1) for f, t in zip(found, truth)]
        )
        row = {
            "codec": name,
            "code_bytes_per_token": stats["code_bytes_per_token"],
            "bytes_per_token": stats["compressed_bytes_per_token"],
            "recall_at_100": float(recall),
            "rr_at_10": rr10(run_of(searcher, found)),
            "build_s": build_s,
            "queries_per_s": qps,
        }
        if args.rescore and name != "ivfflat":  # the same codes, re-scored with the vectors
            with_vectors = os.path.join(args.work_dir, f"index_{name}_vectors")
            shutil.rmtree(with_vectors, ignore_errors=True)
            settings = dataclasses.replace(settings, exact="yes")
            token_index.build_index(corpus, with_vectors, encoder, settings, progress=False)
            rescored = xtr_search.Searcher(with_vectors, nprobe=args.nprobe, rescore=args.rescore)
            qps, found = time_search(rescored, query_vectors, 32, args.top_k, args.token_k)
            row["rescored_recall_at_100"] = float(
                np.mean([len(set(f[0]) & set(t[0])) / len(t[0]) for f, t in zip(found, truth)])
            )
            row["rescored_rr_at_10"] = rr10(run_of(rescored, found))
            row["rescored_queries_per_s"] = qps
            shutil.rmtree(with_vectors, ignore_errors=True)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    result = {
        "device": device_name(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "model": model,
        "steps": args.steps,
        "temperature": args.temperature,
        "queries": len(queries),
        "token_k": args.token_k,
        "nprobe": args.nprobe,
        "rescore": args.rescore,
        "exact": exact_row,
        "codecs": rows,
    }
    write_json(args.output, result)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    if sys.argv[1:2] == ["codecs"]:
        codec_main(sys.argv[2:])
    else:
        main()
