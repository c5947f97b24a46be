"""BM25 first stage over an in-memory corpus: `{qid: {docid: score}}` runs."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping

import numpy as np


def tokenize_words(text: str) -> list[str]:
    return text.lower().split()


def bm25_run(
    corpus: Mapping[str, Mapping[str, str]],
    queries: Mapping[str, str],
    top_k: int = 100,
    k1: float = 0.9,
    b: float = 0.4,
) -> dict[str, dict[str, float]]:
    """A plain BM25 first stage (Anserini's default k1=0.9, b=0.4): `{qid: {docid: score}}`."""
    docids = list(corpus)
    docs = [tokenize_words(f"{d.get('title', '')} {d['text']}") for d in corpus.values()]
    lengths = np.array([len(d) for d in docs], np.float64)
    avg = lengths.mean()
    postings: dict[str, list[tuple[int, int]]] = {}
    for idx, doc in enumerate(docs):
        for term, tf in Counter(doc).items():
            postings.setdefault(term, []).append((idx, tf))
    run = {}
    for qid, text in queries.items():
        scores = np.zeros(len(docs))
        for term in set(tokenize_words(text)):
            plist = postings.get(term, [])
            if not plist:
                continue
            idf = math.log(1 + (len(docs) - len(plist) + 0.5) / (len(plist) + 0.5))
            for idx, tf in plist:
                norm = tf + k1 * (1 - b + b * lengths[idx] / avg)
                scores[idx] += idf * tf * (k1 + 1) / norm
        top = np.argsort(-scores, kind="stable")[:top_k]
        run[qid] = {docids[i]: float(scores[i]) for i in top if scores[i] > 0}
    return run
