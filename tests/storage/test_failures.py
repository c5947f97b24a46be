"""Failures a bucket brings, injected by a loopback proxy in front of the emulator: a transient
503 (retried with backoff by gcsfs, not by us), a lasting 503 and a 403 (one-line errors naming
the path, `rankt5` exits 2, nothing written half)."""

from __future__ import annotations

import asyncio as _asyncio
import http.client
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from rankt5_jax import cli
from rankt5_jax.data import atomic, paths


class _Proxy(ThreadingHTTPServer):
    """Forwards to the emulator; answers `faults` (first) or `always` instead where set."""

    daemon_threads = True

    def __init__(self, upstream: str):
        super().__init__(("127.0.0.1", 0), _Handler)
        host, port = upstream.rsplit("//", 1)[-1].split(":")
        self.upstream = (host, int(port))
        self.faults: list[int] = []
        self.always: int | None = None
        self.requests = 0
        self.lock = threading.Lock()

    def fault(self) -> int | None:
        with self.lock:
            self.requests += 1
            return self.faults.pop(0) if self.faults else self.always


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def _any(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        status = self.server.fault()
        if status is not None:
            data = json.dumps({"error": {"code": status, "message": "injected"}}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        upstream = http.client.HTTPConnection(*self.server.upstream, timeout=30)
        skip = {"host", "content-length", "connection", "transfer-encoding"}
        headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
        upstream.request(self.command, self.path, body, headers)
        response = upstream.getresponse()
        data = response.read()
        self.send_response(response.status)
        for key, value in response.getheaders():
            if key.lower() not in skip:
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        upstream.close()

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _any


async def _short_backoff(seconds: float) -> None:
    await _asyncio.sleep(seconds / 100)


@pytest.fixture
def proxy(gcs, monkeypatch):
    """The proxy; gcsfs talks to it (a fresh instance) for the test, to the emulator after.

    gcsfs' backoff between retries is cut a hundredfold meanwhile (its `asyncio.sleep`, in its
    retry module alone): the same retries in the same order, without the ~16 s a request that
    fails six times would wait (the lasting 503 waited ~34 s)."""
    import gcsfs
    import gcsfs.retry

    monkeypatch.setattr(gcsfs.retry, "asyncio", SimpleNamespace(sleep=_short_backoff))
    server = _Proxy(gcs)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    gcsfs.GCSFileSystem.clear_instance_cache()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{server.server_address[1]}")
    yield server
    server.shutdown()
    server.server_close()
    monkeypatch.undo()
    gcsfs.GCSFileSystem.clear_instance_cache()


def test_a_transient_503_is_retried_by_the_library(bucket, proxy):
    target = paths.join(bucket, "a.json")
    atomic.write_json(target, {"k": 1})
    proxy.faults = [503, 503]
    before = proxy.requests
    with paths.open(target) as handle:
        assert json.load(handle) == {"k": 1}
    assert proxy.requests - before >= 3  # two refused, then answered


def test_a_lasting_503_is_one_line_naming_the_path_and_writes_nothing(bucket, proxy):
    target = paths.join(bucket, "never.json")
    proxy.always = 503
    with pytest.raises(paths.StorageError) as err:
        atomic.write_json(target, {"k": 1})
    assert str(err.value).startswith(f"{target}: ") and "\n" not in str(err.value)
    proxy.always = None
    assert not paths.exists(target)


def test_a_refusal_is_one_line_and_exit_2(bucket, proxy, capsys):
    qrels = paths.join(bucket, "qrels.txt")
    with paths.open(qrels, "w") as handle:
        handle.write("q1 0 d1 1\n")
    proxy.always = 403
    with pytest.raises(paths.StorageError, match=rf"^{qrels}: Forbidden"):
        paths.open(qrels, "rb")
    assert cli.main(["evaluate", "--run", qrels, "--qrels", qrels]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"rankt5: error: {qrels}: Forbidden") and "\n" not in err
