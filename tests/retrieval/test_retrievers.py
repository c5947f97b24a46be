"""Retrievers behind one interface: `Retriever.load` picks the backend a folder records; an
index written before codecs existed loads and searches as it did; codec names; `--rescore`;
reciprocal rank fusion against a hand computation."""

import json
import os

import numpy as np
import pytest

from rankt5_jax.data import formats, synthetic
from rankt5_jax.errors import ConfigError
from rankt5_jax.retrieval import base, bm25, codecs, fusion, token_index, xtr_encoder, xtr_search
from rankt5_jax.retrieval.index_meta import IndexMeta
from rankt5_jax.retrieval.xtr_retriever import XTRRetriever

HERE = os.path.dirname(os.path.abspath(__file__))
LEGACY = os.path.join(HERE, "fixtures", "legacy_index")


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    found = synthetic.make_collection(num_queries=20, seed=4, titles=True)
    folder = tmp_path_factory.mktemp("retrievers")
    path = str(folder / "corpus.jsonl")
    with open(path, "w") as handle:
        for docid, doc in found["corpus"].items():
            handle.write(json.dumps({"_id": docid, **doc}) + "\n")
    return {**found, "folder": folder, "corpus_path": path}


@pytest.fixture(scope="module")
def token_dir(collection, vocab):
    encoder = xtr_encoder.table_encoder(vocab, dim=16, max_length=48)
    index_dir = str(collection["folder"] / "tokens")
    settings = token_index.IndexSettings(chunk_passages=128, kmeans_iterations=6, codec="ivfpq4")
    token_index.build_index(collection["corpus_path"], index_dir, encoder, settings, progress=False)
    return index_dir, encoder


def test_legacy_index_loads_and_searches_as_before():
    """tests/retrieval/fixtures/legacy_index was written by the code before codecs existed
    (commit 1981561, `make_fixture.py`), with its searches' results: today's code reads the
    same index.json (no codec, no code_size) and finds the same documents and scores."""
    index_dir = os.path.join(LEGACY, "index")
    meta = IndexMeta.read(index_dir)
    assert meta.settings.codec == "ivfpq" and meta.settings.code_size == meta.settings.pq_m
    assert "codec" not in json.load(open(os.path.join(index_dir, "index.json")))["settings"]
    with np.load(os.path.join(LEGACY, "queries.npz")) as stored:
        queries = [stored[f"arr_{i}"] for i in range(len(stored.files))]
    expected = json.load(open(os.path.join(LEGACY, "expected.json")))
    for kind, exact in (("compressed", False), ("exact", True)):
        searcher = xtr_search.Searcher(index_dir, exact=exact, nprobe=4)
        found = searcher.search_vectors(queries, top_k=30, token_k=25)
        for (numbers, scores), want in zip(found, expected[kind]):
            assert [searcher.index.doc_ids[n] for n in numbers] == want["docs"]
            assert scores.tolist() == pytest.approx(want["scores"], abs=1e-7)


def test_retriever_load_picks_the_backend(collection, token_dir, tmp_path):
    index_dir, encoder = token_dir
    queries = dict(list(collection["queries"].items())[:6])
    xtr = base.Retriever.load(index_dir, encoder=encoder, token_k=50)
    assert isinstance(xtr, XTRRetriever) and base.index_kind(index_dir) == "xtr"
    searcher = xtr_search.Searcher(index_dir)
    want = xtr_search.search(searcher, encoder, queries, top_k=10, token_k=50, progress=False)
    assert xtr.search(queries, k=10) == want

    bm25_dir = str(tmp_path / "bm25")
    index = bm25.build_from_file(
        collection["corpus_path"], 0.9, 0.4, "en", "english", progress=None
    )
    index.save(bm25_dir)
    found = base.Retriever.load(bm25_dir)
    assert isinstance(found, bm25.BM25Retriever) and base.index_kind(bm25_dir) == "bm25"
    assert found.search(queries, k=10) == index.search(queries, 10)

    with pytest.raises(ConfigError, match="holds a xtr index, not bm25"):
        bm25.BM25Retriever.load(index_dir)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no index"):
        base.Retriever.load(tmp_path / "empty")


def test_codec_names():
    assert codecs.parse_codec("ivfpq16").number == 16
    assert codecs.parse_codec("ivfres2").family == "ivfres"
    for bad in ("pq16", "ivfsq3", "ivfres3", "ivfflat8", ""):
        with pytest.raises(ConfigError, match="not a codec"):
            codecs.parse_codec(bad)
    with pytest.raises(ConfigError, match="must divide"):
        codecs.make_codec("ivfpq5", dim=16)
    assert codecs.make_codec("ivfres2", dim=16).pq_m == 16  # one sub-vector per dimension


def test_rescore_with_every_candidate_equals_exact(token_dir, collection):
    """Every list probed and every token a candidate: re-scoring with the float vectors gives
    exact search's run; fewer candidates keep at least the codes' recall."""
    index_dir, encoder = token_dir
    meta = IndexMeta.read(index_dir)
    queries = encoder.encode_queries(list(collection["queries"].values())[:8])
    exact = xtr_search.Searcher(index_dir, exact=True).search_vectors(queries, 100, 40)
    tokens = xtr_search.TokenIndex(index_dir).num_tokens
    every = xtr_search.Searcher(index_dir, nprobe=meta.settings.nlist, rescore=tokens // 40 + 1)
    for (numbers, scores), (want_numbers, want_scores) in zip(
        every.search_vectors(queries, 100, 40), exact
    ):
        np.testing.assert_array_equal(numbers, want_numbers)
        np.testing.assert_allclose(scores, want_scores, atol=1e-6)

    def recall(searcher):
        found = searcher.search_vectors(queries, 100, 40)
        return np.mean([len(set(f[0]) & set(t[0])) / len(t[0]) for f, t in zip(found, exact)])

    plain = recall(xtr_search.Searcher(index_dir, nprobe=8))
    assert recall(xtr_search.Searcher(index_dir, nprobe=8, rescore=4)) >= plain
    with pytest.raises(ConfigError, match="rescore must be"):
        xtr_search.Searcher(index_dir, rescore=-1)


def test_reciprocal_rank_fusion_by_hand(tmp_path):
    """Run A ranks a, b, c; run B scores c 5, a 4, d 4, so trec_eval ranks c, d, a (ties:
    docid descending). With k = 60: a = 1/61 + 1/63, c = 1/63 + 1/61, b = d = 1/62, and the
    fused ties again go docid descending: c, a, d, b."""
    a = {"q1": {"a": 3.0, "b": 2.0, "c": 1.0}, "q2": {"x": 1.0}}
    b = {"q1": {"c": 5.0, "a": 4.0, "d": 4.0}}
    fused = fusion.fuse_runs([a, b])
    assert fused["q1"] == pytest.approx(
        {"a": 1 / 61 + 1 / 63, "c": 1 / 63 + 1 / 61, "b": 1 / 62, "d": 1 / 62}, abs=1e-15
    )
    assert fused["q2"] == pytest.approx({"x": 1 / 61})
    path = str(tmp_path / "fused.run")
    formats.write_trec_run(path, fused)
    assert [line.split()[2] for line in open(path) if line.startswith("q1")] == [
        "c", "a", "d", "b",
    ]  # fmt: skip
    # depth cuts each run first; top_k the fused run; k changes the weights
    assert fusion.fuse_runs([a, b], depth=1) == {
        "q1": pytest.approx({"a": 1 / 61, "c": 1 / 61}),
        "q2": pytest.approx({"x": 1 / 61}),
    }
    assert list(fusion.fuse_runs([a, b], top_k=2)["q1"]) == ["c", "a"]  # trec_eval order
    assert fusion.fuse_runs([a, b], k=0)["q1"]["b"] == pytest.approx(1 / 2)
    with pytest.raises(ConfigError, match="at least one run"):
        fusion.fuse_runs([])
    run_file = str(tmp_path / "b.run")
    formats.write_trec_run(run_file, {**b, "q9": {"z": 1.0}})
    assert fusion.fuse_with_file(a, run_file) == fused  # the file's other queries left out
