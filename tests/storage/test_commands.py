"""`rankt5 index`/`search`, `sweep` and `convert --to hf` with inputs and outputs in a bucket
(the loopback emulator): the same files, runs and scores as with local folders. One tiny UR2N
model (random weights with an XTR layer) and one small BEIR-layout dataset serve all three."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from rankt5_jax import Ranker, cli
from rankt5_jax.checkpoints.convert import write_params_model_dir
from rankt5_jax.data import paths
from rankt5_jax.data.vocab import Vocabulary
from rankt5_jax.modeling import registry
from rankt5_jax.modeling.network import get_config
from rankt5_jax.retrieval import bm25
from rankt5_jax.retrieval.base import Retriever

WORDS = ["bees", "honey", "hive", "tide", "moon", "sea", "sweet", "flower", "wax", "salt"]


@pytest.fixture(scope="module")
def local(spm_path, tmp_path_factory):
    """A UR2N model directory and a BEIR-layout dataset folder (`beir`), both local."""
    root = tmp_path_factory.mktemp("commands")
    vocab = Vocabulary(spm_path)
    config = get_config("tiny", vocab_size=512, xtr_dim=16)
    model = registry.build_model(registry.make_spec("encdec", config, vocab))
    shapes = {"encoder_input_tokens": (1, 1, 8)}
    params = model.get_initial_variables(jax.random.PRNGKey(1), shapes)["params"]
    model_dir = str(root / "ur2n")
    write_params_model_dir(
        model_dir, model.spec(), jax.tree_util.tree_map(np.asarray, params), spm_path
    )
    beir = root / "beir"
    (beir / "qrels").mkdir(parents=True)
    with open(beir / "corpus.jsonl", "w") as handle:
        for i in range(60):
            text = " ".join(WORDS[(i * k) % len(WORDS)] for k in range(1, 7))
            handle.write(json.dumps({"_id": f"d{i}", "title": WORDS[i % 10], "text": text}) + "\n")
    with open(beir / "queries.jsonl", "w") as handle:
        for q, words in enumerate(("bees honey", "tide moon sea", "sweet wax", "salt flower")):
            handle.write(json.dumps({"_id": f"q{q}", "text": words}) + "\n")
    (beir / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{q}\td{q * 7 + 1}\t1\n" for q in range(4))
    )
    return {"model": model_dir, "beir": str(beir)}


@pytest.fixture
def remote(local, bucket):
    """The same model directory and dataset folder in the bucket."""
    out = {name: paths.join(bucket, os.path.basename(path)) for name, path in local.items()}
    for name, path in local.items():
        paths.upload_tree(path, out[name])
    return out


def _tree(folder: str) -> dict[str, bytes]:
    """Every file under a local or bucket folder -> its bytes."""
    found = {}
    root = paths.local_tree(folder, "test-tree") if paths.is_remote(folder) else folder
    for base, _, names in os.walk(root):
        for name in names:
            with open(os.path.join(base, name), "rb") as handle:
                found[os.path.relpath(os.path.join(base, name), root)] = handle.read()
    return found


def _read(path: str) -> str:
    with paths.open(path) as handle:
        return handle.read()


def test_index_and_search_in_a_bucket_as_locally(local, remote, bucket, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything written by a path taken for local shows here

    def index(model, corpus, index_dir, *extra):
        argv = ["index", "--checkpoint", model, "--corpus", corpus, "--index_dir", index_dir]
        argv += list(extra)
        argv += ["--max_length", "32", "--train_passages", "60", "--kmeans_iterations", "4"]
        assert cli.main([*argv, "--shard_passages", "25", "--store_vectors", "yes"]) == 0

    def search(index_dir, queries, output, *extra):
        argv = ["search", "--index_dir", index_dir, "--queries", queries, "--output", output]
        assert cli.main([*argv, "--top_k", "10", *extra]) == 0
        return _read(output)

    corpus = "corpus.jsonl"
    index(local["model"], paths.join(local["beir"], corpus), str(tmp_path / "idx"))
    index(local["model"], paths.join(remote["beir"], corpus), paths.join(bucket, "idx"))
    ours, theirs = _tree(str(tmp_path / "idx")), _tree(paths.join(bucket, "idx"))
    assert sorted(theirs) == sorted(ours) and len(ours) > 10  # 3 shards and the index's files
    for name in ours:
        if name != "index.json":  # which names its corpus' path
            assert theirs[name] == ours[name], name
    ours_meta, theirs_meta = json.loads(ours["index.json"]), json.loads(theirs["index.json"])
    assert theirs_meta["corpus"]["path"] == paths.join(remote["beir"], corpus)
    assert {**theirs_meta, "corpus": None} == {**ours_meta, "corpus": None}
    # the same command again: the bucket's index is complete, nothing built or staged
    index(local["model"], paths.join(remote["beir"], corpus), paths.join(bucket, "idx"))
    assert _tree(paths.join(bucket, "idx")) == theirs
    # two builders (--train_only first, then each its shards) into one bucket index: the same
    # files as one builder
    two = paths.join(bucket, "idx2")
    index(local["model"], paths.join(remote["beir"], corpus), two, "--train_only")
    for host in ("1", "0"):
        index(local["model"], paths.join(remote["beir"], corpus), two,
              "--num_processes", "2", "--process_id", host)  # fmt: skip
    assert _tree(two) == theirs
    queries = "queries.jsonl"
    expected = search(str(tmp_path / "idx"), paths.join(local["beir"], queries), "local.run")
    assert len(expected.splitlines()) == 40
    got = search(
        paths.join(bucket, "idx"), paths.join(remote["beir"], queries), paths.join(bucket, "x.run")
    )
    assert got == expected
    exact = search(
        paths.join(bucket, "idx"), paths.join(remote["beir"], queries), "exact.run", "--exact"
    )
    assert exact == search(
        str(tmp_path / "idx"), paths.join(local["beir"], queries), "exact2.run", "--exact"
    )
    assert cli.main(["search", "--index_dir", paths.join(bucket, "none"), "--queries",
                     paths.join(local["beir"], queries), "--output", "n.run"]) == 2  # fmt: skip
    assert cli.main(["index", "--checkpoint", local["model"], "--corpus", paths.join(
        local["beir"], corpus), "--index_dir", "gs://no-such-bucket/idx"]) == 2  # fmt: skip
    assert not (tmp_path / "gs:").exists()


def test_sweep_over_bucket_folders_as_locally(local, remote, bucket, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything written by a path taken for local shows here

    def sweep(model, dataset, output):
        argv = ["sweep", "--checkpoint", model, "--datasets", dataset, "--output_dir", output]
        assert cli.main([*argv, "--top_k", "10", "--max_length", "32", "--quiet", "--json"]) == 0

    sweep(local["model"], local["beir"], str(tmp_path / "sweep"))
    out = paths.join(bucket, "sweep")
    sweep(remote["model"], remote["beir"], out)
    ours, theirs = _tree(str(tmp_path / "sweep")), _tree(out)
    assert sorted(theirs) == sorted(ours)
    for name in ("table.md", "beir/first_stage.run", "beir/reranked.run", "beir/metrics.json"):
        assert theirs[name] == ours[name], name
    assert json.loads(theirs["beir/sweep.json"])["dataset"] == remote["beir"]
    first = ours["beir/reranked.run"].split(b"\n")[0]
    assert first and first != ours["beir/first_stage.run"].split(b"\n")[0]  # re-ranked
    # a second call finds the dataset done in the bucket and rebuilds the same table
    sweep(remote["model"], remote["beir"], out)
    assert _read(paths.join(out, "table.md")) == ours["table.md"].decode()
    assert not (tmp_path / "gs:").exists()


def test_convert_to_hf_in_a_bucket_scores_as_locally(local, remote, bucket, tmp_path):
    query, docs = "bees and honey", ["bees make honey in hives", "the tide and the moon"]
    hf = str(tmp_path / "hf")
    assert cli.main(["convert", "--to", "hf", "--input", local["model"], "--output", hf]) == 0
    out = paths.join(bucket, "hf")
    assert cli.main(["convert", "--to", "hf", "--input", remote["model"], "--output", out]) == 0
    assert _tree(out) == _tree(hf)
    expected = Ranker.load(hf).score(query, docs)
    np.testing.assert_array_equal(Ranker.load(out).score(query, docs), expected)
    # from a Hugging Face directory in the bucket, back to one in the bucket
    again = paths.join(bucket, "hf_again")
    assert cli.main(["convert", "--to", "hf", "--input", out, "--output", again]) == 0
    np.testing.assert_array_equal(Ranker.load(again).score(query, docs), expected)
    argv = ["convert", "--to", "hf", "--input", local["model"], "--output"]
    assert cli.main([*argv, "gs://no-such-bucket/hf"]) == 2
    assert not (tmp_path / "gs:").exists()


def test_rerank_from_a_token_index_in_a_bucket_as_locally(
    local, remote, bucket, tmp_path, monkeypatch
):
    """`rerank --index_dir gs://...` (UR2N: retrieve, then re-rank) searches a copy of the bucket
    index cached on the host: the same run as from the local index, and `Retriever.load` opens
    the bucket index as well."""
    monkeypatch.chdir(tmp_path)  # anything written by a path taken for local shows here
    index_dir = str(tmp_path / "idx")
    argv = ["index", "--checkpoint", local["model"], "--corpus"]
    argv += [paths.join(local["beir"], "corpus.jsonl"), "--index_dir", index_dir]
    assert cli.main([*argv, "--max_length", "32", "--train_passages", "60"]) == 0
    bucket_index = paths.join(bucket, "rerank_idx")
    paths.upload_tree(index_dir, bucket_index)  # `index` writes the same files (test above)

    def rerank(model, beir, index, output, *extra):
        argv = ["rerank", "--checkpoint", model, "--index_dir", index, "--output", output]
        argv += ["--queries", paths.join(beir, "queries.jsonl"), "--top_k", "8"]
        argv += ["--corpus", paths.join(beir, "corpus.jsonl"), "--max_length", "32"]
        return cli.main([*argv, *extra])

    assert rerank(local["model"], local["beir"], index_dir, "local.run") == 0
    expected = _read("local.run")
    assert len(expected.splitlines()) == 32
    out = paths.join(bucket, "reranked.run")
    assert rerank(remote["model"], remote["beir"], bucket_index, out) == 0
    assert _read(out) == expected
    assert not paths.exists(f"{out}.journal")
    # --fuse: the bucket index's retrieval fused with a run, as locally
    fuse = str(tmp_path / "first.run")
    with open(fuse, "w") as handle:
        handle.write("q0 Q0 d3 1 2.0 bm25\nq2 Q0 d5 1 1.0 bm25\n")
    assert rerank(local["model"], local["beir"], index_dir, "fused.run", "--fuse", fuse) == 0
    assert rerank(remote["model"], remote["beir"], bucket_index, out, "--fuse", fuse) == 0
    assert _read(out) == _read("fused.run")
    fused = _read(f"{out}.fused.run")
    assert fused == _read("fused.run.fused.run") and " rankt5-xtr-rrf" in fused
    # the first stage alone, through the retrievers' interface
    ranker = Ranker.load(local["model"])
    queries = {"q0": "bees honey", "q1": "tide moon sea"}
    options = {"encoder": ranker.xtr_encoder(32, 16), "exact": True}
    assert Retriever.load(bucket_index, **options).search(queries, 5) == Retriever.load(
        index_dir, **options
    ).search(queries, 5)
    missing = paths.join(bucket, "no_index")
    assert rerank(local["model"], local["beir"], missing, "missing.run") == 2
    assert not os.path.exists("missing.run") and not (tmp_path / "gs:").exists()


def test_bm25_retrieve_with_the_corpus_and_index_in_a_bucket(
    local, remote, bucket, tmp_path, monkeypatch, capsys
):
    """`retrieve --bm25_index` with the corpus in the bucket: read streamed, fingerprinted by
    the object's generation and a ranged hash; the same run as from the local corpus, the
    index reused on a second call and rebuilt once the corpus object is rewritten."""
    monkeypatch.chdir(tmp_path)

    def retrieve(beir, output, index):
        argv = ["retrieve", "--corpus", paths.join(beir, "corpus.jsonl"), "--queries"]
        argv += [paths.join(beir, "queries.jsonl"), "--output", output, "--bm25_index", index]
        assert cli.main([*argv, "--top_k", "5"]) == 0
        return capsys.readouterr().err

    retrieve(local["beir"], "local.run", str(tmp_path / "bm25"))
    expected = _read("local.run")
    assert len(expected.splitlines()) > 4
    index = paths.join(bucket, "bm25")
    assert "indexed and saved" in retrieve(remote["beir"], paths.join(bucket, "a.run"), index)
    assert _read(paths.join(bucket, "a.run")) == expected
    assert f"loaded the BM25 index in {index}" in retrieve(remote["beir"], "b.run", index)
    assert _read("b.run") == expected
    corpus = paths.join(remote["beir"], "corpus.jsonl")
    before = bm25.corpus_fingerprint(corpus)
    assert bm25.read_meta(index)["corpus"] == before
    # the same bytes uploaded again: a new generation, so the index is rebuilt
    paths.upload(paths.join(local["beir"], "corpus.jsonl"), corpus)
    after = bm25.corpus_fingerprint(corpus)
    assert after["generation"] != before["generation"] and after["size"] == before["size"]
    assert after["head_tail_sha256"] == before["head_tail_sha256"]
    assert "rebuilding the BM25 index" in retrieve(remote["beir"], "c.run", index)
    assert _read("c.run") == expected
    assert not (tmp_path / "gs:").exists()
