"""Model directories and checkpoints in a bucket (the loopback GCS emulator): written there,
`Ranker.load("gs://...")` scores exactly as the same model loaded from local disk."""

from __future__ import annotations

import os
import sys

import jax
import numpy as np
import pytest

from rankt5_jax import Ranker, cli
from rankt5_jax.checkpoints import model_dir
from rankt5_jax.data import paths
from rankt5_jax.data.vocab import Vocabulary
from rankt5_jax.errors import CheckpointError
from rankt5_jax.inference import journal
from rankt5_jax.modeling import registry
from rankt5_jax.modeling.network import get_config

QUERY = "what do bees make"
DOCS = ["bees make honey in hives", "the tide comes in twice a day", "honey is sweet"]


def _write(folder: str, spec, params, spm_path: str, step: int = 0) -> None:
    """Our model directory holding `params` as checkpoint `step`, through `model_dir` alone
    (a second step may join a folder that holds one, which `convert` rightly refuses)."""
    paths.makedirs(folder)
    model_dir.write_model_files(folder, spec, spm_path)
    model_dir.save_params(folder, step, params)


@pytest.fixture(scope="module")
def model(spm_path):
    vocab = Vocabulary(spm_path)
    spec = registry.make_spec("encdec", get_config("tiny", vocab_size=vocab.size), vocab)
    built = registry.build_model(spec)
    variables = built.get_initial_variables(
        jax.random.PRNGKey(3), {"encoder_input_tokens": (1, 2, 8)}
    )
    return built.spec(), jax.tree_util.tree_map(np.asarray, variables["params"])


@pytest.fixture
def both(model, spm_path, tmp_path, bucket):
    """The same model directory written locally and to the bucket."""
    spec, params = model
    local, remote = str(tmp_path / "m"), paths.join(bucket, "m")
    _write(local, spec, params, spm_path)
    _write(remote, spec, params, spm_path)
    return local, remote


def test_model_dir_in_a_bucket_loads_and_scores_as_locally(both):
    local, remote = both
    names = paths.listdir(remote)
    assert {"rankt5.json", "spiece.model", "checkpoints"} <= set(names)
    assert paths.listdir(paths.join(remote, "checkpoints")) == ["0"]
    assert model_dir.read_spec(remote) == model_dir.read_spec(local)
    ours = Ranker.load(local).score(QUERY, DOCS)
    theirs = Ranker.load(remote).score(QUERY, DOCS)
    np.testing.assert_array_equal(theirs, ours)
    assert np.ptp(ours) > 0  # real, differing scores
    # straight into shards on a (2, 4) mesh of the 8 test devices
    mesh_local = Ranker.load(local, mesh_shape=(2, 4)).score(QUERY, DOCS)
    mesh_remote = Ranker.load(remote, mesh_shape=(2, 4)).score(QUERY, DOCS)
    np.testing.assert_array_equal(mesh_remote, mesh_local)
    np.testing.assert_allclose(mesh_remote, ours, atol=1e-5)


def test_a_later_step_and_the_best_step_in_a_bucket(both, model, spm_path):
    local, remote = both
    spec, params = model
    shifted = jax.tree_util.tree_map(lambda x: x * 1.25, params)
    _write(remote, spec, shifted, spm_path, step=5)
    model_dir.write_best(remote, (5, 0.5))
    assert model_dir.read_best(remote) == (5, 0.5)
    first = Ranker.load(remote, step=0).score(QUERY, DOCS)
    latest = Ranker.load(remote).score(QUERY, DOCS)
    np.testing.assert_array_equal(first, Ranker.load(local).score(QUERY, DOCS))
    assert np.abs(latest - first).max() > 1e-4
    manager = model_dir.checkpoint_manager(remote)
    model_dir.prune(manager, keep=1, best_step=None, model_dir=remote)
    assert paths.listdir(paths.join(remote, "checkpoints")) == ["5"]


def test_hf_directory_in_a_bucket_loads_as_locally(both, tmp_path):
    local, _ = both
    hf = str(tmp_path / "hf")
    assert cli.main(["convert", "--to", "hf", "--input", local, "--output", hf]) == 0
    remote = paths.join(paths.dirname(both[1]), "hf")
    paths.upload_tree(hf, remote)
    ours = Ranker.load(hf).score(QUERY, DOCS)
    np.testing.assert_array_equal(Ranker.load(remote).score(QUERY, DOCS), ours)
    np.testing.assert_array_equal(
        Ranker.load(remote, mesh_shape=(2, 4)).score(QUERY, DOCS),
        Ranker.load(hf, mesh_shape=(2, 4)).score(QUERY, DOCS),
    )


def test_missing_model_dir_and_bucket_name_the_path(gcs):
    with pytest.raises(CheckpointError, match=r"not found: gs://test-bucket/none$"):
        Ranker.load("gs://test-bucket/none")
    with pytest.raises(CheckpointError, match=r"not found: gs://no-such-bucket/m$"):
        Ranker.load("gs://no-such-bucket/m")


def test_rerank_from_and_to_a_bucket_writes_the_same_run(both, tmp_path, monkeypatch):
    local_model, remote_model = both
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "corpus.tsv").write_text(
        "".join(f"d{i}\t{DOCS[i % 3]} number {i}\n" for i in range(12))
    )
    (folder / "queries.tsv").write_text(f"q1\t{QUERY}\nq2\thoney in a hive\n")
    (folder / "first.run").write_text(
        "".join(f"q{q} Q0 d{i} {i + 1} {20 - i} bm25\n" for q in (1, 2) for i in range(12))
    )
    remote = paths.join(paths.dirname(remote_model), "in")
    paths.upload_tree(str(folder), remote)
    monkeypatch.chdir(tmp_path)  # anything written by a path taken for local shows here

    def rerank(model, source, output):
        argv = ["rerank", "--checkpoint", model, "--output", output, "--top_k", "8"]
        for flag, name in (("queries", "queries.tsv"), ("corpus", "corpus.tsv")):
            argv += [f"--{flag}", paths.join(source, name)]
        assert cli.main([*argv, "--run", paths.join(source, "first.run")]) == 0

    rerank(local_model, str(folder), str(tmp_path / "local.run"))
    rerank(remote_model, remote, paths.join(remote, "out", "reranked.run"))
    with paths.open(paths.join(remote, "out", "reranked.run")) as handle:
        assert handle.read() == (tmp_path / "local.run").read_text()
    assert not (tmp_path / "gs:").exists()  # the journal of a bucket output is kept on this host
    assert not os.path.exists(
        journal.local_folder(paths.join(remote, "out", "reranked.run.journal"))
    )


def test_training_state_and_data_position_resume_from_a_bucket(model, spm_path, bucket):
    """What `rankt5 train` saves per step (`save_state`: the tf.data position, then params and
    optimizer state) written to a bucket and read back as a resumed process does."""
    import shutil

    import jax.numpy as jnp
    import optax
    import tensorflow as tf

    spec, params = model
    remote = paths.join(bucket, "train")
    paths.makedirs(remote)
    model_dir.write_model_files(remote, spec, spm_path)
    tx = optax.adam(1e-3)
    state = {
        "step": jnp.asarray(4, jnp.int32),
        "params": jax.tree_util.tree_map(jnp.asarray, params),
        "opt_state": tx.init(jax.tree_util.tree_map(jnp.asarray, params)),
    }
    iterator = iter(tf.data.Dataset.range(100))
    assert [int(next(iterator)) for _ in range(7)] == list(range(7))
    saver = tf.train.Checkpoint(iterator=iterator)
    manager = model_dir.checkpoint_manager(remote)
    model_dir.save_state(
        manager, remote, 4, state, lambda step: saver.write(model_dir.data_state_prefix(remote, 4)),
        score=0.25,
    )  # fmt: skip
    assert "data.index" in paths.listdir(paths.join(remote, "data_state", "4"))
    # a new process: nothing staged locally
    shutil.rmtree(paths.cache_dir(remote, "data-state"))
    assert model_dir.checkpoint_manager(remote).latest_step() == 4
    assert model_dir.recorded_data_shards(remote, 4) == 1
    resumed = iter(tf.data.Dataset.range(100))
    tf.train.Checkpoint(iterator=resumed).read(model_dir.data_state_prefix(remote, 4))
    assert int(next(resumed)) == 7
    restored = model_dir.restore_state(model_dir.checkpoint_manager(remote), 4, state)
    for got, want in zip(
        jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(state), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    manager = model_dir.checkpoint_manager(remote)
    model_dir.prune(manager, keep=0, best_step=None, model_dir=remote)
    assert paths.listdir(paths.join(remote, "checkpoints")) == ["4"]  # keep 0: all kept


LEGACY = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "legacy")


@pytest.mark.parametrize("name", ["t5x/checkpoint_3", "fit5_authors.safetensors"])
def test_t5x_and_fit5_authors_checkpoints_in_a_bucket_load_as_locally(name, bucket):
    """A T5X (Orbax) checkpoint folder and a FiT5 authors' weights file, with the vocabulary
    beside them in the bucket (`vocab=gs://...`)."""
    local = os.path.join(LEGACY, name)
    remote = paths.join(bucket, name)
    if os.path.isdir(local):
        paths.upload_tree(local, remote)
    else:
        paths.upload(local, remote)
    vocab = paths.join(bucket, "spiece.model")
    paths.upload(os.path.join(LEGACY, "spiece.model"), vocab)
    features = [3.0, 2.0, 1.0] if name.startswith("fit5") else None  # FiT5 reads them

    def scores(ranker):
        return ranker.score(QUERY, DOCS, features=features)

    ours = scores(Ranker.load(local, vocab=os.path.join(LEGACY, "spiece.model")))
    np.testing.assert_array_equal(scores(Ranker.load(remote, vocab=vocab)), ours)
    assert np.ptp(ours) > 0
    if name.startswith("t5x"):  # straight into shards on a (2, 4) mesh of the 8 CPU devices
        np.testing.assert_array_equal(
            scores(Ranker.load(remote, vocab=vocab, mesh_shape=(2, 4))),
            scores(
                Ranker.load(local, vocab=os.path.join(LEGACY, "spiece.model"), mesh_shape=(2, 4))
            ),
        )


def test_legacy_t5x_checkpoint_in_a_bucket_loads_as_locally(model, spm_path, tmp_path, bucket):
    """A T5X checkpoint of the older layout (msgpack `checkpoint` + one zarr array per
    parameter, as T5X wrote before Orbax) in a bucket, also onto a (2, 4) mesh."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "inference"))
    from test_ranker import _write_t5x_legacy  # the one writer of that layout in the tests

    _, params = model
    local = str(tmp_path / "checkpoint_7")
    _write_t5x_legacy(local, params)
    remote = paths.join(bucket, "legacy", "checkpoint_7")
    paths.upload_tree(local, remote)
    vocab = paths.join(bucket, "legacy", "spiece.model")
    paths.upload(spm_path, vocab)
    ours = Ranker.load(local, vocab=spm_path).score(QUERY, DOCS)
    assert np.ptp(ours) > 0
    np.testing.assert_array_equal(Ranker.load(remote, vocab=vocab).score(QUERY, DOCS), ours)
    np.testing.assert_array_equal(
        Ranker.load(remote, vocab=vocab, mesh_shape=(2, 4)).score(QUERY, DOCS),
        Ranker.load(local, vocab=spm_path, mesh_shape=(2, 4)).score(QUERY, DOCS),
    )


def test_convert_to_a_model_dir_in_a_bucket_scores_as_the_source(
    both, tmp_path, monkeypatch, capsys
):
    """`rankt5 convert --to rankt5 --output gs://...`, from a local and from a bucket model
    directory (and a Hugging Face export of the bucket one, written locally, back to a bucket)."""
    local, remote = both
    monkeypatch.chdir(tmp_path)  # anything written by a path taken for local shows here
    expected = Ranker.load(local).score(QUERY, DOCS)
    hf = str(tmp_path / "hf")
    assert cli.main(["convert", "--to", "hf", "--input", remote, "--output", hf]) == 0
    for name, source in (("from_local", local), ("from_bucket", remote), ("from_hf", hf)):
        output = paths.join(paths.dirname(remote), name)
        argv = ["convert", "--to", "rankt5", "--input", source, "--output", output]
        assert cli.main(argv) == 0
        assert paths.listdir(paths.join(output, "checkpoints")) == ["0"]
        np.testing.assert_array_equal(Ranker.load(output).score(QUERY, DOCS), expected)
    assert cli.main(["convert", "--to", "rankt5", "--input", local, "--output", output]) == 2
    assert "already holds checkpoints" in capsys.readouterr().err
    assert not (tmp_path / "gs:").exists()
