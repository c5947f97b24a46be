"""The one atomic write: a killed writer never leaves a half file that a reader takes as whole."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from rankt5_jax.data import atomic

# A writer that writes the target in 64 KiB pieces, says so after the first, and waits to be
# killed in the middle of the file.
_WRITER = """
import sys, time
from rankt5_jax.data import atomic
path, size = sys.argv[1], int(sys.argv[2])
with atomic.atomic_open(path, "wb") as handle:
    for i in range(size // 65536):
        handle.write(bytes([i % 251]) * 65536)
        handle.flush()
        if i == 0:
            print("started", flush=True)
        time.sleep(0.01)
print("done", flush=True)
"""


def _kill_mid_write(path, size=16 << 20):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path), str(size)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout.readline().strip() == "started"
    time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return proc.pid


def test_killed_writer_leaves_no_target(tmp_path):
    path = tmp_path / "run.txt"
    pid = _kill_mid_write(path)
    assert not path.exists()
    partial = tmp_path / f"run.txt.{pid}.tmp"
    assert partial.exists() and partial.stat().st_size > 0  # the killed writer wrote only here
    assert atomic.is_partial(partial.name)


def test_killed_writer_keeps_the_old_content(tmp_path):
    path = tmp_path / "spec.json"
    atomic.write_json(str(path), {"old": True}, indent=2)
    _kill_mid_write(path)
    assert json.loads(path.read_text()) == {"old": True}


def test_a_finished_write_replaces_and_leaves_nothing_behind(tmp_path):
    path = tmp_path / "a.json"
    atomic.write_json(str(path), {"b": 1, "a": [1, 2]}, indent=1, sort_keys=True, end="\n")
    assert path.read_text() == json.dumps({"a": [1, 2], "b": 1}, indent=1, sort_keys=True) + "\n"
    atomic.write_json(str(path), [3])
    assert path.read_text() == "[3]"
    assert os.listdir(tmp_path) == ["a.json"]


def test_an_exception_discards_the_partial_file(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic.atomic_open(str(path), "w") as handle:
            handle.write("new, half")
            raise RuntimeError("boom")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_path_writers_and_copies(tmp_path):
    array = np.arange(12, dtype=np.int32).reshape(3, 4)
    target = tmp_path / "codes.npy"
    with atomic.atomic_path(str(target), suffix=".npy") as tmp:
        assert tmp.endswith(".npy") and os.path.dirname(tmp) == str(tmp_path)
        np.save(tmp, array)  # numpy keeps a path that ends in .npy as it is
    np.testing.assert_array_equal(np.load(target), array)
    copy = tmp_path / "copy.npy"
    atomic.copy_file(str(target), str(copy))
    assert copy.read_bytes() == target.read_bytes()
    # partial_path + commit: the two halves of atomic_path
    tmp = atomic.partial_path(str(tmp_path / "shard"))
    with open(tmp, "w") as handle:
        handle.write("records")
    assert not (tmp_path / "shard").exists()
    atomic.commit(tmp, str(tmp_path / "shard"))
    assert (tmp_path / "shard").read_text() == "records"
    assert sorted(os.listdir(tmp_path)) == ["codes.npy", "copy.npy", "shard"]


def test_modes_and_partial_names(tmp_path):
    path = tmp_path / "x.bin"
    with atomic.atomic_open(str(path), "xb") as handle:
        handle.write(b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    with pytest.raises(FileExistsError):
        with atomic.atomic_open(str(path), "xb"):
            pass
    with pytest.raises(ValueError, match="mode 'a'"):
        with atomic.atomic_open(str(path), "a"):
            pass
    # per_process=False: one fixed temporary name, which a rerun overwrites
    fixed = atomic.partial_path(str(tmp_path / "shard.json"), per_process=False)
    assert fixed == str(tmp_path / "shard.json.tmp") and atomic.is_partial("shard.json.tmp")
    with open(fixed, "w") as handle:
        handle.write("left by a killed writer")
    atomic.write_json(str(tmp_path / "shard.json"), {"a": 1}, per_process=False)
    assert json.loads((tmp_path / "shard.json").read_text()) == {"a": 1}
    assert not os.path.exists(fixed)
    assert atomic.is_partial("meta.json.123.tmp")
    assert atomic.is_partial("vectors.npy.77.tmp.npy")
    assert not atomic.is_partial("meta.json")
    assert not atomic.is_partial("train.tfrecord-00000-of-00001")
