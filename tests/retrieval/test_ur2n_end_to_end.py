"""UR2N end to end: `smoke_cpu_ur2n.gin` trains; `rankt5 index`, `rankt5 search` and
`rankt5 rerank --index_dir` write complete, well-formed runs; a `rankt5 index` killed in the
middle and rerun gives the uninterrupted index byte for byte; `Ranker.search` and
`Ranker.retrieve_and_rerank` give the same as the commands."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from rankt5_jax import cli
from rankt5_jax.data import formats
from rankt5_jax.retrieval import token_index

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _files(folder):
    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            with open(os.path.join(root, name), "rb") as handle:
                found[os.path.relpath(os.path.join(root, name), folder)] = handle.read()
    return found


def _check_run(path, queries, corpus, per_query):
    """Every query, `per_query` documents each (all in the corpus), ranks 1..n, scores
    non-increasing."""
    lines = [line.split() for line in open(path).read().splitlines()]
    assert all(len(parts) == 6 and parts[1] == "Q0" for parts in lines)
    run = formats.read_run(path, known_queries=queries, corpus=corpus)
    assert list(run) == list(queries)
    for qid in queries:
        rows = [parts for parts in lines if parts[0] == qid]
        assert [int(p[3]) for p in rows] == list(range(1, per_query + 1))
        assert np.all(np.diff([float(p[4]) for p in rows]) <= 0)
    return run


@pytest.fixture(scope="module")
def trained(trained_ur2n):
    """The session's tiny UR2N model (`conftest.py`)."""
    return trained_ur2n


def test_index_search_rerank_end_to_end(trained, capsys):
    folder, model, dev = trained["folder"], trained["model"], trained["dev"]
    index_dir = str(folder / "index")
    common = ["--checkpoint", model, "--corpus", dev["corpus"], "--max_length", "64"]
    common += ["--chunk_passages", "256", "--shard_passages", "1000", "--train_passages", "400"]
    common += ["--kmeans_iterations", "6"]
    assert cli.main(["index", *common, "--index_dir", index_dir]) == 0
    stats = token_index.index_stats(index_dir)
    corpus = formats.Corpus(dev["corpus"])
    queries = formats.read_queries(dev["queries"])
    assert stats["passages"] == len(corpus) and stats["dim"] == 32

    # A kill in the middle of `rankt5 index` (SIGKILL after chunk 3 is appended, before it is
    # recorded), then the same command again: the same files as the uninterrupted build.
    resumed = str(folder / "resumed")
    command = [sys.executable, "-m", "rankt5_jax", "index", *common, "--index_dir", resumed]
    env = dict(os.environ, **{token_index.FAULT_ENV: "chunk:3"})
    killed = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not os.path.isfile(os.path.join(resumed, "shard_00000", "shard.json"))
    assert cli.main(["index", *common, "--index_dir", resumed]) == 0
    assert _files(resumed) == _files(index_dir)

    searched = str(folder / "search.run")
    args = ["search", "--index_dir", index_dir, "--queries", dev["queries"]]
    assert cli.main([*args, "--output", searched, "--top_k", "20", "--token_k", "100"]) == 0
    run = _check_run(searched, queries, corpus, 20)
    exact = str(folder / "exact.run")
    assert cli.main([*args, "--output", exact, "--top_k", "20", "--exact_search"]) == 0
    _check_run(exact, queries, corpus, 20)

    capsys.readouterr()
    reranked = str(folder / "reranked.run")
    assert cli.main([
        "rerank", "--checkpoint", model, "--index_dir", index_dir, "--queries", dev["queries"],
        "--corpus", dev["corpus"], "--output", reranked, "--top_k", "20", "--token_k", "100",
        "--max_length", "80", "--qrels", dev["qrels"], "--json",
    ]) == 0  # fmt: skip
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(metrics) == {"input", "reranked"} and set(metrics["input"]) == set(
        metrics["reranked"]
    )
    second = _check_run(reranked, queries, corpus, 20)
    assert all(set(second[q]) == set(run[q]) for q in queries)  # the retrieved top 20, re-ranked
    # "input": the retrieval stage's metrics, as `rankt5 evaluate` computes them on its run
    from rankt5_jax.evaluation import measures

    qrels = formats.read_qrels(dev["qrels"])
    assert measures.evaluate_run(run, qrels) == pytest.approx(metrics["input"], abs=1e-9)

    # The same in Python, with the Ranker's own params as the encoder.
    from rankt5_jax import Ranker

    ranker = Ranker.load(model, max_length=80)
    some = dict(list(queries.items())[:5])
    found = ranker.search(some, k=20, index_dir=index_dir, token_k=100)
    for qid in some:  # (the file lists tied documents in trec_eval's order)
        assert measures.rank_documents(found[qid]) == list(run[qid])
        assert found[qid] == pytest.approx(run[qid], abs=1e-6)
    retrieved, scored = ranker.retrieve_and_rerank(
        some, dev["corpus"], k=20, index_dir=index_dir, token_k=100
    )
    assert retrieved == found
    qid = next(iter(some))
    docs = list(retrieved[qid])
    direct = ranker.score(some[qid], [corpus.text(d) for d in docs])
    np.testing.assert_allclose([scored[qid][d] for d in docs], direct, atol=1e-5)
    np.testing.assert_allclose([second[qid][d] for d in docs], direct, atol=1e-4)

    # A hybrid first stage: the XTR run fused with the BM25 run by RRF (`search --fuse`), and
    # re-ranked (`rerank --fuse`, which keeps the fused run it re-ranked beside its output).
    from rankt5_jax.retrieval import fusion

    fused = str(folder / "fused.run")
    assert cli.main([*args, "--output", fused, "--top_k", "20", "--token_k", "100",
                     "--fuse", dev["run"]]) == 0  # fmt: skip
    bm25_run = formats.read_run(dev["run"])
    want = fusion.fuse_runs([run, {q: bm25_run[q] for q in run}], depth=20, top_k=20)
    got = formats.read_run(fused)
    assert list(got) == list(want)
    for qid in want:
        assert list(got[qid]) == measures.rank_documents(want[qid])
        assert got[qid] == pytest.approx(want[qid], abs=1e-9)
    assert any(set(got[q]) - set(run[q]) for q in got)  # BM25 brought documents of its own
    fused_reranked = str(folder / "fused_reranked.run")
    assert cli.main([
        "rerank", "--checkpoint", model, "--index_dir", index_dir, "--fuse", dev["run"],
        "--queries", dev["queries"], "--corpus", dev["corpus"], "--output", fused_reranked,
        "--top_k", "20", "--token_k", "100", "--max_length", "80",
    ]) == 0  # fmt: skip
    assert formats.read_run(fused_reranked + ".fused.run") == got
    again = formats.read_run(fused_reranked)
    assert all(set(again[q]) == set(got[q]) for q in got)
