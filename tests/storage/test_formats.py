"""Corpus, queries, qrels and runs read from and written to a bucket (the loopback emulator):
the same values as from local files, errors naming the gs:// path, the CLI's one-line error."""

from __future__ import annotations

import json

import pytest

from rankt5_jax import cli
from rankt5_jax.data import formats, paths
from rankt5_jax.errors import ConfigError, InputFormatError

DOCS = {f"d{i}": (f"title {i}", f"text of document {i} " + "word " * (i % 7)) for i in range(300)}


@pytest.fixture
def files(tmp_path, bucket):
    """The same four files locally and in the bucket -> (local paths, bucket paths)."""
    local = {
        "corpus": tmp_path / "corpus.jsonl",
        "queries": tmp_path / "queries.tsv",
        "qrels": tmp_path / "qrels.txt",
        "run": tmp_path / "bm25.run",
    }
    local["corpus"].write_text(
        "".join(json.dumps({"_id": d, "title": t, "text": x}) + "\n" for d, (t, x) in DOCS.items())
    )
    local["queries"].write_text("q1\tfirst query\nq2\tsecond query\n")
    local["qrels"].write_text("q1 0 d3 1\nq1 0 d7 0\nq2 0 d11 2\n")
    local["run"].write_text(
        "".join(f"q{q} Q0 d{i} {i + 1} {10 - i / 10} bm25\n" for q in (1, 2) for i in range(20))
    )
    remote = {}
    for name, path in local.items():
        remote[name] = paths.join(bucket, path.name)
        paths.upload(str(path), remote[name])
    return {k: str(v) for k, v in local.items()}, remote


def test_readers_give_the_same_values_from_a_bucket(files):
    local, remote = files
    assert formats.read_queries(remote["queries"]) == formats.read_queries(local["queries"])
    assert formats.read_qrels(remote["qrels"]) == formats.read_qrels(local["qrels"])
    assert formats.read_run(remote["run"]) == formats.read_run(local["run"])
    assert list(formats.iter_corpus(remote["corpus"])) == list(formats.iter_corpus(local["corpus"]))
    corpus = formats.Corpus(remote["corpus"])
    assert len(corpus) == len(DOCS)
    for docid in ("d0", "d150", "d299", "d42"):  # random access: seeks in the object
        assert corpus.get(docid) == DOCS[docid]
    corpus.close()
    assert paths.isfile(remote["corpus"] + ".idx.npz")  # the index is cached beside it
    again = formats.Corpus(remote["corpus"])
    assert again.get("d77") == DOCS["d77"]
    again.close()


def test_a_run_written_to_a_bucket_reads_back(files, bucket):
    local, _ = files
    run = formats.read_run(local["run"])
    out = paths.join(bucket, "out", "reranked.run")
    formats.check_output_path(out)
    formats.write_trec_run(out, run, tag="x")
    assert formats.read_run(out) == run
    with pytest.raises(ConfigError, match="no bucket gs://no-such-bucket"):
        formats.check_output_path("gs://no-such-bucket/out/x.run")


def test_missing_object_is_named(gcs):
    with pytest.raises(InputFormatError, match=r"^gs://test-bucket/none.tsv: file not found"):
        formats.read_queries("gs://test-bucket/none.tsv")


def test_evaluate_and_compare_read_a_bucket(files, capsys):
    local, remote = files
    assert cli.main(["evaluate", "--run", remote["run"], "--qrels", remote["qrels"]]) == 0
    from_bucket = capsys.readouterr().out
    assert cli.main(["evaluate", "--run", local["run"], "--qrels", local["qrels"]]) == 0
    assert from_bucket == capsys.readouterr().out and "ndcg" in from_bucket.lower()
    code = cli.main(["evaluate", "--run", "gs://test-bucket/none.run", "--qrels", remote["qrels"]])
    assert code == 2
    assert capsys.readouterr().err.strip().count("\n") == 0


def _records(folder: str) -> list[bytes]:
    """Every serialized example of a prepare output folder, shard by shard (read through the
    path layer: TensorFlow's own GCS client cannot be pointed at the emulator)."""
    import tensorflow as tf

    out = []
    for name in sorted(paths.listdir(folder)):
        if ".tfrecord-" in name:
            local = paths.local_copy(paths.join(folder, name))
            out += [record.numpy() for record in tf.data.TFRecordDataset(local)]
    return out


def test_prepare_from_and_to_a_bucket_writes_the_same_records(files, tmp_path, bucket):
    local, remote = files

    def prepare(source, output):
        argv = ["prepare", "--output_dir", output, "--num_shards", "2", "--top_k", "10"]
        for name in ("queries", "corpus", "qrels", "run"):
            argv += [f"--{name}", source[name]]
        assert cli.main(argv) == 0

    prepare(local, str(tmp_path / "records"))
    prepare(remote, paths.join(bucket, "records"))
    names = sorted(paths.listdir(paths.join(bucket, "records")))
    assert names == sorted(name for name in paths.listdir(str(tmp_path / "records")))
    assert "train.stats.json" in names and len([n for n in names if ".tfrecord-" in n]) == 2
    ours = _records(str(tmp_path / "records"))
    assert len(ours) == 2 and _records(paths.join(bucket, "records")) == ours
