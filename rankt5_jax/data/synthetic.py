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
        _add_titles(corpus, filler, np.random.default_rng([seed, 1]))
    return {"corpus": corpus, "queries": queries, "qrels": qrels}


def make_same_shape_collection(
    num_queries: int = 200,
    apart_distractors: int = 4,
    half_distractors: int = 2,
    random_docs: int = 200,
    doc_words: int = 20,
    seed: int = 0,
    titles: bool = False,
) -> dict:
    """`make_collection`'s phrase rule with every passage of the same shape: only the query
    tells the relevant passage from the others (a probe of whether a ranker reads the query).

    Each query names two topic words `a b`; its relevant passage holds the phrase `a b` once.
    Every passage (relevant, distractor or other) holds one phrase of two topic words and three
    or four single mentions of two other topic words, alternating, each set apart by filler
    words, so a passage by itself says nothing about its relevance. Per query,
    `apart_distractors` passages mention `a` and `b` apart (their own phrase is of two other
    topic words) and `half_distractors` hold half of the phrase (`a c` or `c b`) and mention the
    other query word apart; both kinds mention the query words as often as the relevant passage
    or more, so BM25 ranks them above it. A deeper first-stage list adds other queries' passages
    that share one query word. In `make_collection` the relevant passages alone hold a phrase
    and no repeated topic word: a ranker can order a query's own passages by their shape alone,
    which the tiny rankers trained from scratch do (docs/learning.md, "Does the ranker read the
    query?"). Returns what `make_collection` returns; its own random stream.
    """
    rng = np.random.default_rng([seed, 23, 27])
    topic = _words(max(60, num_queries // 2), rng, 3)
    filler = _words(150, rng, 2)
    corpus: dict[str, dict[str, str]] = {}
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}

    def others(*taken: str, n: int = 1) -> list[str]:
        picked: list[str] = []
        while len(picked) < n:
            word = str(topic[int(rng.integers(len(topic)))])
            if word not in taken and word not in picked:
                picked.append(word)
        return picked

    def new_doc(phrase: list[str], mentioned: list[str]) -> str:
        mentions = int(rng.integers(3, 5))
        order = [mentioned[i % 2] for i in range(mentions)]
        units = [phrase] + [[word] for word in order]
        units = [units[i] for i in rng.permutation(len(units))]
        # filler between units (at least one), the rest at random gaps
        gaps = np.ones(len(units) + 1, int)
        gaps[0] = gaps[-1] = 0
        extra = doc_words - int(gaps.sum())
        gaps += np.bincount(rng.integers(0, len(gaps), size=extra), minlength=len(gaps))
        words = [str(w) for w in rng.choice(filler, size=gaps[0])]
        for unit, gap in zip(units, gaps[1:]):
            words += unit + [str(w) for w in rng.choice(filler, size=gap)]
        docid = f"d{len(corpus)}"
        corpus[docid] = {"title": "", "text": " ".join(words)}
        return docid

    for q in range(num_queries):
        a, b = (str(w) for w in rng.choice(topic, size=2, replace=False))
        qid = f"q{q}"
        queries[qid] = f"{a} {b}"
        qrels[qid] = {new_doc([a, b], others(a, b, n=2)): 1}
        for _ in range(apart_distractors):
            mentioned = [a, b] if rng.random() < 0.5 else [b, a]
            new_doc(others(a, b, n=2), mentioned)
        for _ in range(half_distractors):
            c, d = others(a, b, n=2)
            if rng.random() < 0.5:
                new_doc([a, c], [b, d] if rng.random() < 0.5 else [d, b])
            else:
                new_doc([c, b], [a, d] if rng.random() < 0.5 else [d, a])
    for _ in range(random_docs):
        words = others(n=4)
        new_doc(words[:2], words[2:])
    if titles:
        _add_titles(corpus, filler, np.random.default_rng([seed, 23, 1]))
    return {"corpus": corpus, "queries": queries, "qrels": qrels}


def _add_titles(corpus: dict, filler: list[str], rng: np.random.Generator) -> None:
    """A title of one to three filler words for every document (no relevance signal), drawn
    from `rng` alone so that the texts are the same with and without titles."""
    for doc in corpus.values():
        doc["title"] = " ".join(rng.choice(filler, size=int(rng.integers(1, 4))))


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
    return train_sentencepiece_on(lines, model_prefix, vocab_size, symbols)


def train_sentencepiece_on(
    lines: list[str], model_prefix: str, vocab_size: int, symbols: list[str]
) -> str:
    """A unigram SentencePiece model with T5's special ids (pad 0, EOS 1, UNK 2, no BOS) trained
    on `lines`, `symbols` as single pieces; returns the .model path."""
    import sentencepiece as spm

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


# ----------------------------------------------------------------------------------------------
# Collections built for the papers' learning claims (docs/learning.md, tests/learning/)
# ----------------------------------------------------------------------------------------------
#
# Each returns `{"corpus", "queries", "qrels", "run", "train", "test"}`: the corpus, queries and
# qrels as `make_collection` has them, the first stage's `run` (`{qid: {docid: score}}`, best
# first), and the query ids of the training and test splits (the last `test_queries` queries are
# the test split). Every one draws from its own random stream (`[seed, 27, k]`), so adding
# them changed nothing `make_collection` makes.


def _claim_words(rng: np.random.Generator, topics: int, fillers: int) -> tuple[list, list]:
    return _words(topics, rng, 3), _words(fillers, rng, 2)


def _split(queries: Mapping[str, str], test_queries: int) -> tuple[list[str], list[str]]:
    qids = list(queries)
    if not 0 < test_queries < len(qids):
        raise ValueError(f"test_queries={test_queries} must leave training queries")
    return qids[:-test_queries], qids[-test_queries:]


def _insert(words: list[str], rng: np.random.Generator, *items: str) -> list[str]:
    for item in items:
        words.insert(int(rng.integers(0, len(words) + 1)), item)
    return words


def make_feature_collection(
    num_queries: int = 300,
    test_queries: int = 60,
    list_size: int = 8,
    matching: int = 4,
    doc_words: int = 8,
    levels: int = 11,
    seed: int = 0,
) -> dict:
    """*feature*: relevance the text does not show, visible only through the first-stage score.

    Each query is two topic words `a b`. Its list has `list_size` candidates: `matching` of them
    hold the phrase `a b` once, the others hold neither word. The relevant candidate
    is one of the phrase holders, drawn at random: the text cannot tell it from the other phrase
    holders. The first stage knows it: its score (one of `levels` values in [0, 1]) is drawn
    from the upper half (above 0.5) for the relevant candidate, from the lower half (0.5 and
    below) for the other phrase holders, and from the whole range for the candidates that hold
    neither word. So the text alone ranks the relevant candidate among `matching` equals, the
    score alone among the candidates without the query's words, and a model that reads both
    ranks it first: the one phrase holder whose score is above 0.5.
    """
    rng = np.random.default_rng([seed, 27, 1])
    topic, filler = _claim_words(rng, 60, 60)
    corpus: dict[str, dict[str, str]] = {}
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    run: dict[str, dict[str, float]] = {}
    top = levels - 1
    for q in range(num_queries):
        a, b = (str(w) for w in rng.choice(topic, size=2, replace=False))
        qid = f"q{q}"
        queries[qid] = f"{a} {b}"
        relevant = int(rng.integers(0, matching))
        run[qid] = {}
        for i in range(list_size):
            words = [str(w) for w in rng.choice(filler, size=doc_words)]
            if i < matching:
                pos = int(rng.integers(0, doc_words + 1))
                words[pos:pos] = [a, b]
            docid = f"d{len(corpus)}"
            corpus[docid] = {"title": "", "text": " ".join(words)}
            if i == relevant:
                level = rng.integers(top // 2 + 1, top + 1)
            elif i < matching:
                level = rng.integers(0, top // 2 + 1)
            else:
                level = rng.integers(0, top + 1)
            run[qid][docid] = int(level) / top
            if i == relevant:
                qrels[qid] = {docid: 1}
        # The list in the first stage's order (ties in random order): the position says nothing.
        order = sorted(run[qid], key=lambda d: (-run[qid][d], rng.random()))
        run[qid] = {d: run[qid][d] for d in order}
    train, test = _split(queries, test_queries)
    return dict(corpus=corpus, queries=queries, qrels=qrels, run=run, train=train, test=test)


def make_list_collection(
    num_queries: int = 2460,
    test_queries: int = 60,
    list_size: int = 8,
    doc_words: int = 1,
    markers: int = 2,
    seed: int = 0,
) -> dict:
    """*list*: relevance relative to the other candidates of the same query.

    Each query is one topic word `a`; every candidate holds `a` once, one marker word (of
    `markers`) and `doc_words` filler words. In each list all candidates but one share a marker;
    the relevant candidate is the odd one out, whose marker differs from the rest (the new one in
    a list of near-duplicates). Which marker is the common one is drawn per list, and every
    marker is as often the odd one as the common one, so a candidate's own text says nothing
    about its relevance: a model that scores each (query, candidate) pair alone cannot find it (at
    best, preferring one marker, it ranks it first in half the lists and last in the others), one
    that sees the list can. The first stage's scores are uninformative (drawn at
    random). The result also holds the marker words (`"markers"`).

    The defaults (2 markers, 1 filler word, 2,400 training queries: a list is seldom seen twice)
    are ones a tiny FiT5 learns in 50 to 200 steps (docs/learning.md); with 6 markers and 8
    filler words it learned nothing in 400 steps, and with 240 training queries it memorised
    them.
    """
    rng = np.random.default_rng([seed, 27, 2])
    topic, filler = _claim_words(rng, 60, 60 + markers)
    filler, marker_words = filler[:60], filler[60:]
    corpus: dict[str, dict[str, str]] = {}
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    run: dict[str, dict[str, float]] = {}
    for q in range(num_queries):
        a = str(rng.choice(topic))
        qid = f"q{q}"
        queries[qid] = a
        common, odd = (str(w) for w in rng.choice(marker_words, size=2, replace=False))
        relevant = int(rng.integers(0, list_size))
        run[qid] = {}
        for i in range(list_size):
            words = [str(w) for w in rng.choice(filler, size=doc_words)]
            _insert(words, rng, a, odd if i == relevant else common)
            docid = f"d{len(corpus)}"
            corpus[docid] = {"title": "", "text": " ".join(words)}
            run[qid][docid] = float(rng.random())
            if i == relevant:
                qrels[qid] = {docid: 1}
        run[qid] = dict(sorted(run[qid].items(), key=lambda item: -item[1]))
    train, test = _split(queries, test_queries)
    return dict(
        corpus=corpus, queries=queries, qrels=qrels, run=run, train=train, test=test,
        markers=marker_words,
    )  # fmt: skip


def make_depth_collection(
    num_queries: int = 400,
    test_queries: int = 40,
    distractors_per_query: int = 8,
    random_docs: int = 1200,
    doc_words: int = 10,
    depth: int = 1000,
    dense_weight: float = 0.3,
    seed: int = 0,
) -> dict:
    """*depth*: a deep first stage whose lists hold passages sharing no query word.

    The texts follow `make_collection`: a query is `a b`, its relevant passage holds the phrase
    `a b` once, its distractors repeat `a` and `b` (3 to 5 mentions) never as the phrase, and
    `random_docs` passages hold filler only. The first stage ranks the whole corpus by a lexical
    score (`sum over the query's words of tf / (tf + 1.2)`, BM25's saturation) plus
    `dense_weight` times a random "dense" component; the run keeps its top `depth`. Lexical
    matches come first (distractors above the relevant passage, which mentions each word once),
    then passages of other queries sharing one word, then, below them, passages that share no
    query word, ordered by the dense component alone.
    """
    rng = np.random.default_rng([seed, 27, 3])
    topic, filler = _claim_words(rng, max(60, num_queries // 2), 120)
    corpus: dict[str, dict[str, str]] = {}
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    for q in range(num_queries):
        a, b = (str(w) for w in rng.choice(topic, size=2, replace=False))
        qid = f"q{q}"
        queries[qid] = f"{a} {b}"
        words = [str(w) for w in rng.choice(filler, size=doc_words)]
        pos = int(rng.integers(0, doc_words + 1))
        words[pos:pos] = [a, b]
        docid = f"d{len(corpus)}"
        corpus[docid] = {"title": "", "text": " ".join(words)}
        qrels[qid] = {docid: 1}
        for _ in range(distractors_per_query):
            words = [str(w) for w in rng.choice(filler, size=doc_words)]
            _insert(words, rng, *[b, a, b, a, b][: int(rng.integers(3, 6))])
            while f"{a} {b}" in " ".join(words):
                words.remove(a)
            corpus[f"d{len(corpus)}"] = {"title": "", "text": " ".join(words)}
    for _ in range(random_docs):
        words = [str(w) for w in rng.choice(filler, size=doc_words)]
        corpus[f"d{len(corpus)}"] = {"title": "", "text": " ".join(words)}
    docids = list(corpus)
    postings: dict[str, dict[int, int]] = {}
    for index, docid in enumerate(docids):
        for word in corpus[docid]["text"].split():
            counts = postings.setdefault(word, {})
            counts[index] = counts.get(index, 0) + 1
    run: dict[str, dict[str, float]] = {}
    for qid, text in queries.items():
        scores = dense_weight * rng.random(len(docids))
        for word in set(text.split()):
            for index, tf in postings.get(word, {}).items():
                scores[index] += tf / (tf + 1.2)
        top = np.argsort(-scores, kind="stable")[:depth]
        run[qid] = {docids[i]: float(scores[i]) for i in top}
    train, test = _split(queries, test_queries)
    return dict(corpus=corpus, queries=queries, qrels=qrels, run=run, train=train, test=test)


def make_graded_collection(
    num_queries: int = 1660,
    test_queries: int = 60,
    list_size: int = 8,
    doc_words: int = 8,
    seed: int = 0,
) -> dict:
    """*graded*: lists with relevance grades 0 to 3 (RankT5's listwise-vs-pointwise comparison).

    A query is `a b`. Grade 3: the candidate holds the phrase `a b`; grade 2: both words, never
    as the phrase; grade 1: one of the two words; grade 0: neither. Each list has one grade-3
    candidate and a random mix of the others (so the best candidate is always of grade 3); the
    first stage's score counts the query words (ties at random), so it puts grades 2 and 3 at
    par. The default 1,600 training queries give the claim's 400 steps of 8 lists each query
    about twice: the losses are compared on what they generalise, not on what they memorise.
    """
    rng = np.random.default_rng([seed, 27, 4])
    topic, filler = _claim_words(rng, 60, 60)
    corpus: dict[str, dict[str, str]] = {}
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    run: dict[str, dict[str, float]] = {}
    for q in range(num_queries):
        a, b = (str(w) for w in rng.choice(topic, size=2, replace=False))
        qid = f"q{q}"
        queries[qid] = f"{a} {b}"
        grades = [3, *(int(g) for g in rng.integers(0, 3, size=list_size - 1))]
        qrels[qid], run[qid] = {}, {}
        for grade in grades:
            words = [str(w) for w in rng.choice(filler, size=doc_words)]
            if grade == 3:
                pos = int(rng.integers(0, doc_words + 1))
                words[pos:pos] = [a, b]
            elif grade == 2:
                _insert(words, rng, b, a)
                while f"{a} {b}" in " ".join(words):
                    words.remove(a)
                    _insert(words, rng, a)
            elif grade == 1:
                _insert(words, rng, a if rng.random() < 0.5 else b)
            docid = f"d{len(corpus)}"
            corpus[docid] = {"title": "", "text": " ".join(words)}
            qrels[qid][docid] = grade
            run[qid][docid] = sum(w in (a, b) for w in words) + float(rng.random()) * 0.5
        run[qid] = dict(sorted(run[qid].items(), key=lambda item: -item[1]))
    train, test = _split(queries, test_queries)
    return dict(corpus=corpus, queries=queries, qrels=qrels, run=run, train=train, test=test)
