"""The multi-process plumbing that needs no second process: the process flags of `rankt5 train`
and `rankt5 rerank`, which batch rows and data shards each process reads, whose data position
it writes, and how `rerank` splits the queries. (tests/multiprocess/test_multiprocess.py runs
the real thing.)"""

import types

import numpy as np
import pytest

from rankt5_jax import cli
from rankt5_jax.checkpoints import model_dir as model_dir_lib
from rankt5_jax.errors import CheckpointError, ConfigError
from rankt5_jax.inference import rerank
from rankt5_jax.modeling import multihost
from rankt5_jax.training import gin_flags, setup
from rankt5_jax.training import train as train_lib

GIN = ["--gin_file=experiments/smoke_cpu.gin"]


def test_train_process_flags():
    flags = gin_flags.parse_gin_flags(
        GIN + ["--multihost", "--coordinator_address", "127.0.0.1:9", "--num_processes=2"]
        + ["--process_id", "1"]
    )  # fmt: skip
    assert flags.multihost and flags.files == ["experiments/smoke_cpu.gin"]
    assert (flags.coordinator_address, flags.num_processes, flags.process_id) == (
        "127.0.0.1:9",
        2,
        1,
    )
    assert gin_flags.parse_gin_flags(GIN + ["--multihost"]).num_processes is None  # TPU VMs


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--num_processes=2"], "only go with --multihost"),
        (["--multihost", "--num_processes=2"], "go together"),
        (["--multihost", "--num_processes=two"], "not a whole number"),
        (["--multihost", "--process_id"], "needs a value"),
        (
            ["--multihost", "--coordinator_address=h", "--num_processes=2", "--process_id=0"],
            "expected HOST:PORT",
        ),  # fmt: skip
        (
            ["--multihost", "--coordinator_address=h:1", "--num_processes=2", "--process_id=2"],
            "must be in 0..1",
        ),  # fmt: skip
        (
            ["--multihost", "--coordinator_address=h:1", "--num_processes=0", "--process_id=0"],
            "at least 1",
        ),  # fmt: skip
    ],
)
def test_train_process_flag_errors(argv, message):
    with pytest.raises(ConfigError, match=message):
        gin_flags.parse_gin_flags(GIN + argv)


def test_rerank_process_flags_need_multihost(capsys):
    argv = ["rerank", "--checkpoint", "c", "--queries", "q", "--corpus", "c", "--run", "r"]
    assert cli.main(argv + ["--output", "o", "--num_processes", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rankt5: error:") and "need --multihost" in err
    assert len(err.splitlines()) == 1
    args = cli.build_parser().parse_args(
        argv + ["--output", "o", "--multihost", "--coordinator_address", "h:1"]
        + ["--num_processes", "2", "--process_id", "0"]
    )  # fmt: skip
    assert (args.multihost, args.coordinator_address, args.num_processes, args.process_id) == (
        True,
        "h:1",
        2,
        0,
    )


def test_initialize_refuses_half_flags_before_touching_jax():
    with pytest.raises(ConfigError, match="go together"):
        multihost.initialize("127.0.0.1:1", None, 0)


class _Device(types.SimpleNamespace):
    def __hash__(self):
        return id(self)


def _sharding(rows_by_device):
    """A stand-in sharding: device (with process_index) -> the batch rows it holds."""
    index = {_Device(process_index=p): (slice(lo, hi), slice(None), slice(None))
             for p, lo, hi in rows_by_device}  # fmt: skip
    return types.SimpleNamespace(devices_indices_map=lambda shape: index)


def test_process_rows_follow_the_batch_sharding():
    # 2 processes x 2 devices on the data axis: process 0 holds rows 0-3, process 1 rows 4-7.
    two = _sharding([(0, 0, 2), (0, 2, 4), (1, 4, 6), (1, 6, 8)])
    assert train_lib.process_rows(two, 8) == {0: (0, 4), 1: (4, 8)}
    # A data axis inside each process (model parallel across them): both need every row.
    replicated = _sharding([(0, 0, 8), (1, 0, 8)])
    assert train_lib.process_rows(replicated, 8) == {0: (0, 8), 1: (0, 8)}
    with pytest.raises(ConfigError, match="not contiguous"):
        train_lib.process_rows(_sharding([(0, 0, 2), (1, 2, 4), (0, 4, 6), (1, 6, 8)]), 8)


@pytest.fixture
def fake_shards(monkeypatch):
    """`setup.train_dataset` replaced by numbered lists: shard s of S yields lists whose
    `encoder_input_tokens` hold (shard, position) in order."""
    import tensorflow as tf

    def fake(task, lengths, batch_size, seed, shard=None, num_shards=None):
        numbers = tf.data.Dataset.range(10_000).map(
            lambda i: {"encoder_input_tokens": tf.stack([tf.cast(shard, tf.int64), i])}
        )
        return numbers.batch(batch_size, drop_remainder=True)

    monkeypatch.setattr(setup, "train_dataset", fake)


def _stream(rows, shards):
    return setup.TrainStream("task", {}, 8, 0, shards, rows)


@pytest.mark.parametrize("shards", [1, 2, 8])
@pytest.mark.parametrize("processes", [1, 2, 4])
def test_global_batches_depend_on_data_shards_not_processes(fake_shards, shards, processes):
    per_process = 8 // processes
    rows = {p: (p * per_process, (p + 1) * per_process) for p in range(processes)}
    streams = {p: _stream(rows[p], shards) for p in rows}
    one = _stream((0, 8), shards)
    for step in range(3):
        together = np.concatenate([next(streams[p])["encoder_input_tokens"] for p in sorted(rows)])
        expected = next(one)["encoder_input_tokens"]
        np.testing.assert_array_equal(together, expected)
        # Row r of the step is shard r // (8 / S)'s next list.
        per_shard = 8 // shards
        np.testing.assert_array_equal(expected[:, 0], np.arange(8) // per_shard)
        np.testing.assert_array_equal(expected[:, 1], step * per_shard + np.arange(8) % per_shard)
    # Each shard's position is written by exactly one process: the first that reads it.
    writers = [train_lib._data_writer_shards(rows, 8, shards, p) for p in sorted(rows)]
    assert sorted(s for shard_list in writers for s in shard_list) == list(range(shards))
    for p, written in enumerate(writers):
        assert set(written) <= set(streams[p].shards)


def test_data_positions_resume_on_another_process_count(fake_shards, tmp_path):
    two = {0: _stream((0, 4), 2), 1: _stream((4, 8), 2)}
    for _ in range(3):
        for stream in two.values():
            next(stream)
    rows = {0: (0, 4), 1: (4, 8)}
    prefix = lambda shard: model_dir_lib.data_state_prefix(str(tmp_path), 3, shard, 2)  # noqa: E731
    (tmp_path / "data_state" / "3").mkdir(parents=True)
    for p, stream in two.items():
        stream.save(prefix, train_lib._data_writer_shards(rows, 8, 2, p))
    assert model_dir_lib.recorded_data_shards(str(tmp_path), 3) == 2
    one = _stream((0, 8), 2)
    one.restore(prefix)
    after = next(one)["encoder_input_tokens"]
    np.testing.assert_array_equal(after[:, 1], 3 * 4 + np.arange(8) % 4)  # step 4 of both shards
    for path in (tmp_path / "data_state" / "3").glob("data-00001-of-00002*"):
        path.unlink()
    with pytest.raises(CheckpointError, match="data-00001-of-00002: data position of shard 1"):
        _stream((0, 8), 2).restore(prefix)


def test_data_shards_of_a_resumed_run(tmp_path):
    step_dir = tmp_path / "data_state" / "6"
    step_dir.mkdir(parents=True)
    assert model_dir_lib.recorded_data_shards(str(tmp_path), 6) is None
    with pytest.raises(CheckpointError, match="data position for step 6 is missing"):
        train_lib._data_shards(str(tmp_path), 6, None)
    (step_dir / "data.index").write_text("")  # a one-shard run (every run before data shards)
    assert train_lib._data_shards(str(tmp_path), 6, None) == 1
    with pytest.raises(ConfigError, match="trained with data_shards=1"):
        train_lib._data_shards(str(tmp_path), 6, 2)
    (step_dir / "data.index").unlink()
    (step_dir / "data-00000-of-00004.index").write_text("")
    assert train_lib._data_shards(str(tmp_path), 6, None) == 4
    assert train_lib._data_shards(str(tmp_path), 0, None) == 1  # fresh, one process
    assert train_lib._data_shards(str(tmp_path), 0, 3) == 3
    with pytest.raises(ConfigError, match="at least 1"):
        train_lib._data_shards(str(tmp_path), 0, 0)


@pytest.mark.parametrize("processes", [1, 2, 3, 8, 20])
def test_rerank_splits_queries_into_contiguous_parts(processes):
    sizes = [100, 3, 50, 50, 1, 1, 1, 80, 20, 10, 5, 100]
    parts = [rerank.process_part(sizes, processes, i) for i in range(processes)]
    assert parts[0][0] == 0 and parts[-1][1] == len(sizes)
    for (_, last), (first, _) in zip(parts, parts[1:]):
        assert last == first  # contiguous, every query once
    if processes <= len(sizes):
        pairs = [sum(sizes[a:b]) for a, b in parts]
        assert max(pairs) <= sum(sizes) / processes + max(sizes)
