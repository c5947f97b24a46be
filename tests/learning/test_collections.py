"""The generated collections of the learning claims (`data/synthetic.py`, docs/learning.md) have
the properties each claim rests on; no training here."""

import hashlib
import json

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
    c = synthetic.make_depth_collection()  # the default: 400 queries, 4,800 passages (the claim: 3,040)
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
