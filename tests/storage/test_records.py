"""Training from records that `rankt5 prepare --output_dir gs://...` wrote (the loopback
emulator): the seqio task reads this host's cached copies of the shards (`paths.local_files`,
never TensorFlow's own GCS client), so the engine gets the same batches, and trains to the same
parameters, as from the same records in a local folder."""

from __future__ import annotations

import os

import jax
import numpy as np

from rankt5_jax import cli
from rankt5_jax.data import paths, tasks_lib
from rankt5_jax.modeling.partitioning import Partitioner
from rankt5_jax.training import optimizers, setup
from rankt5_jax.training import train as train_lib

LENGTHS = {"inputs": 32, "targets": 1}


def _prepare(files: dict, output: str) -> None:
    argv = ["prepare", "--output_dir", output, "--num_shards", "2", "--top_k", "12"]
    for name in ("queries", "corpus", "qrels", "run"):
        argv += [f"--{name}", files[name]]
    assert cli.main(argv) == 0


def _batches(task: str, count: int, data_shards: int = 1, rows=(0, 8)) -> list[dict]:
    """The engine's first `count` batches (`setup.TrainStream`, as `train` reads them): the
    global batch of 8 lists from `data_shards` shards, or the `rows` a process holds."""
    stream = setup.TrainStream(task, LENGTHS, 8, seed=3, data_shards=data_shards, rows=rows)
    return [next(stream) for _ in range(count)]


def _train(task: str, vocab: str, model_dir: str):
    model = setup.make_model(
        variant="encdec", size="tiny", vocab_path=vocab, dropout_rate=0.0, loss="softmax"
    )
    return train_lib.train(
        model_dir=model_dir, model=model, vocab_path=vocab, train_task=task, train_steps=1,
        task_feature_lengths=LENGTHS, batch_size=8, partitioner=Partitioner(devices=jax.devices()[:1]),
        optimizer=optimizers.make_optimizer("adafactor", learning_rate=1e-3),
        checkpoint_period=1, log_period=1, progress=False,
    )  # fmt: skip


def test_training_from_records_in_a_bucket_reads_the_same_lists(smoke_lists, tmp_path, bucket):
    files, vocab = smoke_lists["train"], smoke_lists["vocab"]
    local, remote = str(tmp_path / "records"), paths.join(bucket, "records")
    _prepare(files, local)
    _prepare(files, remote)
    remote_vocab = paths.join(bucket, "spiece.model")  # VOCAB in the bucket too
    paths.upload(vocab, remote_vocab)
    tasks = {}
    for name, folder, spm in (("local", local, vocab), ("bucket", remote, remote_vocab)):
        tasks[name] = tasks_lib.register_prepared_task(
            f"storage_{name}_lists", folder, spm, list_size=6, seed=1
        )
    shards = _shards(tasks["bucket"])  # where this host keeps its copies: none yet
    assert len(shards) == 2 and not any(os.path.exists(shard) for shard in shards)
    folder = os.path.dirname(shards[0])
    # a process holding rows 0-3 of 2 data shards reads shard 0: only its file is downloaded
    np.testing.assert_array_equal(
        _batches(tasks["bucket"], 1, 2, rows=(0, 4))[0]["encoder_input_tokens"],
        _batches(tasks["local"], 1, 2, rows=(0, 4))[0]["encoder_input_tokens"],
    )
    assert os.path.isfile(shards[0]) and not os.path.exists(shards[1])
    # FiT5's record check reads the first file of the bucket's records
    fit5 = tasks_lib.register_prepared_task(
        "storage_fit5_lists", remote, remote_vocab, list_size=6, features={"mode": "per_query"}
    )
    assert tasks_lib.task_features(fit5).mode == "per_query"
    ours = _batches(tasks["local"], 4)
    theirs = _batches(tasks["bucket"], 4)
    for got, want in zip(theirs, ours, strict=True):
        assert got.keys() == want.keys()
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
    tokens = "encoder_input_tokens"
    assert len({batch[tokens].tobytes() for batch in ours}) == 4  # real, changing batches
    # from two data shards (a multi-host run's) as well
    for got, want in zip(_batches(tasks["bucket"], 2, 2), _batches(tasks["local"], 2, 2)):
        np.testing.assert_array_equal(got[tokens], want[tokens])
    # a second registration (a resumed run) reuses the cached copies: nothing downloaded again
    stamps = {name: os.stat(os.path.join(folder, name)).st_mtime_ns for name in os.listdir(folder)}
    assert sorted(stamps) == sorted(os.path.basename(shard) for shard in shards)
    tasks_lib.register_prepared_task(
        "storage_bucket_lists", remote, remote_vocab, list_size=6, seed=1
    )
    assert _shards(tasks["bucket"]) == shards
    # the engine trains from them (one step; its model directory and vocabulary in the bucket)
    result = _train(tasks["bucket"], remote_vocab, paths.join(bucket, "m"))
    assert {name: os.stat(os.path.join(folder, name)).st_mtime_ns for name in stamps} == stamps
    assert result.step == 1 and np.isfinite(result.history[-1]["loss"])
    assert paths.listdir(paths.join(bucket, "m", "checkpoints")) == ["1"]
    with (
        paths.open(paths.join(bucket, "m", "spiece.model"), "rb") as handle,
        open(vocab, "rb") as f,
    ):
        assert handle.read() == f.read()


def test_rewritten_records_are_downloaded_again(bucket):
    """The cache is keyed by each object's generation: a record rewritten in the bucket (another
    `prepare`) is read anew, never the stale copy."""
    shard = paths.join(bucket, "train.tfrecord-00000-of-00001")
    seen = set()
    for content in (b"first", b"again"):  # the same size: only the generation differs
        with paths.open(shard, "wb") as handle:
            handle.write(content)
        objects = paths.cached(paths.join(bucket, "train.tfrecord-*"), "records")
        assert [o.url for o in objects] == [shard] and not os.path.exists(objects[0].local)
        paths.fetch(objects)
        with open(objects[0].local, "rb") as handle:
            assert handle.read() == content
        seen.add(objects[0].local)
    assert len(seen) == 2
    assert paths.cached(paths.join(bucket, "none-*")) == []


def _shards(task: str) -> list[str]:
    import seqio

    return sorted(seqio.get_mixture_or_task(task).source.list_shards("train"))
