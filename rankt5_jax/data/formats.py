"""Readers and writers for IR files: corpus, queries, qrels, runs.

Formats (DESIGN section 3):
  corpus   BEIR `corpus.jsonl` (`_id`, `title`, `text`) or TSV `docid<TAB>text[<TAB>title]`
  queries  BEIR `queries.jsonl` (`_id`, `text`) or TSV `qid<TAB>text`
  qrels    TREC `qid 0 docid rel` or BEIR TSV with a header `query-id corpus-id score`
  runs     TREC `qid Q0 docid rank score tag`

Every malformed line raises `InputFormatError` naming the file and line, unless `strict=False`,
where the line is skipped and counted in the returned `Skips` (callers report them). Nothing is
dropped silently.

Every reader also takes `irds:ID` (e.g. `irds:beir/scifact/test`) in place of a path: the
corpus, queries, qrels or run (scoreddocs) of an `ir_datasets` dataset, streamed through
`data/irds.py` (the `irds` extra): `read_queries`, `read_qrels`, `read_run`, `Corpus`,
`iter_corpus` (streams ir_datasets' docs iterator) and `run_lines` (a run's lines, or the
dataset's scoreddocs as TREC lines numbered by record). `_lines` reads files only and refuses
an `irds:` id in one line.

The corpus is not held as Python objects: `Corpus` keeps a sorted docid array and byte offsets
(numpy, memory-mappable, cached beside the file) and reads documents on demand.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from rankt5_jax.data import atomic, irds, paths
from rankt5_jax.errors import ConfigError, InputFormatError
from rankt5_jax.evaluation.measures import rank_documents

T = TypeVar("T")


@dataclass
class Skips:
    """Counts of skipped lines by reason (with `strict=False`), and the first few examples."""

    counts: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def add(self, error: InputFormatError) -> None:
        self.counts[error.reason.split(":")[0]] += 1
        if len(self.examples) < 5:
            self.examples.append(str(error))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        if not self.total:
            return "no lines skipped"
        reasons = ", ".join(f"{n} {r}" for r, n in self.counts.most_common())
        return f"skipped {self.total} lines ({reasons}); first: {self.examples[0]}"


STDIN = "-"  # read from standard input wherever a file is read line by line
_BOM = b"\xef\xbb\xbf"  # UTF-8 byte-order mark (Windows editors write it): skipped


def _open_lines(path: str):
    if path == STDIN:
        return open(sys.stdin.fileno(), "rb", closefd=False)
    return paths.open(path, "rb")  # a bucket object is streamed in blocks


def _lines(path: str) -> Iterator[tuple[int, int, str]]:
    """Yields (line number, byte offset, text) of non-blank lines of a file (`-`: stdin); checks
    existence, UTF-8, emptiness. A UTF-8 byte-order mark at the start is skipped."""
    if irds.is_irds(path):
        raise InputFormatError(
            path, None, "an ir_datasets id where a file is read line by line: give a file here"
        )
    if paths.isdir(path):
        raise InputFormatError(path, None, "is a directory, not a file")
    if path != STDIN and not paths.exists(path):  # pipes and /dev/stdin are read as they are
        raise InputFormatError(path, None, "file not found")
    seen = False
    offset = 0
    with _open_lines(path) as handle:
        for number, raw in enumerate(handle, start=1):
            if number == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM) :]
                offset = len(_BOM)
            start = offset
            offset += len(raw)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise InputFormatError(path, number, f"invalid UTF-8 ({err.reason})") from err
            text = text.rstrip("\r\n")
            if not text.strip():
                continue
            seen = True
            yield number, start, text
    if not seen:
        raise InputFormatError(path, None, "file is empty")


def run_lines(path: str) -> Iterator[tuple[int, int, str]]:
    """`_lines` of a run file, or for `irds:ID` the dataset's scoreddocs as TREC run lines
    (`qid Q0 docid rank score irds`, numbered by record, offset 0)."""
    if not irds.is_irds(path):
        yield from _lines(path)
        return
    seen = False
    for number, (qid, docid, score) in enumerate(irds.iter_scoreddocs(path), start=1):
        seen = True
        yield number, 0, f"{qid} Q0 {docid} {number} {score!r} irds"
    if not seen:
        raise InputFormatError(path, None, "the dataset's run (scoreddocs) is empty")


def iter_corpus(
    path: str, strict: bool = True, skips: Skips | None = None
) -> Iterator[tuple[int, str, str, str]]:
    """Streams `(line number, docid, title, text)` in file order, holding one line at a time,
    from corpus.jsonl, docid<TAB>text[<TAB>title] or `irds:ID` (ir_datasets' docs iterator;
    record numbers for line numbers). A malformed line raises `InputFormatError` naming file and
    line (with `strict=False` it is skipped and counted in `skips`). Duplicate ids are
    `Corpus`'s check, not this one's."""
    if irds.is_irds(path):
        for number, doc in enumerate(irds.iter_docs(path), start=1):
            yield (number, *doc)
        return
    jsonl = _is_jsonl(path) if paths.isfile(path) else None
    for number, _, text in _lines(path):
        if jsonl is None:  # a pipe or stdin: told by its first line
            jsonl = text.lstrip().startswith("{")
        try:
            ident, body, title = _parse_id_text(path, number, text, jsonl)
        except InputFormatError as err:
            if strict or skips is None:
                raise
            skips.add(err)
            continue
        yield number, ident, title, body


def _is_jsonl(path: str) -> bool:
    if path.endswith((".jsonl", ".json")):
        return True
    with paths.open(path, "rb") as handle:
        head = handle.read(64)
    return head.removeprefix(_BOM).lstrip().startswith(b"{")


def _parse_id_text(path: str, number: int, text: str, jsonl: bool) -> tuple[str, str, str]:
    """-> (id, text, title) of one corpus/queries line."""
    if jsonl:
        try:
            record = json.loads(text)
        except json.JSONDecodeError as err:
            near = err.doc[max(0, err.pos - 20) : err.pos + 20]
            raise InputFormatError(
                path, number, f"invalid JSON: {err.msg} at column {err.colno} (near {near!r})"
            ) from err
        if not isinstance(record, dict) or "_id" not in record or "text" not in record:
            raise InputFormatError(path, number, "missing field: needs '_id' and 'text'")
        ident, body, title = str(record["_id"]), record["text"], record.get("title") or ""
        if not isinstance(body, str) or not isinstance(title, str):
            raise InputFormatError(path, number, "bad field: 'text' and 'title' must be strings")
    else:
        parts = text.split("\t")
        if len(parts) not in (2, 3):
            raise InputFormatError(
                path, number, f"wrong column count: expected id<TAB>text, got {len(parts)} columns"
            )
        ident, body = parts[0], parts[1]
        title = parts[2] if len(parts) == 3 else ""
    if not ident.strip():
        raise InputFormatError(path, number, "empty id")
    if not (body.strip() or title.strip()):
        raise InputFormatError(path, number, f"empty text for id {ident!r}")
    return ident.strip(), body, title


def read_queries(path: str, strict: bool = True, skips: Skips | None = None) -> dict[str, str]:
    """`{qid: text}` from queries.jsonl, qid<TAB>text or `irds:ID`."""
    if irds.is_irds(path):
        return dict(irds.iter_queries(path))
    jsonl = _is_jsonl(path) if paths.isfile(path) else None
    queries: dict[str, str] = {}
    for number, _, text in _lines(path):
        if jsonl is None:  # a pipe or stdin: told by its first line
            jsonl = text.lstrip().startswith("{")
        try:
            qid, body, _ = _parse_id_text(path, number, text, jsonl)
            if qid in queries:
                raise InputFormatError(path, number, f"duplicate id: query {qid!r} appears twice")
            queries[qid] = body
        except InputFormatError as err:
            if strict or skips is None:
                raise
            skips.add(err)
    return queries


def read_qrels(
    path: str, strict: bool = True, skips: Skips | None = None
) -> dict[str, dict[str, int]]:
    """`{qid: {docid: grade}}` from TREC qrels (`qid 0 docid rel`), BEIR TSV with header, or
    `irds:ID`."""
    qrels: dict[str, dict[str, int]] = {}
    if irds.is_irds(path):
        for qid, docid, grade in irds.iter_qrels(path):
            qrels.setdefault(qid, {})[docid] = grade
        if not qrels:
            raise InputFormatError(path, None, "the dataset's qrels are empty")
        return qrels
    beir = False
    for number, _, text in _lines(path):
        parts = text.split()
        try:
            if not qrels and not beir and parts[:2] == ["query-id", "corpus-id"]:
                beir = True  # BEIR TSV: header, then query-id corpus-id score
                continue
            if beir and len(parts) == 3:
                qid, docid, grade = parts
            elif not beir and len(parts) == 4:
                qid, _, docid, grade = parts
            else:
                expected = "query-id corpus-id score" if beir else "qid 0 docid rel"
                raise InputFormatError(
                    path,
                    number,
                    f"wrong column count: expected '{expected}', got {len(parts)} columns",
                )
            try:
                value = int(float(grade))
            except ValueError as err:
                raise InputFormatError(path, number, f"bad relevance {grade!r}") from err
            if float(grade) != value:
                raise InputFormatError(path, number, f"bad relevance {grade!r}: not an integer")
            qrels.setdefault(qid, {})[docid] = value
        except InputFormatError as err:
            if strict or skips is None:
                raise
            skips.add(err)
    return qrels


class MissingScoresError(InputFormatError):
    """A run without scores where scores are needed: never skipped, even when not strict."""


def parse_run_line(
    path: str, number: int, text: str, need_scores: str | None = None
) -> tuple[str, str, float]:
    """-> (qid, docid, score) of one run line; `InputFormatError` names file and line.

    TREC lines (`qid Q0 docid rank score tag`), or MS MARCO's `qid docid rank` (no score: the
    score is `-rank`, which keeps the order) unless `need_scores` says why scores are needed.
    """
    parts = text.split()
    if len(parts) == 3:
        if need_scores:
            raise MissingScoresError(
                path,
                number,
                f"this run has no scores ('qid docid rank' lines), but {need_scores}: give a "
                "TREC run 'qid Q0 docid rank score tag'",
            )
        qid, docid, rank = parts
        try:
            return qid, docid, -float(int(rank))
        except ValueError as err:
            raise InputFormatError(path, number, f"bad rank {rank!r}") from err
    if len(parts) != 6:
        raise InputFormatError(
            path,
            number,
            "wrong column count: expected 'qid Q0 docid rank score tag' (or MS MARCO's "
            f"'qid docid rank'), got {len(parts)}",
        )
    qid, _, docid, _, score, _ = parts
    try:
        value = float(score)
    except ValueError as err:
        raise InputFormatError(path, number, f"bad score {score!r}") from err
    if not np.isfinite(value):
        raise InputFormatError(path, number, f"bad score {score!r}: not finite")
    return qid, docid, value


def read_run(
    path: str,
    strict: bool = True,
    skips: Skips | None = None,
    known_queries: Mapping[str, object] | None = None,
    corpus: Corpus | None = None,
    need_scores: str | None = None,
) -> dict[str, dict[str, float]]:
    """`{qid: {docid: score}}` from a TREC run (or an MS MARCO `qid docid rank` run, scored
    `-rank`, unless `need_scores` gives the reason scores are needed; or `irds:ID`, the dataset's
    scoreddocs); checks ids against queries/corpus when given."""
    run: dict[str, dict[str, float]] = {}
    for number, _, text in run_lines(path):
        try:
            qid, docid, value = parse_run_line(path, number, text, need_scores)
            if known_queries is not None and qid not in known_queries:
                raise InputFormatError(path, number, f"unknown query id {qid!r}")
            if corpus is not None and docid not in corpus:
                raise InputFormatError(path, number, f"unknown document id {docid!r}")
            docs = run.setdefault(qid, {})
            if docid in docs:
                raise InputFormatError(
                    path, number, f"duplicate docid: {docid!r} appears twice for query {qid!r}"
                )
            docs[docid] = value
        except InputFormatError as err:
            if strict or skips is None or isinstance(err, MissingScoresError):
                raise
            skips.add(err)
    return run


def check_output_path(path: str) -> str:
    """Makes `path`'s folder (if missing) and checks it can be written, before any work."""
    if paths.isdir(path):
        raise ConfigError(f"output {path} is a directory; give a file path")
    check_output_dir(paths.dirname(paths.abspath(path)))
    return path


def check_output_dir(folder: str) -> str:
    """Makes the output folder `folder` (if missing) and checks it can be written, before any
    work; a file in the way is named (not "File exists"). In a bucket: the bucket must exist
    (folders there are made by writing under them)."""
    if paths.is_remote(folder):
        bucket = "/".join(folder.split("/", 3)[:3])
        if not paths.exists(bucket):
            raise ConfigError(f"cannot write to the output folder {folder}: no bucket {bucket}")
        return folder
    blocker = os.path.abspath(folder)
    while not os.path.exists(blocker) and os.path.dirname(blocker) != blocker:
        blocker = os.path.dirname(blocker)
    if os.path.exists(blocker) and not os.path.isdir(blocker):
        raise ConfigError(
            f"cannot create the output folder {folder}: {blocker} is a file, not a folder"
        )
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot create the output folder {folder}: {err.strerror}") from err
    if not os.access(folder, os.W_OK):
        raise ConfigError(f"cannot write to the output folder {folder}")
    return folder


def write_trec_run(path: str, run: Mapping[str, Mapping[str, float]], tag: str = "rankt5") -> None:
    """Writes a TREC run: per query, trec_eval order (score desc, docid desc), ranks 1..n.

    Scores are written with 9 significant digits, enough to round-trip float32 exactly.
    """
    # One temporary file per process: several may write the same run at once.
    with atomic.atomic_open(path, "w") as handle:
        for qid, doc_scores in run.items():
            for rank, docid in enumerate(rank_documents(doc_scores), start=1):
                handle.write(f"{qid} Q0 {docid} {rank} {doc_scores[docid]:.9g} {tag}\n")


class Corpus:
    """On-disk corpus with a sorted docid index; documents are read on demand.

    `Corpus("irds:ID")` gives an `IrdsCorpus` (same methods, through ir_datasets' docs store).

    The index (sorted docids as fixed-width bytes, with byte offsets) is built in one pass and
    cached as `<path>.idx.npz` (rebuilt when the corpus file is newer). Memory is the index only,
    about (longest docid + 8) bytes per document.

    Args:
      path: corpus.jsonl or docid<TAB>text[<TAB>title] file.
      strict: raise on malformed lines (else skip and count them in `skips`).
      include_title: prepend the title to the text.
    """

    def __new__(cls, path: str, *args, **kwargs):
        if cls is Corpus and irds.is_irds(path):
            return super().__new__(IrdsCorpus)
        return super().__new__(cls)

    def __init__(self, path: str, strict: bool = True, include_title: bool = True):
        if path == STDIN or (
            paths.exists(path) and not paths.isdir(path) and not paths.isfile(path)
        ):
            raise InputFormatError(
                path, None, "the corpus is read by random access: give a file, not a pipe"
            )
        self.path = path
        self.strict = strict
        self.include_title = include_title
        self.skips = Skips()
        self._jsonl = paths.isfile(path) and _is_jsonl(path)
        self._ids, self._offsets, self._lines = self._load_index()
        # In a bucket, small blocks: each lookup reads one document, not megabytes.
        small = {"block_size": 1 << 16} if paths.is_remote(path) else {}
        self._handle = paths.open(path, "rb", **small)

    def _load_index(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cache = f"{self.path}.idx.npz"
        if (
            self.strict
            and paths.isfile(cache)
            and paths.isfile(self.path)
            and paths.getmtime(cache) >= paths.getmtime(self.path)
        ):
            with paths.open(cache, "rb") as handle, np.load(handle) as data:
                return data["ids"], data["offsets"], data["lines"]
        ids, offsets, lines = [], [], []
        for number, offset, text in _lines(self.path):
            try:
                docid, _, _ = _parse_id_text(self.path, number, text, self._jsonl)
            except InputFormatError as err:
                if self.strict:
                    raise
                self.skips.add(err)
                continue
            ids.append(docid.encode("utf-8"))
            offsets.append(offset)
            lines.append(number)
        id_array = np.array(ids, dtype=bytes)
        order = np.argsort(id_array, kind="stable")
        id_array = id_array[order]
        dup = np.nonzero(id_array[1:] == id_array[:-1])[0]
        if dup.size:
            first = order[dup[0] + 1]
            err = InputFormatError(
                self.path, lines[first], f"duplicate id: document {ids[first].decode()!r}"
            )
            raise err
        offset_array = np.asarray(offsets, np.int64)[order]
        line_array = np.asarray(lines, np.int64)[order]
        if self.strict:
            try:  # written aside, then renamed: processes reading it meanwhile see none or all
                with atomic.atomic_path(cache, suffix=".npz") as partial:
                    np.savez(partial, ids=id_array, offsets=offset_array, lines=line_array)
            except OSError:
                pass  # read-only location: the index stays in memory
        return id_array, offset_array, line_array

    def __len__(self) -> int:
        return len(self._ids)

    def _find(self, docid: str) -> int:
        key = docid.encode("utf-8")
        pos = int(np.searchsorted(self._ids, key))
        if pos < len(self._ids) and self._ids[pos] == key:
            return pos
        return -1

    def __contains__(self, docid: object) -> bool:
        return isinstance(docid, str) and self._find(docid) >= 0

    def get(self, docid: str) -> tuple[str, str]:
        """-> (title, text) of a document; KeyError if unknown."""
        pos = self._find(docid)
        if pos < 0:
            raise KeyError(docid)
        self._handle.seek(int(self._offsets[pos]))
        line = self._handle.readline().decode("utf-8").rstrip("\r\n")
        _, body, title = _parse_id_text(self.path, int(self._lines[pos]), line, self._jsonl)
        return title, body

    def text(self, docid: str) -> str:
        """The document as the model reads it: `title text` (title when present and enabled)."""
        title, body = self.get(docid)
        return f"{title} {body}".strip() if self.include_title and title else body

    def ids(self) -> Iterator[str]:
        for raw in self._ids:
            yield raw.decode("utf-8")

    def close(self) -> None:
        self._handle.close()


class IrdsCorpus(Corpus):
    """A `Corpus` over an `irds:ID` dataset: lookups through ir_datasets' `docs_store()`."""

    def __init__(self, path: str, strict: bool = True, include_title: bool = True):
        self.path = path
        self.strict = strict
        self.include_title = include_title
        self.skips = Skips()
        self._store = irds.DocStore(path)

    def __len__(self) -> int:
        return len(self._store)

    def __contains__(self, docid: object) -> bool:
        return docid in self._store

    def get(self, docid: str) -> tuple[str, str]:
        return self._store.get(docid)

    def ids(self) -> Iterator[str]:
        return self._store.ids()

    def close(self) -> None:
        pass


def prefetch(items: Iterator[T], depth: int = 1, name: str = "rankt5-prefetch") -> Iterator[T]:
    """Yields `items`, produced by a background thread up to `depth` items ahead (so host work
    such as reading and tokenizing overlaps the device's scoring); re-raises its errors here."""
    slots: queue.Queue = queue.Queue(maxsize=depth)
    done = object()

    def produce():
        try:
            for item in items:
                slots.put((None, item))
        except BaseException as error:  # noqa: BLE001 (handed to the consumer)
            slots.put((error, None))
            return
        slots.put((None, done))

    threading.Thread(target=produce, name=name, daemon=True).start()
    while True:
        error, item = slots.get()
        if error is not None:
            raise error
        if item is done:
            return
        yield item
