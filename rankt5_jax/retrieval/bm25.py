"""BM25 first stage on `bm25s`: `rankt5 retrieve --method bm25`, a saved and reused index, and
`bm25_run` for in-memory corpora (the demo's first stage).

Scoring is Lucene's BM25 (bm25s `method="lucene"`, as Anserini): per query word `t` in document
`d`, `idf(t) * tf / (tf + k1 * (1 - b + b * |d| / avgdl))` with
`idf(t) = log(1 + (N - df + 0.5) / (df + 0.5))`, defaults `k1=0.9, b=0.4` (Anserini's). Lengths
are exact (Lucene stores them rounded to one byte, so Anserini's scores differ in the last
digits). Tokenisation is `bm25s.tokenize`: lower case, words of two or more word characters,
English stopwords (bm25s's list is Lucene's 33 words) and the Snowball English stemmer
(PyStemmer), each optional. A document is `title + " " + text`. A word repeated in a query
counts once per repetition (as bm25s, and Anserini's bag-of-words queries).

Runs hold only documents with a positive score (a document matching no query word scores 0 and
is not returned, so a query may get fewer than `top_k` documents, or none). Ties at the
`top_k` cut are broken as trec_eval ranks: by docid, descending. Scores are bm25s's float32
values, written exactly (9 significant digits).

An index directory holds bm25s's files, the docids (`docids.npy`) and `rankt5_bm25.json`
(settings, bm25s version, corpus fingerprint: size, mtime (a bucket object's generation) and a
hash of its first and last MiB), written last. `retrieve_files` reuses the index when the settings and the corpus fingerprint
match; otherwise it rebuilds it in place (saying why on stderr). A folder holding other files
and no index is refused, never overwritten.

bm25s imports JAX when it can (for a top-k we do not use: selection is ours, with trec_eval's
tie order); it is imported here with JAX hidden, so `rankt5 retrieve` never loads JAX.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator, Mapping

import numpy as np

from rankt5_jax.data import atomic, formats, irds, paths
from rankt5_jax.data import progress as progress_lib
from rankt5_jax.errors import ConfigError, InputFormatError
from rankt5_jax.retrieval.base import Retriever

META_FILE = "rankt5_bm25.json"
DOCIDS_FILE = "docids.npy"
_FORMAT = 1
# What `bm25s.BM25.save` writes (no corpus; nonoccurrence only for BM25L/BM25+), and ours.
_INDEX_FILES = {
    "data.csc.index.npy",
    "indices.csc.index.npy",
    "indptr.csc.index.npy",
    "vocab.index.json",
    "params.index.json",
    DOCIDS_FILE,
    META_FILE,
}
_STOPWORDS = {"en": "en", "english": "en", "none": "none", None: "none", False: "none", "": "none"}
_STEMMERS = {"english": "english", "none": "none", None: "none", "": "none"}
_NO_WORDS = "no document has a word to index (all empty, or only stopwords)"
_PROGRESS_BYTES = 32 << 20  # show progress bars for corpus files of at least 32 MiB
_FORMAT_HINT = {
    "corpus": "corpus.jsonl (BEIR: _id, title, text) or docid<TAB>text[<TAB>title]",
    "queries": "queries.jsonl (BEIR: _id, text) or qid<TAB>text",
}
_BINARY_MAGIC = {
    b"\x1f\x8b": "gzip",
    b"BZh": "bzip2",
    b"\xfd7zXZ": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"PK\x03\x04": "zip",
    b"PAR1": "parquet",
}


def _bm25s():
    """`bm25s`, imported with JAX hidden: its `selection` module imports `jax.lax` when it can,
    which costs a second and initialises JAX's backends; we never use its top-k."""
    if "bm25s" in sys.modules:
        return sys.modules["bm25s"]
    hide = "jax" not in sys.modules
    if hide:
        sys.modules["jax"] = None  # `import jax` raises ImportError while this is set
    try:
        import bm25s
    finally:
        if hide and sys.modules.get("jax", 0) is None:
            del sys.modules["jax"]
    return bm25s


def _settings(k1: float, b: float, stopwords: str | None, stemmer: str | None) -> dict:
    """Checked, normalised settings (what an index records and is matched on)."""
    try:
        k1, b = float(k1), float(b)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"BM25: k1 and b must be numbers, got k1={k1!r}, b={b!r}") from err
    if not (math.isfinite(k1) and k1 >= 0):
        raise ConfigError(f"BM25: k1 must be a finite number >= 0, got {k1}")
    if not 0 <= b <= 1:
        raise ConfigError(f"BM25: b must be in [0, 1], got {b}")
    if stopwords not in _STOPWORDS:
        raise ConfigError(f"BM25: unknown stopwords {stopwords!r}: 'en' or 'none'")
    if stemmer not in _STEMMERS:
        raise ConfigError(f"BM25: unknown stemmer {stemmer!r}: 'english' or 'none'")
    return {
        "method": "lucene",
        "k1": k1,
        "b": b,
        "stopwords": _STOPWORDS[stopwords],
        "stemmer": _STEMMERS[stemmer],
    }


def _tokenize(texts: Iterable[str], settings: dict, return_ids: bool = True):
    """`bm25s.tokenize` with the index's stopwords and stemmer (ids + vocabulary, or words)."""
    bm25s = _bm25s()
    stemmer = None
    if settings["stemmer"] != "none":
        import Stemmer

        stemmer = Stemmer.Stemmer(settings["stemmer"])
    return bm25s.tokenize(
        texts,
        stopwords=None if settings["stopwords"] == "none" else settings["stopwords"],
        stemmer=stemmer,
        return_ids=return_ids,
        show_progress=False,
    )


class BM25Index:
    """A bm25s index (Lucene's BM25) over documents with string ids.

    `build` tokenises the texts in one pass (keeping token ids, not the texts), `save`/`load`
    keep it in a directory, `search` returns `{qid: {docid: score}}` runs (positive scores
    only, the top `top_k` in trec_eval order).
    """

    def __init__(self, retriever, docids: np.ndarray, settings: dict):
        self.retriever = retriever
        self.docids = docids  # UTF-8 bytes, index order
        self.settings = settings
        self._docid_rank: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.docids)

    @property
    def num_terms(self) -> int:
        return len(self.retriever.scores["indptr"]) - 1

    @classmethod
    def build(
        cls,
        docids: Iterable[str],
        texts: Iterable[str],
        k1: float = 0.9,
        b: float = 0.4,
        stopwords: str | None = "en",
        stemmer: str | None = "english",
        show_progress: bool = False,
    ) -> BM25Index:
        """Indexes `texts` (consumed once; may be a generator). `docids` is read after the
        texts, so a generator of texts may fill a list of docids as it goes."""
        settings = _settings(k1, b, stopwords, stemmer)
        tokens = _tokenize(texts, settings)
        ids = _docid_array(docids)
        duplicate = _first_duplicate(ids)
        if duplicate is not None:
            raise ConfigError(f"BM25: duplicate docid {ids[duplicate].decode()!r}")
        return cls._from_tokens(ids, tokens, settings, show_progress)

    @classmethod
    def _from_tokens(cls, ids: np.ndarray, tokens, settings: dict, show_progress: bool):
        if len(ids) != len(tokens.ids):
            raise ConfigError(f"BM25: {len(ids)} docids for {len(tokens.ids)} texts")
        if not len(ids):
            raise ConfigError("BM25: the corpus is empty")
        if not tokens.vocab:
            raise ConfigError(f"BM25: {_NO_WORDS}")
        retriever = _bm25s().BM25(method="lucene", k1=settings["k1"], b=settings["b"])
        retriever.index(tokens, show_progress=show_progress)
        return cls(retriever, ids, settings)

    def save(self, index_dir: str, corpus: Mapping | None = None) -> None:
        """Writes the index to `index_dir` (created if missing); `rankt5_bm25.json` last.
        `corpus`: the corpus fingerprint to record (`retrieve_files` matches it on reuse).
        A bucket folder (`gs://`): written to a local folder of the process, then uploaded file
        by file, `rankt5_bm25.json` last (after the old one is removed)."""
        if paths.is_remote(index_dir):
            local = paths.cache_dir(index_dir, "bm25")
            self.save(local, corpus)
            meta_path = paths.join(index_dir, META_FILE)
            if paths.exists(meta_path):
                paths.remove(meta_path)
            for name in sorted(os.listdir(local)):
                if name != META_FILE:
                    paths.upload(os.path.join(local, name), paths.join(index_dir, name))
            paths.upload(os.path.join(local, META_FILE), meta_path)
            return
        bm25s = _bm25s()
        os.makedirs(index_dir, exist_ok=True)
        meta_path = os.path.join(index_dir, META_FILE)
        if os.path.exists(meta_path):
            os.remove(meta_path)  # an interrupted save leaves no index that looks complete
        self.retriever.save(index_dir, show_progress=False)
        np.save(os.path.join(index_dir, DOCIDS_FILE), self.docids, allow_pickle=False)
        meta = {
            "format": _FORMAT,
            "settings": self.settings,
            "documents": len(self),
            "terms": self.num_terms,
            "bm25s": bm25s.__version__,
            "corpus": dict(corpus) if corpus else None,
        }
        atomic.write_json(meta_path, meta, indent=2)

    @classmethod
    def load(cls, index_dir: str, mmap: bool = False) -> BM25Index:
        """The index saved in `index_dir` (`mmap`: memory-map the score arrays)."""
        meta = read_meta(index_dir)
        if meta is None:
            raise ConfigError(f"{index_dir}: no BM25 index here (no {META_FILE})")
        source = index_dir
        if paths.is_remote(index_dir):  # bm25s reads local files: a copy of the process
            index_dir = paths.cache_dir(index_dir, "bm25")
            paths.download_tree(source, index_dir)
        try:
            retriever = _bm25s().BM25.load(index_dir, mmap=mmap, show_progress=False)
            docids = np.load(os.path.join(index_dir, DOCIDS_FILE), allow_pickle=False)
        except (OSError, ValueError, KeyError) as err:
            raise ConfigError(f"{source}: unreadable BM25 index ({err})") from err
        if len(docids) != retriever.scores["num_docs"]:
            raise ConfigError(f"{source}: docids and scores disagree (a partial copy?)")
        return cls(retriever, docids, meta["settings"])

    def query_terms(self, queries: Mapping[str, str]) -> dict[str, list[int]]:
        """Each query's term ids in the index (words in no document dropped; repeats kept)."""
        qids = list(queries)
        words = _tokenize([queries[q] for q in qids], self.settings, return_ids=False)
        return {q: self.retriever.get_tokens_ids(w) for q, w in zip(qids, words)}

    def search(
        self, queries: Mapping[str, str], top_k: int = 1000, show_progress: bool = False
    ) -> dict[str, dict[str, float]]:
        """`{qid: {docid: score}}`: each query's `top_k` documents with a positive score, in
        trec_eval order (score descending, then docid descending); `{}` for a query none of
        whose words is in the index."""
        return dict(self.iter_search(queries, top_k, show_progress))

    def iter_search(
        self, queries: Mapping[str, str], top_k: int = 1000, show_progress: bool = False
    ) -> Iterator[tuple[str, dict[str, float]]]:
        """`search`, one `(qid, {docid: score})` at a time (a run need not fit in memory)."""
        top_k = _check_top_k(top_k)
        items = self.query_terms(queries).items()
        bar = progress_lib.progress(len(items), "BM25 search", "queries", show_progress)
        with progress_lib.closing(bar):
            for qid, term_ids in items:
                found: dict[str, float] = {}
                if term_ids:
                    scores = self.retriever.get_scores_from_ids(term_ids)
                    top = self._top(scores, top_k)
                    names = [name.decode() for name in self.docids[top].tolist()]
                    found = dict(zip(names, scores[top].tolist()))
                if bar is not None:
                    bar.update(1)
                yield qid, found

    def _top(self, scores: np.ndarray, k: int) -> np.ndarray:
        """Indices of the `k` best positive scores in trec_eval order."""
        found = np.flatnonzero(scores > 0)
        values = scores[found]
        if len(found) > k:
            kth = np.partition(values, len(values) - k)[len(values) - k]
            above = values > kth
            tied = found[values == kth]
            need = k - int(above.sum())
            if len(tied) > need:  # ties across the cut: trec_eval ranks the larger docid first
                tied = tied[np.argsort(-self.docid_rank[tied], kind="stable")[:need]]
            found = np.concatenate([found[above], tied])
            values = scores[found]
        order = np.lexsort((-self.docid_rank[found], -values))
        return found[order]

    @property
    def docid_rank(self) -> np.ndarray:
        """Each document's position in docid order (bytes order = code point order)."""
        if self._docid_rank is None:
            rank = np.empty(len(self.docids), np.int64)
            rank[np.argsort(self.docids, kind="stable")] = np.arange(len(self.docids))
            self._docid_rank = rank
        return self._docid_rank


def _docid_array(docids: Iterable[str]) -> np.ndarray:
    encoded = [str(d).encode("utf-8") for d in docids]
    return np.array(encoded, dtype=bytes) if encoded else np.array([], dtype="S1")


def _first_duplicate(ids: np.ndarray) -> int | None:
    """Index of the second occurrence of the first duplicated id (in sorted order), or None."""
    order = np.argsort(ids, kind="stable")
    same = np.flatnonzero(ids[order][1:] == ids[order][:-1])
    return int(order[same[0] + 1]) if same.size else None


def _check_top_k(top_k: int) -> int:
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise ConfigError(f"BM25: top_k must be a positive integer, got {top_k!r}")
    return int(top_k)


def bm25_run(
    corpus: Mapping[str, Mapping[str, str]],
    queries: Mapping[str, str],
    top_k: int = 100,
    k1: float = 0.9,
    b: float = 0.4,
    stopwords: str | None = "en",
    stemmer: str | None = "english",
) -> dict[str, dict[str, float]]:
    """BM25 over an in-memory corpus `{docid: {"title", "text"}}` (title optional):
    `{qid: {docid: score}}`, as `BM25Index.search`."""
    texts = (f"{doc.get('title') or ''} {doc['text']}" for doc in corpus.values())
    index = BM25Index.build(list(corpus), texts, k1, b, stopwords, stemmer)
    return index.search(queries, top_k)


def check_text_format(path: str, kind: str) -> None:
    """A one-line error for a corpus/queries file of an unknown format (binary or compressed
    data, or a first line that is neither a JSON object nor tab-separated); the readers in
    `data.formats` then check every line."""
    if not paths.isfile(path):
        return  # missing files, pipes: the readers say what is wrong
    hint = _FORMAT_HINT[kind]
    with paths.open(path, "rb") as handle:
        head = handle.read(1 << 16)
    for magic, name in _BINARY_MAGIC.items():
        if head.startswith(magic):
            raise InputFormatError(
                path, None, f"unknown file format ({name} data): expected {hint}"
            )
    if b"\x00" in head:
        raise InputFormatError(path, None, f"unknown file format (binary data): expected {hint}")
    head = head.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark: the readers skip it
    for number, raw in enumerate(head.split(b"\n"), start=1):
        line = raw.strip()
        if not line:
            continue
        if not (line.startswith(b"{") or b"\t" in line):
            raise InputFormatError(
                path,
                number,
                f"unknown file format: the first line is neither a JSON object nor "
                f"tab-separated; expected {hint}",
            )
        return


def corpus_fingerprint(path: str) -> dict:
    """Size, modification time and a hash of the first and last MiB of the corpus file (an
    `irds:` dataset: its id; an object in a bucket: its generation for the time, the two MiB
    read as ranged requests, never the whole object)."""
    if irds.is_irds(path):
        return {"irds": path}
    digest = hashlib.sha256()
    with paths.open(path, "rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        handle.seek(0)
        digest.update(handle.read(1 << 20))
        if size > 2 << 20:
            handle.seek(size - (1 << 20))
            digest.update(handle.read())
        if paths.is_remote(path):  # a rewritten object has a new generation
            details = getattr(handle, "details", None) or {}
            stamp = {"generation": str(details.get("generation") or details.get("updated"))}
        else:
            stamp = {"mtime_ns": os.stat(path).st_mtime_ns}
    return {"size": size, **stamp, "head_tail_sha256": digest.hexdigest()}


def read_meta(index_dir: str) -> dict | None:
    """The index's `rankt5_bm25.json`, or None where there is none."""
    path = paths.join(index_dir, META_FILE)
    if not paths.isfile(path):
        return None
    try:
        with paths.open(path) as handle:
            meta = json.load(handle)
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: unreadable ({err})") from err
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT or "settings" not in meta:
        raise ConfigError(f"{path}: not a BM25 index description of format {_FORMAT}")
    return meta


def _partial_meta(name: str) -> bool:
    """True for the temporary file of an interrupted `META_FILE` write."""
    return name.startswith(META_FILE + ".") and atomic.is_partial(name)


def _reusable(index_dir: str, settings: dict, fingerprint: dict) -> bool:
    """True when `index_dir` holds an index of this corpus with these settings; False when it
    is new, empty, or holds our index of something else (to be rebuilt in place)."""
    if not paths.exists(index_dir):
        return False
    if not paths.isdir(index_dir):
        raise ConfigError(f"--index_dir {index_dir} is a file; give a folder")
    meta = read_meta(index_dir)
    if meta is None:
        names = paths.listdir(index_dir)
        ours = _INDEX_FILES | {n for n in names if _partial_meta(n)}
        others = sorted(set(names) - ours)
        if others:
            raise ConfigError(
                f"--index_dir {index_dir} holds other files ({', '.join(others[:3])}) and no "
                "BM25 index; give a new or empty folder"
            )
        return False
    changed = [
        f"{key} {meta['settings'].get(key)!r} -> {value!r}"
        for key, value in settings.items()
        if meta["settings"].get(key) != value
    ]
    if meta.get("corpus") != fingerprint:
        changed.append("another corpus file (size, time or content)")
    if changed:
        print(
            f"rankt5: rebuilding the BM25 index in {index_dir}: {'; '.join(changed)}",
            file=sys.stderr,
        )
        return False
    return True


def _file_size(path: str) -> int:
    """The size of a local file or bucket object; 0 for anything else (a pipe, `irds:`)."""
    if irds.is_irds(path) or not paths.isfile(path):
        return 0
    if paths.is_remote(path):
        return int(paths.filesystem(path).size(path))
    return os.path.getsize(path)


def _corpus_texts(path: str, docids: list[str], lines: list[int], progress: bool) -> Iterator[str]:
    """`title text` of each document (`formats.iter_corpus`: one pass, one line held at a
    time); fills `docids` and `lines`."""
    size = _file_size(path)
    bar = progress_lib.progress(
        size, "BM25 indexing: reading and tokenising", "bytes", progress and size > 0
    )
    with progress_lib.closing(bar):
        pending = 0
        for number, docid, title, body in formats.iter_corpus(path):
            docids.append(docid)
            lines.append(number)
            if bar is not None:  # characters for bytes: close enough, short of the end
                pending += len(docid) + len(title) + len(body) + 4
                if pending > 1 << 22:
                    bar.update(min(pending, bar.total - 1 - bar.done))
                    pending = 0
            yield f"{title} {body}"
        if bar is not None:
            bar.update(bar.total - bar.done)


def build_from_file(
    corpus_path: str,
    k1: float = 0.9,
    b: float = 0.4,
    stopwords: str | None = "en",
    stemmer: str | None = "english",
    progress: bool | None = None,
) -> BM25Index:
    """Indexes a corpus file (`corpus.jsonl` or `docid<TAB>text[<TAB>title]`) in one pass;
    malformed lines and duplicate docids are `InputFormatError`s naming the file and line.
    `progress`: bars on stderr (None: for files of 32 MiB or more)."""
    settings = _settings(k1, b, stopwords, stemmer)
    check_text_format(corpus_path, "corpus")
    if progress is None:
        progress = _file_size(corpus_path) >= _PROGRESS_BYTES
    docids: list[str] = []
    lines: list[int] = []
    tokens = _tokenize(_corpus_texts(corpus_path, docids, lines, progress), settings)
    ids = _docid_array(docids)
    duplicate = _first_duplicate(ids)
    if duplicate is not None:
        raise InputFormatError(
            corpus_path, lines[duplicate], f"duplicate id: document {docids[duplicate]!r}"
        )
    del docids
    if not tokens.vocab:
        raise InputFormatError(corpus_path, None, _NO_WORDS)
    # bm25s's own bar redraws with carriage returns: only on a terminal
    return BM25Index._from_tokens(ids, tokens, settings, progress and sys.stderr.isatty())


class _StreamedRun:
    """A run that `formats.write_trec_run` (which only iterates `items()`) writes as it is
    searched, one query at a time; notes the queries that retrieved nothing."""

    def __init__(self, results: Iterator[tuple[str, dict[str, float]]]):
        self._results = results
        self.empty: list[str] = []

    def items(self) -> Iterator[tuple[str, dict[str, float]]]:
        for qid, docs in self._results:
            if not docs:
                self.empty.append(qid)
            yield qid, docs


def retrieve_files(
    corpus_path: str,
    queries_path: str,
    output_path: str,
    top_k: int = 1000,
    k1: float = 0.9,
    b: float = 0.4,
    index_dir: str | None = None,
    stopwords: str | None = "en",
    stemmer: str | None = "english",
    verbose: bool = True,
) -> None:
    """`rankt5 retrieve --method bm25`: writes the TREC run (tag `bm25`) of the queries' top
    `top_k` BM25 documents. With `index_dir`, the index is saved there and reused by later
    calls with the same corpus file and settings (rebuilt in place otherwise). `verbose`:
    what was done, and queries/s, on stderr; queries that retrieve nothing are always counted
    there."""
    settings = _settings(k1, b, stopwords, stemmer)
    top_k = _check_top_k(top_k)
    formats.check_output_path(output_path)
    check_text_format(queries_path, "queries")
    queries = formats.read_queries(queries_path)  # before indexing: a bad file fails at once
    check_text_format(corpus_path, "corpus")
    started = time.perf_counter()
    fingerprint = corpus_fingerprint(corpus_path) if index_dir else None
    if index_dir and _reusable(index_dir, settings, fingerprint):
        index = BM25Index.load(index_dir)
        action = f"loaded the BM25 index in {index_dir}"
    else:
        index = build_from_file(corpus_path, k1, b, stopwords, stemmer, progress=None)
        action = "indexed"
        if index_dir:
            index.save(index_dir, corpus=fingerprint)
            action = f"indexed and saved to {index_dir}"
    if verbose:
        print(
            f"rankt5: {action}: {len(index)} documents, {index.num_terms} terms "
            f"({time.perf_counter() - started:.1f}s)",
            file=sys.stderr,
        )
    started = time.perf_counter()
    run = _StreamedRun(index.iter_search(queries, top_k, verbose and len(queries) >= 1000))
    formats.write_trec_run(output_path, run, tag="bm25")
    elapsed = time.perf_counter() - started
    if run.empty:
        shown = ", ".join(run.empty[:5]) + (", ..." if len(run.empty) > 5 else "")
        print(
            f"rankt5: warning: {len(run.empty)} of {len(queries)} queries retrieved nothing (none of "
            f"their words, after stopwords and stemming, is in the corpus): {shown}",
            file=sys.stderr,
        )
    if verbose:
        rate = len(queries) / elapsed if elapsed > 0 else float("inf")
        print(
            f"rankt5: retrieved {len(queries)} queries in {elapsed:.2f}s ({rate:.0f} queries/s, "
            "writing included), "
            f"top {top_k}; wrote {output_path}",
            file=sys.stderr,
        )


class BM25Retriever(Retriever):
    """BM25 as a `retrieval.base.Retriever` over a saved index (`Retriever.load(index_dir)`)."""

    kind = "bm25"

    def __init__(self, index: BM25Index):
        self.index = index

    @classmethod
    def open(cls, index_dir: str, mmap: bool = False) -> BM25Retriever:
        return cls(BM25Index.load(index_dir, mmap=mmap))

    def search(self, queries: Mapping[str, str], k: int = 1000) -> dict[str, dict[str, float]]:
        return self.index.search(queries, k)
