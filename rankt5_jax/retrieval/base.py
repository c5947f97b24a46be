"""The first stage's contract: a `Retriever` searches queries and returns a run.

    retriever = Retriever.load("index_dir")        # the backend the folder records (or gs://)
    run = retriever.search({"q1": "what is t5"}, k=100)   # {qid: {docid: score}}

A saved index directory says what it is: a BM25 index holds `rankt5_bm25.json`
(`retrieval.bm25`), a token index `index.json` (`retrieval.token_index`, searched by
`retrieval.xtr_retriever`). `Retriever.load` reads that and builds the backend, passing its
options on (an XTR index needs its encoder: a `Ranker`'s, or the checkpoint it records).

Adding a backend: a subclass with a `kind`, `search` and an `open(index_dir, **options)`
classmethod, in its own module, and one row of `BACKENDS` with the file that marks its index
directories.
"""

from __future__ import annotations

import abc
import importlib
import os
from collections.abc import Mapping
from typing import Any, ClassVar

from rankt5_jax.data import paths
from rankt5_jax.errors import ConfigError

Run = dict[str, dict[str, float]]

# kind -> (the file that marks its index directories, "module:class" of its backend)
BACKENDS: dict[str, tuple[str, str]] = {
    "bm25": ("rankt5_bm25.json", "rankt5_jax.retrieval.bm25:BM25Retriever"),
    "xtr": ("index.json", "rankt5_jax.retrieval.xtr_retriever:XTRRetriever"),
}


def local_index(index_dir: str | os.PathLike) -> str:
    """The local folder to open the index `index_dir` from: `index_dir` itself when local; for
    a bucket path (`gs://`), a copy on this host (`paths.local_tree`: downloaded once into
    `$TMPDIR/rankt5-index/<digest>`, named by the objects' generations, so a rebuilt index is
    downloaded anew and a second run downloads nothing). Nothing there: a one-line
    `ConfigError`."""
    folder = os.fspath(index_dir)
    if not paths.is_remote(folder):
        return folder
    try:
        return paths.local_tree(folder, "index")
    except FileNotFoundError:
        raise ConfigError(f"--index_dir {folder}: no index there") from None


def index_kind(index_dir: str | os.PathLike) -> str:
    """The kind of retriever whose index `index_dir` holds (a one-line `ConfigError` if none)."""
    folder = os.fspath(index_dir)
    if not os.path.isdir(folder):
        raise ConfigError(f"--index_dir {folder}: no such folder")
    for kind, (marker, _) in BACKENDS.items():
        if os.path.isfile(os.path.join(folder, marker)):
            return kind
    markers = ", ".join(f"{marker} ({kind})" for kind, (marker, _) in BACKENDS.items())
    raise ConfigError(f"--index_dir {folder} holds no index (none of {markers})")


def backend(kind: str) -> type[Retriever]:
    """The `Retriever` class of `kind`."""
    if kind not in BACKENDS:
        raise ConfigError(f"no retriever {kind!r}; known: {', '.join(BACKENDS)}")
    module, name = BACKENDS[kind][1].split(":")
    return getattr(importlib.import_module(module), name)


class Retriever(abc.ABC):
    """A first stage: `search(queries, k)` -> each query's top `k` documents with scores."""

    kind: ClassVar[str]

    @abc.abstractmethod
    def search(self, queries: Mapping[str, str], k: int = 1000) -> Run:
        """`{qid: text}` -> `{qid: {docid: score}}`, at most `k` documents per query (every
        query present, `{}` where nothing was found)."""

    @classmethod
    def load(cls, index_dir: str | os.PathLike, **options: Any) -> Retriever:
        """The retriever of the index saved in `index_dir`. Called on `Retriever`, the index's
        recorded kind picks the backend; on a backend, the folder must hold that kind. A bucket
        index (`gs://`) is opened from its copy on this host (`local_index`)."""
        folder = local_index(index_dir)
        kind = index_kind(folder)
        found = backend(kind)
        if not issubclass(found, cls):
            raise ConfigError(f"{os.fspath(index_dir)} holds a {kind} index, not {cls.kind}")
        return found.open(folder, **options)

    @classmethod
    @abc.abstractmethod
    def open(cls, index_dir: str, **options: Any) -> Retriever:
        """The backend's constructor from its index directory (`load` calls it)."""
