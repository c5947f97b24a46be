"""The path layer on a bucket (the loopback GCS emulator) and on local disk: same answers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from rankt5_jax.data import atomic, paths
from rankt5_jax.errors import ConfigError


@pytest.fixture(params=["local", "gs"])
def root(request, tmp_path, bucket):
    return str(tmp_path / "root") if request.param == "local" else bucket


def test_files_and_folders_behave_alike(root):
    paths.makedirs(paths.join(root, "a", "b"))
    with paths.open(paths.join(root, "a", "b", "x.txt"), "w") as handle:
        handle.write("one\ntwo\n")
    atomic.write_json(paths.join(root, "a", "y.json"), {"k": 1})
    with atomic.atomic_open(paths.join(root, "a", "z.bin"), "wb") as handle:
        handle.write(b"\x00\x01")
    assert paths.isdir(paths.join(root, "a")) and not paths.isfile(paths.join(root, "a"))
    assert paths.isfile(paths.join(root, "a", "y.json"))
    assert sorted(paths.listdir(paths.join(root, "a"))) == ["b", "y.json", "z.bin"]
    with paths.open(paths.join(root, "a", "b", "x.txt")) as handle:
        assert [line for line in handle] == ["one\n", "two\n"]
    with paths.open(paths.join(root, "a", "z.bin"), "rb") as handle:
        assert handle.read() == b"\x00\x01"
    with pytest.raises(FileExistsError):
        with atomic.atomic_open(paths.join(root, "a", "y.json"), "x") as handle:
            handle.write("no")
    with pytest.raises(FileNotFoundError):
        paths.open(paths.join(root, "missing.txt"), "rb").read()
    assert not paths.exists(paths.join(root, "missing.txt"))
    # an exception inside the block leaves the old content
    with pytest.raises(RuntimeError):
        with atomic.atomic_open(paths.join(root, "a", "y.json"), "w") as handle:
            handle.write('{"k": 2, "half')
            raise RuntimeError("writer failed")
    with paths.open(paths.join(root, "a", "y.json")) as handle:
        assert handle.read() == '{"k": 1}'
    atomic.copy_file(paths.join(root, "a", "y.json"), paths.join(root, "c.json"))
    assert paths.open(paths.join(root, "c.json")).read() == '{"k": 1}'
    paths.remove(paths.join(root, "c.json"))
    assert not paths.exists(paths.join(root, "c.json"))
    paths.rmtree(paths.join(root, "a"))
    assert not paths.exists(paths.join(root, "a", "y.json"))


def test_join_dirname_abspath_of_bucket_paths():
    assert paths.join("gs://b/m", "checkpoints", "3") == "gs://b/m/checkpoints/3"
    assert paths.dirname("gs://b/m/spec.json") == "gs://b/m"
    assert paths.basename("gs://b/m/") == "m"
    assert paths.abspath("gs://b/m/") == "gs://b/m"
    assert paths.is_remote("gs://b") and not paths.is_remote("/tmp/x")
    assert not paths.is_remote("file:///tmp/x") and not paths.is_remote("irds:msmarco")


def test_unknown_scheme_is_one_line_naming_the_path():
    with pytest.raises(ConfigError, match=r"^s3://b/x: unknown storage scheme s3://") as err:
        paths.open("s3://b/x")
    assert "\n" not in str(err.value)


def test_missing_bucket_and_object(gcs):
    assert not paths.exists("gs://no-such-bucket/x")
    with pytest.raises(FileNotFoundError):
        paths.open("gs://no-such-bucket/x", "rb").read()
    with pytest.raises(FileNotFoundError):
        paths.listdir("gs://test-bucket/nothing-here")


def test_the_guard_refuses_connections_off_loopback(gcs, no_remote_connections):
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("192.0.2.1", 443), timeout=0.5)  # TEST-NET-1
    assert no_remote_connections.refused[-1].startswith("('192.0.2.1'")
    no_remote_connections.refused.pop()  # expected here; the fixture fails on any other


_WRITER = """
import sys, time
from rankt5_jax.data import atomic
with atomic.atomic_open(sys.argv[1], "wb") as handle:
    for _ in range(int(sys.argv[2])):
        handle.write(b"x" * (1 << 20))
        handle.flush()
        time.sleep(float(sys.argv[3]))
    print("written", flush=True)
"""


@pytest.mark.parametrize("when", ["writing", "uploading"])
def test_killed_writer_leaves_no_object_taken_for_complete(bucket, when):
    """SIGKILL while the bytes are written (the object is absent) and while the upload runs
    (absent, or whole if the upload had finished: never a part)."""
    target = paths.join(bucket, f"big-{when}.bin")
    megabytes, pause = (100, "0.05") if when == "writing" else (48, "0")
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, target, str(megabytes), pause],
        stdout=subprocess.PIPE,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    if when == "writing":
        time.sleep(2)  # inside 5 s of writes
    else:
        assert proc.stdout.readline() == b"written\n"  # the upload starts now
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if when == "writing":
        assert not paths.exists(target), "a writer killed while writing left an object"
    elif paths.exists(target):
        assert paths.filesystem(target).size(target) == megabytes << 20, "a half object"
    # a complete write is then found whole
    subprocess.run(
        [sys.executable, "-c", _WRITER, target, "3", "0"], check=True, capture_output=True
    )
    with paths.open(target, "rb") as handle:
        assert handle.read() == b"x" * (3 << 20)


def test_a_write_into_a_missing_bucket_is_one_line(gcs):
    with pytest.raises(paths.StorageError, match=r"^gs://no-such-bucket/x\.json: cannot upload"):
        atomic.write_json("gs://no-such-bucket/x.json", {})


def test_an_epath_made_before_configure_does_not_send_gs_to_tensorflow(gcs, monkeypatch):
    """etils.epath caches, at the first Path of any path, whether `gs://` goes to TensorFlow's
    GCS client (which no emulator can serve): JAX's compilation cache makes such a Path before
    any bucket is touched. `configure` makes orbax's epath take gcsfs all the same."""
    from etils import epath
    from etils.epath import backend, gpath

    monkeypatch.delenv("EPATH_USE_TF")
    gpath._is_tf_installed.cache_clear()
    epath.Path("/tmp")  # the choice is made now, TensorFlow installed: its GCS client
    assert gpath._is_tf_installed()
    paths.configure()
    assert epath.Path("gs://test-bucket/x")._backend is backend.fsspec_backend
