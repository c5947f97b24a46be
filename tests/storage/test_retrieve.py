"""`rankt5 retrieve --method bm25` with its run and its BM25 index in a bucket (the loopback
emulator): the same run as locally, the index reused from the bucket on a second call."""

from __future__ import annotations

import os

from rankt5_jax import cli
from rankt5_jax.data import paths
from rankt5_jax.retrieval import bm25

CORPUS = ["bees make honey in hives", "the tide comes in twice a day", "honey is sweet"]


def test_retrieve_to_a_bucket_with_its_index_there(tmp_path, bucket, monkeypatch, capsys):
    corpus, queries = tmp_path / "corpus.tsv", tmp_path / "queries.tsv"
    corpus.write_text("".join(f"d{i}\t{CORPUS[i % 3]} number {i}\n" for i in range(9)))
    queries.write_text("q1\twhat do bees make\nq2\thoney tide\n")
    monkeypatch.chdir(tmp_path)  # anything written by a path taken for local shows here

    def retrieve(output, index):
        argv = ["retrieve", "--method", "bm25", "--corpus", str(corpus), "--queries"]
        assert cli.main([*argv, str(queries), "--output", output, "--bm25_index", index]) == 0
        return capsys.readouterr().err

    retrieve(str(tmp_path / "local.run"), str(tmp_path / "index"))
    remote, index = paths.join(bucket, "bm25.run"), paths.join(bucket, "index")
    assert "indexed and saved to gs://" in retrieve(remote, index)
    expected = (tmp_path / "local.run").read_text()
    with paths.open(remote) as handle:
        assert handle.read() == expected
    assert sorted(paths.listdir(index)) == sorted(os.listdir(tmp_path / "index"))
    assert bm25.read_meta(index)["documents"] == 9
    again = paths.join(bucket, "again.run")
    assert f"loaded the BM25 index in {index}" in retrieve(again, index)
    with paths.open(again) as handle:
        assert handle.read() == expected
    assert not (tmp_path / "gs:").exists()
