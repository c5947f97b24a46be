"""`rankt5 index` and `rankt5 search`: UR2N's first stage (an XTR token index of a corpus, built
with a checkpoint's XTR layer, and search over it). See `retrieval/token_index.py` and
`retrieval/xtr_search.py`."""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile

from rankt5_jax.cli import flags
from rankt5_jax.data import paths


def _index(args: argparse.Namespace) -> int:
    from rankt5_jax.retrieval import token_index, xtr_encoder

    settings = token_index.IndexSettings(
        chunk_passages=args.chunk_passages,
        shard_passages=args.shard_passages,
        nlist=args.nlist,
        pq_m=args.pq_m,
        pq_bits=args.pq_bits,
        train_passages=args.train_passages,
        kmeans_iterations=args.kmeans_iterations,
        seed=args.seed,
        exact=args.store_vectors,
        include_title=not args.no_title,
        codec=args.codec,
    )
    settings.check()
    index_dir = args.index_dir
    if paths.is_remote(index_dir):  # built in a folder of this host, then uploaded
        local, fetched = _stage_index(index_dir, args.process_id, args.num_processes)
        args = argparse.Namespace(**{**vars(args), "index_dir": local})
    encoder = xtr_encoder.load_encoder(
        args.checkpoint,
        vocab=args.vocab,
        variant=args.variant,
        dtype=args.dtype,
        step=args.step,
        max_length=args.max_length,
        batch_tokens=args.batch_tokens,
    )
    token_index.build_index(
        args.corpus,
        args.index_dir,
        encoder,
        settings,
        host_id=args.process_id,
        num_hosts=args.num_processes,
        strict=not args.lenient,
        train_only=args.train_only,
    )
    stats = None
    if not args.train_only:
        from rankt5_jax.errors import ConfigError

        try:
            stats = token_index.index_stats(args.index_dir)
        except ConfigError:  # other hosts' shards still missing
            pass
    if index_dir != args.index_dir:
        _upload_index(args.index_dir, index_dir, fetched)
    if stats is not None:
        print(
            f"{index_dir}: {stats['passages']} passages, {stats['tokens']} tokens; "
            f"{stats['codec']}: {stats['compressed_bytes_per_token']:.2f} bytes/token "
            f"compressed vs {stats['flat_bytes_per_token']} flat float32",
            file=sys.stderr,
        )
    return 0


def _stage_index(index_dir: str, host: int, hosts: int) -> tuple[str, set[str]]:
    """The local folder `rankt5 index --index_dir gs://...` builds in (named after the bucket
    path and this builder's `--process_id` of `--num_processes`, kept until the upload, so the
    same command resumes a killed build on this host, and builders sharing a host keep apart), with
    what the bucket already holds of the index copied in: its top-level files (`index.json`,
    the trained compression, e.g. from `--train_only` on another host) and the `shard.json` of
    each finished shard (other hosts' shards count as done without their data). -> (folder,
    the relative paths copied in, never uploaded back)."""
    from rankt5_jax.data import formats
    from rankt5_jax.retrieval import index_meta

    formats.check_output_dir(index_dir)  # a missing bucket: refused before any work
    digest = hashlib.sha1(f"{index_dir}|{host}/{hosts}".encode()).hexdigest()[:16]
    local = os.path.join(tempfile.gettempdir(), "rankt5-index-build", digest)
    os.makedirs(local, exist_ok=True)
    fetched: set[str] = set()
    names = paths.listdir(index_dir) if paths.isdir(index_dir) else []
    for name in names:
        remote = paths.join(index_dir, name)
        done = paths.join(remote, index_meta.SHARD_FILE)
        if paths.isfile(remote):
            paths.copy(remote, os.path.join(local, name))
            fetched.add(name)
        elif paths.isfile(done):
            os.makedirs(os.path.join(local, name), exist_ok=True)
            paths.copy(done, os.path.join(local, name, index_meta.SHARD_FILE))
            fetched.add(f"{name}/{index_meta.SHARD_FILE}")
    return local, fetched


def _upload_index(local: str, index_dir: str, fetched: set[str]) -> None:
    """Uploads what this host built in `local` to the bucket `index_dir` (each file one object)
    and removes `local`: the data files first, then each shard's `shard.json` (a shard counts
    as finished once that is there), then the top-level files (`index.json` last). Shards still
    unfinished here and files that came from the bucket stay out."""
    from rankt5_jax.data import atomic
    from rankt5_jax.retrieval import index_meta

    shard_file = index_meta.SHARD_FILE
    files = []
    for root, _, names in os.walk(local):
        for name in names:
            rel = os.path.relpath(os.path.join(root, name), local).replace(os.sep, "/")
            shard = rel.split("/")[0] if "/" in rel else None
            if rel in fetched or atomic.is_partial(name):
                continue
            if shard and (
                f"{shard}/{shard_file}" in fetched
                or not os.path.isfile(os.path.join(local, shard, shard_file))
            ):
                continue
            files.append(rel)
    files.sort(
        key=lambda rel: (
            "/" not in rel,  # shard data before the top level
            rel.endswith(shard_file),
            rel == index_meta.INDEX_FILE,
            rel,
        )
    )
    for rel in files:
        paths.upload(os.path.join(local, *rel.split("/")), paths.join(index_dir, rel))
    shutil.rmtree(local, ignore_errors=True)


def _search(args: argparse.Namespace) -> int:
    flags.start_processes(args)  # before anything touches a JAX device
    from rankt5_jax.retrieval import base, xtr_retriever

    xtr_retriever.search_files(
        base.local_index(args.index_dir),  # a bucket index: searched in a copy on this host
        args.queries,
        args.output,
        checkpoint=args.checkpoint,
        top_k=args.top_k,
        token_k=args.token_k,
        exact=args.exact_search,
        nprobe=args.nprobe,
        batch_queries=args.batch_queries,
        max_query_length=args.max_query_length,
        vocab=args.vocab,
        dtype=args.search_dtype,
        strict=not args.lenient,
        rescore=args.rescore,
        fuse=args.fuse,
        fuse_k=args.fuse_k,
    )
    return 0


def add_parsers(sub) -> None:
    from rankt5_jax.modeling import registry
    from rankt5_jax.retrieval import codecs

    ix = sub.add_parser(
        "index",
        help="encode every document token with a UR2N checkpoint's XTR layer into a "
        "compressed token index (streaming, resumable, sharded)",
        description="Builds (or resumes) the XTR token index of a corpus: the compression "
        "(--codec, a Faiss IVF index) is trained on a seeded sample, then the corpus is streamed in chunks; "
        "rerunning the same command after a kill resumes where it stopped.",
    )
    ix.add_argument("--checkpoint", required=True, help="a model directory with an XTR layer")
    ix.add_argument(
        "--corpus", required=True, help="corpus.jsonl (_id, title, text) or docid<TAB>text"
    )
    ix.add_argument("--index_dir", required=True, help="where the index goes (resumed if there)")
    ix.add_argument(
        "--max_length", type=int, default=512, help="tokens per document (EOS included)"
    )
    ix.add_argument("--chunk_passages", type=int, default=1024, help="passages per committed chunk")
    ix.add_argument("--shard_passages", type=int, default=100_000, help="passages per index shard")
    flags.add(
        ix,
        "--store_vectors",
        old=("--exact",),
        choices=["auto", "yes", "no"],
        default="auto",
        help="also store float32 vectors for `--exact_search` (auto: up to 200k passages)",
    )
    ix.add_argument(
        "--codec",
        default=codecs.DEFAULT_CODEC,
        help=f"the compression: {codecs.NAMES_HELP} (docs/retrieval.md has their sizes and "
        f"recall; default {codecs.DEFAULT_CODEC})",
    )
    ix.add_argument(
        "--nlist", type=int, default=0, help="inverted lists (0: a power of two near sqrt(tokens))"
    )
    ix.add_argument(
        "--pq_m",
        type=int,
        default=0,
        help="PQ bytes per token of --codec ivfpq / opq (0: xtr_dim / 8, 16 for 128)",
    )
    ix.add_argument("--pq_bits", type=int, default=8, help="bits per PQ sub-vector code")
    ix.add_argument(
        "--train_passages",
        type=int,
        default=0,
        help="passages the compression is trained on (0: max(1024, 16 sqrt(passages)))",
    )
    ix.add_argument(
        "--kmeans_iterations", type=int, default=20, help="k-means iterations (lists, PQ)"
    )
    ix.add_argument("--seed", type=int, default=0, help="seed of the training sample and k-means")
    flags.add_process_flags(ix, joined=False)
    ix.add_argument(
        "--train_only", action="store_true", help="train the compression only (before the hosts)"
    )
    ix.add_argument("--no_title", action="store_true", help="do not prepend titles")
    ix.add_argument("--batch_tokens", type=int, help="padded tokens per encoder call")
    ix.add_argument("--vocab", help="spiece.model, where the checkpoint has none")
    ix.add_argument("--variant", choices=registry.NAMES, help="read from the checkpoint if unset")
    ix.add_argument("--step", type=int, help="the checkpoint step (default: the latest)")
    ix.add_argument(
        "--dtype",
        choices=["float32", "bfloat16"],
        help="encoder activations (default: float32 on CPU, bfloat16 on accelerators)",
    )
    ix.add_argument("--lenient", action="store_true", help="skip and count malformed lines")
    ix.set_defaults(func=_index)

    se = sub.add_parser(
        "search",
        help="search a token index: per query token the token_k nearest document tokens, "
        "documents scored with XTR's imputation; writes a TREC run",
    )
    se.add_argument("--index_dir", required=True, help="an index built by `rankt5 index`")
    se.add_argument("--queries", required=True, help="queries.jsonl (_id, text) or qid<TAB>text")
    se.add_argument("--output", required=True, help="where to write the TREC run")
    se.add_argument("--top_k", type=int, default=1000, help="documents per query")
    se.add_argument(
        "--token_k",
        type=int,
        default=None,
        help="document tokens retrieved per query token (default: 1/40 of the index's tokens, "
        "at least its passages, at most 16384)",
    )
    flags.add(
        se,
        "--exact_search",
        old=("--exact",),
        action="store_true",
        help="exact search over the float vectors on the device (JAX) instead of the codes",
    )
    se.add_argument(
        "--rescore",
        type=int,
        nargs="?",
        const=4,
        default=0,
        metavar="F",
        help="re-score F x token_k compressed candidates per query token with the stored float "
        "vectors (F 4 if not given; needs an index with them, 4 x xtr_dim bytes per token on "
        "disk; 0: off)",
    )
    se.add_argument(
        "--fuse",
        metavar="RUN",
        help="fuse the XTR run with this TREC run by reciprocal rank fusion (both cut to "
        "--top_k); the fused run is written",
    )
    se.add_argument(
        "--fuse_k", type=float, default=60, help="RRF's constant k: 1 / (k + rank) per run"
    )
    se.add_argument(
        "--nprobe", type=int, default=32, help="inverted lists probed per query token (Faiss)"
    )
    se.add_argument(
        "--checkpoint", help="the index's checkpoint (default: the one it was built with)"
    )
    se.add_argument("--batch_queries", type=int, default=64, help="queries searched together")
    se.add_argument(
        "--max_query_length", type=int, default=64, help="tokens per query (EOS included)"
    )
    se.add_argument("--vocab", help="spiece.model, where the checkpoint has none")
    flags.add(
        se,
        "--search_dtype",
        old=("--dtype",),
        choices=["float32", "bfloat16"],
        default="float32",
        help="--exact_search: the products' dtype (float32 accumulation and scores either way)",
    )
    se.add_argument("--lenient", action="store_true", help="skip and count malformed lines")
    se.add_argument(
        "--multihost",
        action="store_true",
        help="one process of several (jax.distributed): each searches its part of the queries, "
        "process 0 writes the one merged run",
    )
    se.add_argument(
        "--coordinator_address",
        help="with --multihost where JAX cannot detect the processes (not on TPU VMs): "
        "process 0's HOST:PORT",
    )
    se.add_argument("--num_processes", type=int, help="with --multihost: the number of processes")
    se.add_argument("--process_id", type=int, help="with --multihost: this process's index")
    se.set_defaults(func=_search)
