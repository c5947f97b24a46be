"""Atomic file writes: a reader sees the old complete file or the new complete file, never half.

Every writer in the package goes through here. The bytes go to a temporary file in the target's
folder (same file system, so the rename is atomic), which is flushed and fsynced, renamed over the
target, and then the folder is fsynced so that the rename itself survives a power loss. A writer
killed at any point leaves the target as it was (absent, or the old complete content) plus at most
one temporary file, whose name `is_partial` recognises.

  with atomic_open(path, "w") as handle:        # any text or binary writes
      handle.write(...)
  write_json(path, value, indent=2)             # json.dump through atomic_open
  copy_file(source, path)                       # shutil.copyfile, atomically
  with atomic_path(path, suffix=".npy") as tmp:  # writers that want a path (faiss, np.save,
      np.save(tmp, array)                       # open_memmap, TFRecordWriter)

The temporary name is `{path}.{pid}.tmp{suffix}`: one per process, so several processes may write
the same target at once (the last rename wins, each complete). A writer that alone owns its files
and that a rerun repeats (the token index's shards, resumed after a kill) passes
`per_process=False` for `{path}.tmp{suffix}`, which the rerun overwrites rather than leaving the
killed process's file beside it. `partial_path` and `commit` are the two halves of `atomic_path`
for writers whose open and close lie in different places.

In a bucket (`gs://`, see `paths`) there is no rename, and none is needed: an object appears only
once its upload has completed (a single request, or a resumable upload that is finalised by its
last chunk), so a reader sees the old complete object or the new one. The temporary file is then
a local one (in `paths.cache_dir`), uploaded to the final name by `commit` in one upload; a writer
killed before or during that upload leaves no object, and never a half one.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from typing import IO, Any

from rankt5_jax.data import paths

_PARTIAL = re.compile(r"\.(\d+\.)?tmp(\.[A-Za-z0-9]+)?$")


def partial_path(path: str, suffix: str = "", *, per_process: bool = True) -> str:
    """The temporary file this process writes `path` through (`suffix`: e.g. ".npy" for numpy,
    which appends its own extension to a path without it). For a bucket path: a local file
    (`paths.cache_dir`) that `commit` uploads."""
    if paths.is_remote(path):
        folder = paths.cache_dir(paths.dirname(path), "staging")
        path = os.path.join(folder, paths.basename(path))
    return f"{path}.{os.getpid()}.tmp{suffix}" if per_process else f"{path}.tmp{suffix}"


def is_partial(name: str) -> bool:
    """True for the name of a temporary file left by an interrupted atomic write."""
    return bool(_PARTIAL.search(name))


def fsync_dir(folder: str) -> None:
    """Makes a rename or a new file in `folder` durable (no-op where folders cannot be opened)."""
    try:
        handle = os.open(folder or ".", os.O_RDONLY)
    except OSError:  # pragma: no cover (platforms without directory handles)
        return
    try:
        os.fsync(handle)
    except OSError:  # pragma: no cover (file systems that refuse fsync on folders)
        pass
    finally:
        os.close(handle)


def _fsync_file(path: str) -> None:
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def commit(tmp: str, path: str) -> None:
    """fsyncs the finished temporary file `tmp`, renames it to `path`, fsyncs the folder; for a
    bucket path, uploads `tmp` to `path` (one object upload) and removes it."""
    if paths.is_remote(path):
        try:
            paths.upload(tmp, path)
        finally:
            discard(tmp)
        return
    _fsync_file(tmp)
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(path))


def discard(tmp: str) -> None:
    """Removes an unfinished temporary file, if any."""
    with contextlib.suppress(FileNotFoundError):
        os.remove(tmp)


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = "", *, per_process: bool = True) -> Iterator[str]:
    """Yields a temporary path to write; on a normal exit it becomes `path` (`commit`), on an
    exception it is removed and `path` stays as it was."""
    tmp = partial_path(path, suffix, per_process=per_process)
    try:
        yield tmp
    except BaseException:
        discard(tmp)
        raise
    commit(tmp, path)


@contextlib.contextmanager
def atomic_open(
    path: str, mode: str = "w", *, per_process: bool = True, **kwargs: Any
) -> Iterator[IO]:
    """`open(path, mode)` whose content appears at `path` only once the block ends without an
    exception (`mode` "w", "wb", "x" or "xb"; `kwargs` go to `open`)."""
    if not mode.startswith(("w", "x")):
        raise ValueError(f"atomic_open writes a new file; mode {mode!r} is not 'w' or 'x'")
    if mode.startswith("x") and paths.exists(path):
        raise FileExistsError(path)
    with atomic_path(path, per_process=per_process) as tmp:
        with open(tmp, "w" + mode[1:], **kwargs) as handle:
            yield handle
            handle.flush()


def write_json(
    path: str, value: Any, end: str = "", *, per_process: bool = True, **dump_kwargs: Any
) -> None:
    """`json.dump(value, ..., **dump_kwargs)` then `end`, atomically."""
    with atomic_open(path, "w", per_process=per_process) as handle:
        json.dump(value, handle, **dump_kwargs)
        handle.write(end)


def copy_file(source: str, path: str, *, per_process: bool = True) -> None:
    """Copies `source` to `path` atomically (either may be a bucket path)."""
    with atomic_path(path, per_process=per_process) as tmp:
        paths.copy(source, tmp)
