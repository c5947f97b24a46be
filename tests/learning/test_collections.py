"""The generated collections of the learning claims (`data/synthetic.py`, docs/learning.md) have
the properties each claim rests on; no training here."""

import collections
import hashlib
import json
from types import SimpleNamespace

import pytest

from rankt5_jax.data import synthetic


def _holds(text: str, query: str) -> bool:
    return f" {query} " in f" {text} "


def test_feature_collection_hides_relevance_from_the_text():
    c = synthetic.make_feature_collection(num_queries=80, test_queries=20, seed=3)
    assert len(c["train"]) == 60 and c["test"] == [f"q{i}" for i in range(60, 80)]
    for qid, query in c["queries"].items():
        (relevant,) = c["qrels"][qid]
        run = c["run"][qid]
        texts = {d: c["corpus"][d]["text"] for d in run}
        holders = [d for d, t in texts.items() if _holds(t, query)]
        # Four phrase holders, the relevant one among them; the others hold neither word.
        assert len(run) == 8 and len(holders) == 4 and relevant in holders
        words = set(query.split())
        assert all(not words & set(t.split()) for d, t in texts.items() if d not in holders)
        # The score says which phrase holder it is: above 0.5 for it alone.
        assert run[relevant] > 0.5
        assert all(run[d] <= 0.5 for d in holders if d != relevant)
        assert list(run.values()) == sorted(run.values(), reverse=True)
    # Deterministic in the seed, and another seed gives other data.
    assert synthetic.make_feature_collection(num_queries=80, test_queries=20, seed=3) == c
    assert synthetic.make_feature_collection(num_queries=80, test_queries=20, seed=4) != c


def test_list_collection_relevance_is_the_odd_one_out():
    c = synthetic.make_list_collection(num_queries=200, test_queries=20, markers=6, seed=1)
    assert len(c["markers"]) == 6
    as_odd, as_common = {}, {}
    for qid, query in c["queries"].items():
        (relevant,) = c["qrels"][qid]
        markers = {}
        for docid in c["run"][qid]:
            words = c["corpus"][docid]["text"].split()
            assert words.count(query) == 1
            (markers[docid],) = [w for w in words if w in c["markers"]]
        odd = markers.pop(relevant)
        (common,) = set(markers.values())
        assert common != odd
        as_odd[odd] = as_odd.get(odd, 0) + 1
        as_common[common] = as_common.get(common, 0) + 1
    # Every marker is the odd one about as often as the common one: a candidate's own marker
    # says nothing about its relevance.
    assert set(as_odd) == set(as_common) == set(c["markers"])
    for marker in as_odd:
        assert 0.5 < as_odd[marker] / as_common[marker] < 2.0


def test_depth_collection_reaches_passages_sharing_no_query_word():
    # the default: 400 queries, 4,800 passages (the claim: 3,040)
    c = synthetic.make_depth_collection()
    matches, alone = [], []
    for qid, query in c["queries"].items():
        run = c["run"][qid]
        ranked = list(run)
        (relevant,) = c["qrels"][qid]
        assert len(ranked) == 1000 and relevant in ranked[:30]
        words = set(query.split())
        shares = [bool(words & set(c["corpus"][d]["text"].split())) for d in ranked]
        # Lexical matches first, then the passages sharing no query word (by the dense part).
        assert shares == sorted(shares, reverse=True) and sum(shares) < 200
        matches.append(sum(shares))
        # The distractors (more mentions, never the phrase) tend to outscore the relevant
        # passage, the only one holding the phrase.
        assert _holds(c["corpus"][relevant]["text"], query)
        holders = [d for d in ranked if _holds(c["corpus"][d]["text"], query)]
        alone.append(holders == [relevant])  # else: a pair drawn twice, or as `b a`
    # Most queries' top 30 are lexical matches only: a ranker trained on them never sees a
    # passage without the query's words.
    assert sorted(matches)[len(matches) // 4] >= 30
    assert sum(alone) > 0.95 * len(alone)
    first_stage = [list(c["run"][q]).index(next(iter(c["qrels"][q]))) for q in c["queries"]]
    assert sum(rank >= 4 for rank in first_stage) > 0.8 * len(first_stage)


def test_graded_collection_grades_follow_the_text():
    c = synthetic.make_graded_collection(num_queries=50, test_queries=10, seed=2)
    seen = set()
    for qid, query in c["queries"].items():
        a, b = query.split()
        grades = c["qrels"][qid]
        assert sorted(grades) == sorted(c["run"][qid]) and max(grades.values()) == 3
        for docid, grade in grades.items():
            text = c["corpus"][docid]["text"]
            words = text.split()
            expected = 3 if _holds(text, query) else (a in words) + (b in words)
            assert grade == expected, (query, text)
            seen.add(grade)
    assert seen == {0, 1, 2, 3}


@pytest.mark.parametrize(
    "make",
    [
        synthetic.make_feature_collection,
        synthetic.make_list_collection,
        synthetic.make_depth_collection,
        synthetic.make_graded_collection,
    ],
)
def test_collections_reject_an_empty_training_split(make):
    with pytest.raises(ValueError, match="test_queries"):
        make(num_queries=10, test_queries=10)


def test_the_demo_collection_is_unchanged():
    # The claims' generators draw from their own streams: make_collection's output (the demo's
    # and the other tests' data) is byte for byte what it was before they were added.
    c = synthetic.make_collection(num_queries=20, seed=0, titles=True)
    digest = hashlib.sha256(json.dumps(c, sort_keys=True).encode()).hexdigest()
    assert digest == "86ac2f0ac47b5b031329ac78d9243e2a1e075d5821955dfe7ce190a873b111f8"


def _shape(text: str, topics: set) -> tuple:
    """(topic-word phrases, single topic-word mentions, their distinct words) of a passage,
    asserting that every topic word stands alone or in one two-word phrase between fillers."""
    words = text.split()
    marks = [w in topics for w in words]
    phrases, singles, i = [], [], 0
    while i < len(words):
        if not marks[i]:
            i += 1
            continue
        run = 1
        while i + run < len(words) and marks[i + run]:
            run += 1
        assert run <= 2, text
        (phrases if run == 2 else singles).append(tuple(words[i : i + run]))
        i += run
    return phrases, singles, {w for (w,) in singles}


def test_same_shape_collection_leaves_only_the_query_to_tell_the_relevant_passage():
    c = synthetic.make_same_shape_collection(num_queries=120, seed=2)
    assert len(c["corpus"]) == 120 * 7 + 200
    topics = {w for q in c["queries"].values() for w in q.split()}
    topics |= {w for d in c["corpus"].values() for w in d["text"].split() if len(w) == 6}
    shapes = collections.Counter()
    for doc in c["corpus"].values():
        phrases, singles, distinct = _shape(doc["text"], topics)
        # Every passage: one phrase of two topic words, three or four single mentions of two
        # other words alternating; nothing else to tell a relevant passage by.
        assert len(phrases) == 1 and len(singles) in (3, 4) and len(distinct) == 2
        assert not distinct & set(phrases[0])
        shapes[len(singles)] += 1
    assert min(shapes.values()) > 0.3 * len(c["corpus"])
    ids = list(c["corpus"])
    for q, (qid, query) in enumerate(c["queries"].items()):
        a, b = query.split()
        own = ids[7 * q : 7 * q + 7]
        assert list(c["qrels"][qid]) == [own[0]]
        assert [_holds(c["corpus"][d]["text"], query) for d in own] == [True] + [False] * 6
        for d in own[1:5]:  # apart: both query words mentioned, never side by side
            _, singles, distinct = _shape(c["corpus"][d]["text"], topics)
            assert distinct == {a, b}
        for d in own[5:]:  # half the phrase, the other query word mentioned apart
            (phrase,), _, distinct = _shape(c["corpus"][d]["text"], topics)
            assert (phrase[0] == a) != (phrase[1] == b)
            assert (b if phrase[0] == a else a) in distinct
    # BM25 prefers the distractors (they mention the query words as often or more).
    from rankt5_jax.evaluation import measures
    from rankt5_jax.retrieval import bm25

    run = bm25.bm25_run(c["corpus"], c["queries"], top_k=30)
    assert measures.evaluate_run(run, c["qrels"], ["RR@10"])["RR@10"] < 0.3
    assert synthetic.make_same_shape_collection(num_queries=120, seed=2) == c
    assert synthetic.make_same_shape_collection(num_queries=120, seed=3) != c


def test_smoke_data_writes_the_generator_it_is_given(tmp_path):
    from rankt5_jax.errors import ConfigError
    from rankt5_jax.training import smoke

    folder = str(tmp_path / "d")
    first = {}
    for generator in ("make_collection", "make_same_shape_collection", "make_collection"):
        info = smoke.smoke_data(folder, num_queries=40, dev_queries=8, generator=generator)
        assert info["generator"] == generator
        with open(info["dev"]["corpus"]) as handle:
            corpus = handle.read()
        expected = getattr(synthetic, generator)(num_queries=40)
        assert len(corpus.splitlines()) == len(expected["corpus"])
        assert json.loads(corpus.splitlines()[0])["text"] == expected["corpus"]["d0"]["text"]
        first.setdefault(generator, corpus)
        assert first[generator] == corpus  # a folder of another generator is written afresh
    with pytest.raises(ConfigError, match="make_same_shape_collection"):
        smoke.smoke_data(folder, num_queries=40, dev_queries=8, generator="make_depth_collection")


def test_the_query_probe_tells_a_ranker_that_reads_the_query_from_one_that_reads_shapes():
    """`bench/query_probe_bench.py`'s probe on two rankers written out as rules."""
    import os
    import sys

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    from bench import query_probe_bench as qp

    c = synthetic.make_collection(num_queries=40, seed=5)
    # what the probe reads of a `bench/xtr_learning_bench.Collection`
    held = SimpleNamespace(
        queries=c["queries"],
        qrels=c["qrels"],
        doc_ids=list(c["corpus"]),
        texts=[d["text"] for d in c["corpus"].values()],
    )
    topics = {w for q in c["queries"].values() for w in q.split()}

    class Rule:
        def __init__(self, score):
            self.score = score

        def tokenize(self, query, passages):
            return query, passages

        def score_token_lists(self, lists):
            return [[self.score(q, p) for p in ps] for q, ps in lists]

    def reads_query(query, passage):  # the query's words, then its phrase
        return sum(w in passage.split() for w in query.split()) + _holds(passage, query)

    def reads_shape(query, passage):  # two topic words side by side, whatever the query
        words = passage.split()
        return float(any(x in topics and y in topics for x, y in zip(words, words[1:])))

    assert qp.probe(Rule(reads_query), held, topics) == dict.fromkeys(qp.VARIANTS, 1.0)
    shape = qp.probe(Rule(reads_shape), held, topics)
    assert shape == {"b -> c": 0.0, "a -> c": 0.0, "b -> filler": 1.0, "swap": 0.0, "apart": 1.0}
    texts = dict(zip(held.doc_ids, held.texts))
    firsts = list(c["queries"])[:3]
    run = {
        q: {d: reads_query(c["queries"][q], texts[d]) for d in held.doc_ids[:60]} for q in firsts
    }
    assert qp.first_places(run, held, topics) == {"relevant": 3}
    for q in firsts:  # without the relevant passages: a distractor (both words, apart) first
        del run[q][next(iter(c["qrels"][q]))]
    assert qp.first_places(run, held, topics) == {"2 query word(s), no topic-word phrase": 3}
