"""Generated IR data for the demo and tests: a corpus whose relevance is learnable and a
SentencePiece vocabulary trained on it (its first stage is `retrieval.bm25`).

Each query names two topic words `a b`. Its relevant document contains the phrase `a b` (adjacent,
in that order) once. Distractors repeat `a` and `b` often but never adjacent in that order, so
BM25 (which sees only term counts) prefers them, while a cross-encoder can learn the phrase rule.
Everything is a deterministic function of the seed. With `titles=True` every document also gets a
title of one to three filler words (drawn from their own random stream, so the texts are the same
as without titles); titles carry no relevance signal.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

import numpy as np

_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z"]
_VOWELS = ["a", "e", "i", "o", "u"]


def _words(count: int, rng: np.random.Generator, syllables: int) -> list[str]:
    seen: set[str] = set()
    words = []
    while len(words) < count:
        word = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables))
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


def make_collection(
    num_queries: int = 200,
    distractors_per_query: int = 6,
    random_docs: int = 200,
    doc_words: int = 24,
    seed: int = 0,
    titles: bool = False,
) -> dict:
    """Returns `{"corpus": {docid: {"title", "text"}}, "queries": {qid: text},
    "qrels": {qid: {docid: 1}}}`; titles are "" unless `titles`."""
    rng = np.random.default_rng(seed)
    topic = _words(max(60, num_queries // 2), rng, 3)
    filler = _words(150, rng, 2)
    corpus: dict[str, dict[str, str]] = {}
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}

    def filler_text(n: int) -> list[str]:
        return list(rng.choice(filler, size=n))

    def new_doc(words: list[str]) -> str:
        docid = f"d{len(corpus)}"
        corpus[docid] = {"title": "", "text": " ".join(words)}
        return docid

    for q in range(num_queries):
        a, b = rng.choice(topic, size=2, replace=False)
        qid = f"q{q}"
        queries[qid] = f"{a} {b}"
        words = filler_text(doc_words)
        pos = int(rng.integers(0, doc_words - 1))
        words[pos : pos + 2] = [a, b]
        qrels[qid] = {new_doc(words): 1}
        for _ in range(distractors_per_query):
            words = filler_text(doc_words)
            # Several mentions of both words, never as the phrase "a b".
            for word in [b, a, b, a, b][: int(rng.integers(3, 6))]:
                words.insert(int(rng.integers(0, len(words) + 1)), word)
            text = " ".join(words)
            while f"{a} {b}" in text:
                words.remove(a)
                text = " ".join(words)
            new_doc(words)
    for _ in range(random_docs):
        new_doc(filler_text(doc_words))
    if titles:
        title_rng = np.random.default_rng([seed, 1])
        for doc in corpus.values():
            doc["title"] = " ".join(title_rng.choice(filler, size=int(title_rng.integers(1, 4))))
    return {"corpus": corpus, "queries": queries, "qrels": qrels}


def write_collection(
    out_dir: str,
    collection: Mapping,
    run: Mapping[str, Mapping[str, float]],
    query_ids: Sequence[str] | None = None,
    prefix: str = "",
) -> dict[str, str]:
    """Writes corpus.jsonl (BEIR), queries.tsv, qrels.txt (TREC) and run.txt (TREC)."""
    os.makedirs(out_dir, exist_ok=True)
    qids = list(query_ids) if query_ids is not None else list(collection["queries"])
    paths = {
        "corpus": os.path.join(out_dir, "corpus.jsonl"),
        "queries": os.path.join(out_dir, f"{prefix}queries.tsv"),
        "qrels": os.path.join(out_dir, f"{prefix}qrels.txt"),
        "run": os.path.join(out_dir, f"{prefix}run.txt"),
    }
    if not os.path.exists(paths["corpus"]):
        with open(paths["corpus"], "w") as handle:
            for docid, doc in collection["corpus"].items():
                handle.write(json.dumps({"_id": docid, **doc}) + "\n")
    with open(paths["queries"], "w") as handle:
        for qid in qids:
            handle.write(f"{qid}\t{collection['queries'][qid]}\n")
    with open(paths["qrels"], "w") as handle:
        for qid in qids:
            for docid, rel in collection["qrels"][qid].items():
                handle.write(f"{qid} 0 {docid} {rel}\n")
    from rankt5_jax.data.formats import write_trec_run

    write_trec_run(paths["run"], {q: run.get(q, {}) for q in qids}, tag="bm25")
    return paths


def train_sentencepiece(
    model_prefix: str,
    vocab_size: int = 300,
    collection: Mapping | None = None,
    fit5_words: bool = False,
) -> str:
    """Trains a real unigram SentencePiece model with T5's special ids; returns the .model path.

    `fit5_words`: also FiT5's template words as single pieces (`Title`, `Feature`, `Passage`,
    `Relevant`) and the digits of its features (0 to 100); without them the capitals and
    digits are unknown pieces, and every feature would read the same."""
    import sentencepiece as spm

    collection = collection or make_collection(num_queries=120, seed=1)
    lines = [doc["text"] for doc in collection["corpus"].values()]
    lines += [f"Query: {q} Document: true false" for q in collection["queries"].values()]
    symbols = ["Query", "Document", "true", "false"]
    if fit5_words:
        symbols += ["Title", "Feature", "Passage", "Relevant"]
        lines += [
            f"Query: {q} Title: Feature: {i % 101} Passage: Relevant: true false"
            for i, q in enumerate(collection["queries"].values())
        ]
        lines += [" ".join(str(i) for i in range(101))]
    text_path = model_prefix + ".txt"
    with open(text_path, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    spm.SentencePieceTrainer.train(
        input=text_path,
        model_prefix=model_prefix,
        vocab_size=vocab_size,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        character_coverage=1.0,
        user_defined_symbols=symbols,
        minloglevel=2,
        num_threads=1,
        hard_vocab_limit=False,
    )
    return model_prefix + ".model"
