"""The re-ranking journal: finished chunks of scores on disk, so a killed re-ranking resumes.

The token index's pattern (`retrieval/token_index.py`), for scores: each process appends a
finished chunk's float32 scores to its log (`scores.p<I>.f32`), flushes and fsyncs it, and only
then records the chunk in its `progress.p<I>.json` (written atomically, `data.atomic`). A
rerun cuts the log back to the size `progress` records (the bytes of a chunk killed before it
was recorded go) and continues with the next chunk; the chunks are the same (they follow from
the input and the settings alone), so the final run is byte-identical to an uninterrupted one.

    <journal>/settings.p<I>.json   what the scores depend on (checkpoint, model, top_k, ...);
                                   a rerun with other settings is refused naming the setting
    <journal>/scores.p<I>.f32      the finished chunks' scores, float32, in candidate order
    <journal>/progress.p<I>.json   {"chunks": n, "pairs": p, "bytes": b}, written after the data

One set of files per JAX process (`I`; the process count is a setting). SIGTERM (what
preemption sends) finishes the current chunk, records it, and stops (`Stopped`, exit status
`STOPPED_EXIT` in the CLI).

A journal of a bucket output (`gs://...`: objects cannot be appended to or fsynced) is kept on
this host instead, in `$TMPDIR/rankt5-journal/<sha1 of the path>` (`local_folder`): the same
command on the same host resumes from it; another host starts over.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from rankt5_jax.data import atomic, paths
from rankt5_jax.errors import ConfigError, RankT5Error
from rankt5_jax.retrieval.index_meta import read_json  # the token index's reader

# 128 + SIGTERM, as a shell reports a process that SIGTERM ended: "stopped, not finished".
STOPPED_EXIT = 143
# Fault injection for the kill-and-resume tests: "chunk:N" SIGKILLs the process after the N-th
# chunk of this call is appended and fsynced but before it is recorded.
FAULT_ENV = "RANKT5_FAULT_KILL_RERANK"


class Stopped(RankT5Error):
    """The re-ranking stopped on SIGTERM after recording a chunk; a rerun continues it."""


def changed_settings(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """`key: old -> new` for every setting that differs (as `rankt5 sweep` names them)."""
    return [
        f"{key}: {old.get(key)!r} -> {new.get(key)!r}"
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key)
    ]


def _normalise(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Settings as they read back from JSON (tuples become lists), so reruns compare equal."""
    return json.loads(json.dumps(dict(settings), sort_keys=True, default=str))


class Journal:
    """One process's journal in `folder` (made if missing).

    Args:
      folder: the journal folder (`rankt5 rerank`: `<output>.journal`).
      settings: what the scores depend on; checked against an existing journal's.
      process, processes: this JAX process and their count (one set of files each).
    """

    def __init__(self, folder: str, settings: Mapping[str, Any], process: int, processes: int):
        folder = self.folder = local_folder(folder)
        self.process = process
        settings = _normalise({**settings, "processes": processes})
        os.makedirs(folder, exist_ok=True)
        suffix = f"p{process}"
        self.settings_path = os.path.join(folder, f"settings.{suffix}.json")
        self.scores_path = os.path.join(folder, f"scores.{suffix}.f32")
        self.progress_path = os.path.join(folder, f"progress.{suffix}.json")
        if os.path.isfile(self.settings_path):
            changed = changed_settings(read_json(self.settings_path), settings)
            if changed:
                raise ConfigError(
                    f"{folder} journals a re-ranking with other settings ({'; '.join(changed)}): "
                    "rerun with the same settings to continue it, or remove that folder"
                )
        else:
            atomic.write_json(self.settings_path, settings, indent=1, sort_keys=True)
        self.state = (
            read_json(self.progress_path)
            if os.path.isfile(self.progress_path)
            else {"chunks": 0, "pairs": 0, "bytes": 0}
        )
        # Cut the log back to what progress records (a killed chunk's bytes go).
        with open(self.scores_path, "ab") as handle:
            if handle.tell() < self.state["bytes"]:
                raise ConfigError(
                    f"{self.scores_path} is shorter than {self.progress_path} records: remove "
                    f"{folder} and rerun"
                )
            handle.truncate(self.state["bytes"])
        self.appended = 0

    @property
    def done_chunks(self) -> int:
        return int(self.state["chunks"])

    def scores(self) -> np.ndarray:
        """The recorded chunks' scores (float32, in candidate order)."""
        count = self.state["bytes"] // 4
        return np.fromfile(self.scores_path, np.float32, count=count)

    def record(self, scores: np.ndarray) -> None:
        """Appends one finished chunk's scores (fsynced), then records it."""
        data = np.asarray(scores, np.float32)
        with open(self.scores_path, "ab") as handle:
            handle.write(data.tobytes())
            handle.flush()
            os.fsync(handle.fileno())
        self.appended += 1
        if os.environ.get(FAULT_ENV) == f"chunk:{self.appended}":
            print(f"{FAULT_ENV}: killing the re-ranking", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        self.state = {
            "chunks": self.state["chunks"] + 1,
            "pairs": self.state["pairs"] + int(data.size),
            "bytes": self.state["bytes"] + data.nbytes,
        }
        atomic.write_json(self.progress_path, self.state, sort_keys=True)

    def remove(self) -> None:
        """Removes this process's files, and the folder once it is empty."""
        discard(self.folder, self.process)


def local_folder(folder: str) -> str:
    """Where the journal `folder` is kept: `folder` itself when local; for a bucket path a
    folder of this host named after it (the same for every process, so a rerun resumes)."""
    folder = os.fspath(folder)
    if not paths.is_remote(folder):
        return folder
    digest = hashlib.sha1(folder.encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), "rankt5-journal", digest)


def discard(folder: str, process: int) -> None:
    """Removes process `process`'s journal files in `folder`, and the folder once it is empty
    (the last process to finish removes it)."""
    folder = local_folder(folder)
    for name in ("scores", "progress", "settings"):
        for path in glob.glob(os.path.join(folder, f"{name}.p{process}.*")):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
    with contextlib.suppress(OSError):  # other processes' files may still be there
        os.rmdir(folder)


class StopSignal:
    """While active, SIGTERM sets `requested` instead of ending the process (main thread only;
    elsewhere SIGTERM keeps its handler)."""

    def __init__(self) -> None:
        self.requested = False

    @contextlib.contextmanager
    def active(self) -> Iterator[StopSignal]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return

        def handle(signum, frame):  # noqa: ARG001
            self.requested = True
            print(
                "rankt5: SIGTERM: finishing the current chunk, then stopping",
                file=sys.stderr,
                flush=True,
            )

        previous = signal.signal(signal.SIGTERM, handle)
        try:
            yield self
        finally:
            signal.signal(signal.SIGTERM, previous)
