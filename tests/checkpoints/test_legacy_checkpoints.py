"""Checkpoints written by the code before issue 22 (tests/fixtures/legacy, made by its
make_fixtures.py) load and score as that code scored them (CPU, float32): bit for bit on the
machine that wrote them; on another CPU XLA's float32 rounding moves scores by up to ~1e-6
(measured 4e-7 on a different Xeon), so the check is a tolerance of 2e-6 + 1e-5 relative and the
same order of the documents, far below what a changed network, template or weight mapping does
(>= 1e-3).

The one intended change: a Hugging Face or T5X checkpoint loaded as `monot5` gets monoT5's
published template `Query: {q} Document: {d} Relevant:` (castorini's checkpoints, pyterrier-t5 and
rerankers use it); a monoT5 model directory written before keeps the template it was trained with.
"""

import json
import os

import numpy as np
import pytest

from rankt5_jax import Ranker
from rankt5_jax.data.vocab import EOS_ID

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "legacy")
with open(os.path.join(FIXTURES, "scores.json")) as _handle:
    RECORD = json.load(_handle)
CHECKPOINTS = RECORD["checkpoints"]
AS_MONOT5 = ("hf_as_monot5", "t5x_as_monot5")
UNCHANGED = sorted(name for name in CHECKPOINTS if name not in AS_MONOT5)


def _load(name: str) -> Ranker:
    entry = CHECKPOINTS[name]
    path = os.path.join(FIXTURES, entry["path"])
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    kwargs = dict(entry["load"])
    if not os.path.isfile(os.path.join(folder, "spiece.model")):
        kwargs["vocab"] = os.path.join(FIXTURES, "spiece.model")
    return Ranker.load(path, max_length=RECORD["max_length"], batch_size=4, **kwargs)


def _scores(ranker: Ranker, query: str, lists: bool) -> np.ndarray:
    if lists:
        return ranker.score(query, RECORD["docs"], RECORD["features"], RECORD["titles"])
    return ranker.score(query, RECORD["docs"])


def test_fixture_covers_every_kind():
    # A model directory of each variant, an XTR model, a FiT5 authors' state dict, HF and T5X.
    from rankt5_jax.modeling import registry

    assert set(registry.NAMES) <= set(CHECKPOINTS)
    assert {"xtr", "fit5_authors", "hf", "t5x", *AS_MONOT5} <= set(CHECKPOINTS)


@pytest.mark.parametrize("name", UNCHANGED)
def test_scores_are_unchanged(name):
    entry = CHECKPOINTS[name]
    ranker = _load(name)
    for query, expected in entry["scores"].items():
        scores = _scores(ranker, query, entry["lists"])
        expected = np.asarray(expected, np.float32)
        np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=2e-6, err_msg=query)
        distinct = np.abs(np.subtract.outer(expected, expected))[np.triu_indices(len(expected), 1)]
        if distinct.min() > 1e-5:  # no near-ties: the ranking itself is the same
            assert np.argsort(-scores).tolist() == np.argsort(-expected).tolist(), query


def test_xtr_embeddings_are_unchanged():
    from rankt5_jax.modeling import xtr

    ranker = _load("xtr")
    tokens = np.asarray(RECORD["xtr_tokens"], np.int32)
    emb, mask = xtr.token_embeddings(ranker.model, ranker.params, tokens)
    expected = np.load(os.path.join(FIXTURES, "xtr_embeddings.npy"))
    np.testing.assert_allclose(np.asarray(emb), expected, rtol=1e-5, atol=2e-6)
    np.testing.assert_array_equal(np.asarray(mask), tokens > 0)


def test_monot5_model_dir_keeps_the_template_it_was_trained_with():
    ranker = _load("monot5")
    relevant = ranker.vocab.encode("Relevant:")
    for query in RECORD["queries"]:
        for tokens in ranker.tokenize(query, RECORD["docs"]):
            assert tokens[-1] == EOS_ID
            assert tokens[-1 - len(relevant) : -1] != relevant


@pytest.mark.parametrize("name", AS_MONOT5)
def test_hf_and_t5x_as_monot5_take_the_published_template(name):
    ranker = _load(name)
    vocab = ranker.vocab
    max_length = RECORD["max_length"]
    relevant = vocab.encode("Relevant:")
    for query, old in CHECKPOINTS[name]["scores"].items():
        scores = ranker.score(query, RECORD["docs"])
        # The text pyterrier-t5 / rerankers build, encoded whole, for the pairs that fit.
        expected_tokens = [
            vocab.encode(f"Query: {query} Document: {doc} Relevant:") + [EOS_ID]
            for doc in RECORD["docs"]
        ]
        tokens = ranker.tokenize(query, RECORD["docs"])
        fits = [len(t) <= max_length for t in expected_tokens]
        assert not all(fits)  # the long document is cut
        for fit, ours, theirs in zip(fits, tokens, expected_tokens):
            if fit:
                assert ours == theirs
            else:  # the document is cut first: "Relevant:" and EOS are kept
                assert len(ours) == max_length
                assert ours[-1 - len(relevant) :] == relevant + [EOS_ID]
                assert ours[: -1 - len(relevant)] == theirs[: max_length - 1 - len(relevant)]
        np.testing.assert_array_equal(scores, ranker.score_tokens(tokens))
        fitting = [t for t, fit in zip(expected_tokens, fits) if fit]
        np.testing.assert_array_equal(scores[np.asarray(fits)], ranker.score_tokens(fitting))
        # ... which is the one change: the old template gave other scores.
        assert not np.array_equal(scores, np.asarray(old, np.float32))
