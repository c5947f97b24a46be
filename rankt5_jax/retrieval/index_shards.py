"""One shard of the token index being written: chunk logs, commits, resume, finalization.

Each chunk is appended to the shard's log files (`*.bin`, `docs.log`), flushed and fsynced, and
only then recorded in `progress.json` (written atomically). Opening a shard again cuts every log
back to the sizes `progress.json` records (a killed chunk's bytes go). Finalizing sorts the logs
by inverted list into the `.npy` files `token_index` documents, each written to a temporary name
and renamed, and writes `shard.json` last; the logs are deleted after it.
"""

from __future__ import annotations

import os
import signal
import sys

import numpy as np

from rankt5_jax.data import atomic
from rankt5_jax.errors import ConfigError
from rankt5_jax.retrieval.index_meta import (
    DOC_IDS_FILE,
    PROGRESS_FILE,
    SHARD_FILE,
    IndexMeta,
    ShardMeta,
    read_json,
    write_json,
    write_npy,
)

# Fault injection for the kill-and-resume tests: "chunk:N" kills the process (SIGKILL) after
# the N-th chunk of this run is appended and fsynced but before it is recorded; "finalize:N"
# kills it in the N-th shard finalization, after its codes are renamed into place.
FAULT_ENV = "RANKT5_FAULT_KILL_INDEX"


def fault(stage: str, count: int) -> None:
    """SIGKILLs this process when `FAULT_ENV` names this stage and count (tests only)."""
    if os.environ.get(FAULT_ENV) == f"{stage}:{count}":
        print(f"{FAULT_ENV}: killing the build at {stage} {count}", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)


class ShardWriter:
    """Appends chunks to one shard's logs; commits, resumes and finalizes them."""

    def __init__(self, folder: str, meta: IndexMeta, shard: int, passages: int, exact: bool):
        self.folder = folder
        self.shard = shard
        self.passages = passages  # of this shard
        self.exact = exact
        self.dim = meta.dim
        self.code_size = meta.settings.code_size
        self.nlist = meta.settings.nlist
        self.logs = ["docs.log", "codes.bin", "lists.bin", "doc_index.bin"]
        if exact:
            self.logs.append("vectors.bin")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, PROGRESS_FILE)
        self.state = (
            read_json(path)
            if os.path.isfile(path)
            else {"chunks": 0, "passages": 0, "tokens": 0, "bytes": {}}
        )
        # Cut every log back to what progress.json recorded (a killed chunk's bytes go).
        for name in self.logs:
            log = os.path.join(folder, name)
            size = self.state["bytes"].get(name, 0)
            with open(log, "ab") as handle:
                if handle.tell() < size:
                    raise ConfigError(f"{log} is shorter than {path} records: delete the shard")
                handle.truncate(size)

    @property
    def done_chunks(self) -> int:
        return self.state["chunks"]

    def append(self, docids, vectors: np.ndarray, lengths: np.ndarray, lists, codes) -> None:
        first = self.state["passages"]
        doc_index = np.repeat(np.arange(first, first + len(docids), dtype=np.int32), lengths)
        parts = {
            "docs.log": "".join(f"{d}\n" for d in docids).encode("utf-8"),
            "codes.bin": codes.astype(np.uint8).tobytes(),
            "lists.bin": lists.astype(np.int32).tobytes(),
            "doc_index.bin": doc_index.tobytes(),
        }
        if self.exact:
            parts["vectors.bin"] = vectors.astype(np.float32).tobytes()
        for name, data in parts.items():
            with open(os.path.join(self.folder, name), "ab") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        self._pending = (len(docids), int(lengths.sum()))

    def commit(self) -> None:
        added, tokens = self._pending
        self.state = {
            "chunks": self.state["chunks"] + 1,
            "passages": self.state["passages"] + added,
            "tokens": self.state["tokens"] + tokens,
            "bytes": {n: os.path.getsize(os.path.join(self.folder, n)) for n in self.logs},
        }
        write_json(os.path.join(self.folder, PROGRESS_FILE), self.state)

    def finalize(self, count: int) -> dict:
        """Sorts the logs by inverted list into the final files; shard.json last."""
        folder = self.folder
        tokens = self.state["tokens"]
        lists = np.fromfile(os.path.join(folder, "lists.bin"), np.int32)
        order = np.argsort(lists, kind="stable")
        offsets = np.zeros(self.nlist + 1, np.int64)
        np.cumsum(np.bincount(lists, minlength=self.nlist), out=offsets[1:])
        del lists
        codes = np.fromfile(os.path.join(folder, "codes.bin"), np.uint8)
        codes = codes.reshape(tokens, self.code_size)
        write_npy(os.path.join(folder, "codes.npy"), codes[order])
        del codes
        fault("finalize", count)
        write_npy(os.path.join(folder, "list_offsets.npy"), offsets)
        doc_index = np.fromfile(os.path.join(folder, "doc_index.bin"), np.int32)
        write_npy(os.path.join(folder, "doc_index.npy"), doc_index[order])
        del doc_index
        if self.exact:
            self._sorted_vectors(order)
        source, target = os.path.join(folder, "docs.log"), os.path.join(folder, DOC_IDS_FILE)
        atomic.copy_file(source, target, per_process=False)
        files = ["codes.npy", "list_offsets.npy", "doc_index.npy", DOC_IDS_FILE]
        files += ["vectors.npy"] if self.exact else []
        summary = ShardMeta(
            shard=self.shard,
            passages=self.state["passages"],
            tokens=tokens,
            exact=self.exact,
            bytes={name: os.path.getsize(os.path.join(folder, name)) for name in files},
        )
        write_json(os.path.join(folder, SHARD_FILE), summary.to_json())
        for name in self.logs + [PROGRESS_FILE]:
            os.remove(os.path.join(folder, name))
        return summary

    def _sorted_vectors(self, order: np.ndarray, block: int = 1 << 16) -> None:
        """vectors.bin rows in `order`, gathered in blocks (bounded memory) into vectors.npy."""
        source = os.path.join(self.folder, "vectors.bin")
        tokens = len(order)
        rows = np.memmap(source, np.float32, "r", shape=(tokens, self.dim)) if tokens else None
        path = os.path.join(self.folder, "vectors.npy")
        with atomic.atomic_path(path, suffix=".npy", per_process=False) as tmp:
            out = np.lib.format.open_memmap(tmp, "w+", np.float32, (tokens, self.dim))
            for start in range(0, tokens, block):
                out[start : start + block] = rows[order[start : start + block]]
            out.flush()
            del out, rows
