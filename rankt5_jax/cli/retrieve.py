"""`rankt5 retrieve`: a first-stage TREC run from a corpus and queries (BM25 through bm25s).

Imports neither JAX nor TensorFlow (bm25s is imported with JAX hidden, see `retrieval.bm25`).
"""

from __future__ import annotations

import argparse

from rankt5_jax.cli import flags


def _retrieve(args: argparse.Namespace) -> int:
    from rankt5_jax.retrieval import bm25

    bm25.retrieve_files(
        args.corpus,
        args.queries,
        args.output,
        top_k=args.top_k,
        k1=args.k1,
        b=args.b,
        index_dir=args.bm25_index,
        stopwords=args.stopwords,
        stemmer=args.stemmer,
    )
    return 0


def add_parsers(sub) -> None:
    rt = sub.add_parser(
        "retrieve",
        help="first-stage retrieval: write a TREC run of each query's top documents (BM25)",
        description="BM25 (Lucene's variant, through bm25s) over a corpus file; the index is "
        "saved in --index_dir and reused while the corpus file and settings are the same.",
    )
    rt.add_argument("--method", choices=["bm25"], default="bm25", help="the retrieval model")
    rt.add_argument(
        "--corpus", required=True, help="corpus.jsonl (_id, title, text) or docid<TAB>text"
    )
    rt.add_argument("--queries", required=True, help="queries.jsonl (_id, text) or qid<TAB>text")
    rt.add_argument("--output", required=True, help="where to write the TREC run (tag bm25)")
    rt.add_argument("--top_k", type=int, default=1000, help="documents per query (at most)")
    rt.add_argument("--k1", type=float, default=0.9, help="BM25 k1 (Anserini's default 0.9)")
    rt.add_argument("--b", type=float, default=0.4, help="BM25 b (Anserini's default 0.4)")
    flags.add(
        rt,
        "--bm25_index",
        old=("--index_dir",),
        help="save the index here, and reuse it when it was built from the same corpus file "
        "with the same settings (rebuilt in place otherwise)",
    )
    rt.add_argument(
        "--stopwords",
        choices=["en", "none"],
        default="en",
        help="drop English stopwords (Lucene's 33) from documents and queries",
    )
    rt.add_argument(
        "--stemmer",
        choices=["english", "none"],
        default="english",
        help="Snowball English stemmer (PyStemmer) on documents and queries",
    )
    rt.set_defaults(func=_retrieve)
