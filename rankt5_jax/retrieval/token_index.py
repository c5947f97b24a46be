"""The XTR token index (UR2N's first stage): every document token's embedding, compressed.

    index = build_index("corpus.jsonl", "index_dir", encoder)   # streaming, resumable

`encoder` is anything with the `TokenEncoder` interface (`xtr_encoder.py`): `dim`, a JSON-able
`fingerprint`, `tokenize_documents(titles, texts)` and `encode(sequences) -> [n_i, dim]` arrays
(the unit-length embeddings of each sequence's tokens, padding excluded).

Layout of `index_dir`:

    index.json           settings, encoder fingerprint, corpus size, shard count (written once,
                         after the quantizer is trained)
    quantizer.faiss      the trained, empty Faiss `IndexIVFPQ` (inner product): coarse centroids
                         and the product quantizer of the residuals
    shard_00000/         passages [0, shard_passages), then one folder per shard_passages
      shard.json         written last: the shard is complete (passages, tokens, file sizes)
      doc_ids.txt        the shard's document ids, one per line, in corpus order
      codes.npy          uint8 [tokens, pq_m] PQ codes, grouped by inverted list
      list_offsets.npy   int64 [nlist + 1]: list l holds rows offsets[l]:offsets[l + 1]
      doc_index.npy      int32 [tokens]: each token's document (line of doc_ids.txt), same order
      vectors.npy        float32 [tokens, dim] (exact index only), same order

Building streams the corpus in chunks of `chunk_passages` (never holding it in memory): a
background thread reads and tokenizes the next chunk while this one is encoded and compressed.
Each chunk is appended to its shard's log files (`*.bin`), flushed and fsynced, and only then
recorded in the shard's `progress.json` (written atomically). A killed build resumes: the logs
are cut back to the sizes `progress.json` records and the next chunk follows. A shard whose
chunks are all recorded is finalized (sorted by inverted list into the `.npy` files above, each
written to a temporary name and renamed) and `shard.json` is written last. Nothing written holds
times or host names, so a resumed build is byte-identical to an uninterrupted one.

The compression is trained once, before any chunk, on a seeded sample of passages
(`train_passages`); with several hosts (`num_hosts`, `host_id`: host h builds the shards s with
s % num_hosts == h) the first run to find no `index.json` trains it (`train_only` does only
that, so the others can start together). Exact search needs `vectors.npy` (`exact`: "auto"
stores them for corpora up to `EXACT_AUTO_PASSAGES` passages).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import sys
import time
from typing import Any

import numpy as np

from rankt5_jax.data import formats
from rankt5_jax.errors import ConfigError

FORMAT = 1
INDEX_FILE = "index.json"
QUANTIZER_FILE = "quantizer.faiss"
SHARD_FILE = "shard.json"
PROGRESS_FILE = "progress.json"
DOC_IDS_FILE = "doc_ids.txt"
EXACT_AUTO_PASSAGES = 200_000
# Fault injection for the kill-and-resume tests: "chunk:N" kills the process (SIGKILL) after
# the N-th chunk of this run is appended and fsynced but before it is recorded; "finalize:N"
# kills it in the N-th shard finalization, after its codes are renamed into place.
FAULT_ENV = "RANKT5_FAULT_KILL_INDEX"


@dataclasses.dataclass(frozen=True)
class IndexSettings:
    """How an index is built (0 or "auto": chosen from the corpus, see `resolve`).

    Attributes:
      chunk_passages: passages encoded and committed together (the unit of resumption).
      shard_passages: passages per shard (the unit of finalization, merging and hosts).
      nlist: inverted lists (coarse centroids); 0: a power of two near sqrt(tokens), at most
        the training tokens / 64.
      pq_m: PQ sub-vectors (bytes per token at 8 bits); 0: dim // 8 (16 for 128 dimensions).
      pq_bits: bits per PQ sub-vector code (8: one byte each); fewer only for tiny corpora.
      train_passages: the seeded sample the compression is trained on; 0: min(passages,
        max(1024, 16 sqrt(passages))).
      kmeans_iterations: k-means iterations (coarse centroids and PQ codebooks).
      seed: the training sample's and k-means' seed.
      exact: store float32 vectors for exact search: "yes", "no", or "auto" (up to
        `EXACT_AUTO_PASSAGES` passages).
      include_title: documents read as `title text` (titles are tokenized first).
    """

    chunk_passages: int = 1024
    shard_passages: int = 100_000
    nlist: int = 0
    pq_m: int = 0
    pq_bits: int = 8
    train_passages: int = 0
    kmeans_iterations: int = 20
    seed: int = 0
    exact: str = "auto"
    include_title: bool = True

    def check(self) -> None:
        for name in ("chunk_passages", "shard_passages", "pq_bits", "kmeans_iterations"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("nlist", "pq_m", "train_passages", "seed"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.exact not in ("auto", "yes", "no"):
            raise ConfigError(f"exact must be auto, yes or no, got {self.exact!r}")
        if self.pq_bits > 16:
            raise ConfigError(f"pq_bits must be at most 16, got {self.pq_bits}")


# -- small file helpers ---------------------------------------------------------------------
def _fsync_dir(path: str) -> None:
    try:
        handle = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover (platforms without directory handles)
        return
    try:
        os.fsync(handle)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(handle)


def _replace(tmp: str, path: str) -> None:
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(path) or ".")


def write_json(path: str, value: Any) -> None:
    """Writes `value` as JSON (sorted keys) through a temporary file, fsynced and renamed."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as handle:
        json.dump(value, handle, indent=1, sort_keys=True)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    _replace(tmp, path)


def read_json(path: str) -> Any:
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: unreadable ({err})") from err


def _write_npy(path: str, array: np.ndarray) -> None:
    tmp = f"{path}.tmp.npy"
    with open(tmp, "wb") as handle:
        np.save(handle, array, allow_pickle=False)
        handle.flush()
        os.fsync(handle.fileno())
    _replace(tmp, path)


def _fault(stage: str, count: int) -> None:
    """SIGKILLs this process when `FAULT_ENV` names this stage and count (tests only)."""
    if os.environ.get(FAULT_ENV) == f"{stage}:{count}":
        print(f"{FAULT_ENV}: killing the build at {stage} {count}", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)


def shard_dir(index_dir: str, shard: int) -> str:
    return os.path.join(index_dir, f"shard_{shard:05d}")


# -- training the compression ---------------------------------------------------------------
def _default_train_passages(passages: int) -> int:
    return min(passages, max(1024, math.ceil(16 * math.sqrt(passages))))


def _power_of_two_at_most(value: float) -> int:
    return 1 << max(0, int(math.floor(math.log2(max(value, 1.0)))))


def resolve(settings: IndexSettings, dim: int, passages: int, train_tokens: int, mean: float):
    """The concrete nlist, pq_m, pq_bits and exact of `settings` for this corpus and sample."""
    nlist = settings.nlist or min(
        _power_of_two_at_most(math.sqrt(passages * mean)),
        _power_of_two_at_most(train_tokens / 64),
    )
    if nlist > train_tokens:
        raise ConfigError(
            f"nlist={nlist} inverted lists need at least as many training tokens; the sample "
            f"has {train_tokens} (raise train_passages or lower nlist)"
        )
    pq_m = settings.pq_m or max(1, dim // 8)
    if dim % pq_m:
        raise ConfigError(f"pq_m={pq_m} must divide the embedding width {dim}")
    # PQ codebooks need at least 2**bits training points; tiny corpora get fewer bits.
    bits = min(settings.pq_bits, max(1, int(math.floor(math.log2(max(train_tokens, 2))))))
    exact = settings.exact == "yes" or (
        settings.exact == "auto" and passages <= EXACT_AUTO_PASSAGES
    )
    return nlist, pq_m, bits, exact


def _sample_passages(corpus_path, passages, count, seed, strict, include_title):
    """The seeded sample (ascending passage numbers) as (title, text), read in one pass."""
    rng = np.random.default_rng([seed, 15])
    chosen = np.sort(rng.choice(passages, size=count, replace=False))
    picked = []
    position = 0
    for number, (_, _, title, text) in enumerate(formats.iter_corpus(corpus_path, strict)):
        if position < len(chosen) and number == chosen[position]:
            picked.append((title if include_title else "", text))
            position += 1
            if position == len(chosen):
                break
    return picked


def train_quantizer(
    vectors: np.ndarray, nlist: int, pq_m: int, pq_bits: int, iterations: int, seed: int
):
    """A trained, empty Faiss `IndexIVFPQ` (inner product, PQ of the residuals), seeded."""
    import faiss

    dim = vectors.shape[1]
    coarse = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFPQ(coarse, dim, nlist, pq_m, pq_bits, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    index.cp.niter = iterations
    index.cp.spherical = True  # unit-length token embeddings: centroids on the sphere
    index.pq.cp.seed = seed + 1
    index.pq.cp.niter = iterations
    index.cp.verbose = index.pq.cp.verbose = False
    index.train(np.ascontiguousarray(vectors, np.float32))
    return index


class Compressor:
    """Splits Faiss's standalone codes into (inverted list, PQ code) per token."""

    def __init__(self, index):
        self.index = index
        self.coarse_bytes = index.coarse_code_size()
        self.code_size = index.code_size

    def __call__(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        codes = self.index.sa_encode(np.ascontiguousarray(vectors, np.float32))
        lists = np.zeros(len(codes), np.int64)
        for byte in range(self.coarse_bytes):
            lists |= codes[:, byte].astype(np.int64) << (8 * byte)
        return lists.astype(np.int32), np.ascontiguousarray(codes[:, self.coarse_bytes :])


# -- building -------------------------------------------------------------------------------
def _requested(settings: IndexSettings) -> dict:
    return dataclasses.asdict(settings)


def _check_existing(info: dict, path: str, encoder, settings, corpus: dict) -> None:
    problems = []
    if info.get("format") != FORMAT:
        problems.append(f"format {info.get('format')} (this version reads {FORMAT})")
    if info.get("encoder") != encoder.fingerprint:
        problems.append("another encoder (checkpoint, step, dtype or max_length)")
    if info.get("requested") != _requested(settings):
        problems.append(f"other settings {info.get('requested')}")
    if info.get("corpus") != corpus:
        problems.append(f"another corpus {info.get('corpus')}")
    if problems:
        raise ConfigError(
            f"{path} belongs to an index built with {'; '.join(problems)}: give a new "
            "--index_dir (or delete this one) to build another"
        )


def _corpus_info(corpus_path: str, passages: int) -> dict:
    """The corpus's identity: its path and size (an `irds:` id as it is, without a size)."""
    is_file = os.path.isfile(corpus_path)
    return {
        "path": os.path.abspath(corpus_path) if is_file else corpus_path,
        "bytes": os.path.getsize(corpus_path) if is_file else None,
        "passages": passages,
    }


def _count_passages(corpus_path: str, strict: bool) -> int:
    skips = formats.Skips()
    count = sum(1 for _ in formats.iter_corpus(corpus_path, strict, skips))
    if skips.total:
        print(f"warning: {skips.summary()}", file=sys.stderr)
    return count


def _train(index_dir, corpus_path, encoder, settings, passages, strict, progress) -> dict:
    """Trains and saves the quantizer; -> the index.json fields it decides."""
    import faiss

    started = time.time()
    count = settings.train_passages or _default_train_passages(passages)
    count = min(count, passages)
    sample = _sample_passages(
        corpus_path, passages, count, settings.seed, strict, settings.include_title
    )
    vectors = []
    for start in range(0, len(sample), settings.chunk_passages):
        part = sample[start : start + settings.chunk_passages]
        vectors += encoder.encode(
            encoder.tokenize_documents([t for t, _ in part], [d for _, d in part])
        )
    tokens = sum(len(v) for v in vectors)
    if tokens < 2:
        raise ConfigError(f"{corpus_path}: the training sample holds {tokens} tokens")
    mean = tokens / max(len(sample), 1)
    nlist, pq_m, bits, exact = resolve(settings, encoder.dim, passages, tokens, mean)
    matrix = np.concatenate(vectors).astype(np.float32)
    del vectors
    quantizer = train_quantizer(
        matrix, nlist, pq_m, bits, settings.kmeans_iterations, settings.seed
    )
    tmp = os.path.join(index_dir, QUANTIZER_FILE + ".tmp")
    faiss.write_index(quantizer, tmp)
    _replace(tmp, os.path.join(index_dir, QUANTIZER_FILE))
    if progress:
        print(
            f"trained the compression on {tokens} tokens of {len(sample)} passages "
            f"(nlist {nlist}, {pq_m} x {bits}-bit PQ) in {time.time() - started:.1f}s",
            file=sys.stderr,
        )
    return {
        "nlist": nlist,
        "pq_m": pq_m,
        "pq_bits": bits,
        "exact": exact,
        "train_passages": len(sample),
        "train_tokens": tokens,
    }


def build_index(
    corpus_path: str,
    index_dir: str,
    encoder,
    settings: IndexSettings | None = None,
    host_id: int = 0,
    num_hosts: int = 1,
    strict: bool = True,
    progress: bool = True,
    train_only: bool = False,
) -> dict:
    """Builds (or resumes) the token index of `corpus_path` in `index_dir`; -> its index.json.

    Args:
      corpus_path: corpus.jsonl or docid<TAB>text[<TAB>title].
      index_dir: the index folder (made if missing; an unfinished build there is resumed).
      encoder: a `TokenEncoder` (see the module doc).
      settings: `IndexSettings` (the defaults if None).
      host_id, num_hosts: this host builds the shards s with s % num_hosts == host_id.
      strict: malformed corpus lines raise (else they are skipped, on every host alike).
      progress: a progress bar (passages/s) and summary lines on stderr.
      train_only: stop once the compression is trained (the other hosts can then start).
    """
    settings = settings or IndexSettings()
    settings.check()
    if not 0 <= host_id < num_hosts:
        raise ConfigError(f"host_id must be in [0, num_hosts={num_hosts}), got {host_id}")
    os.makedirs(index_dir, exist_ok=True)
    info_path = os.path.join(index_dir, INDEX_FILE)
    if os.path.isfile(info_path):
        info = read_json(info_path)
        passages = info.get("corpus", {}).get("passages", -1)
        _check_existing(info, info_path, encoder, settings, _corpus_info(corpus_path, passages))
    else:
        passages = _count_passages(corpus_path, strict)
        resolved = _train(index_dir, corpus_path, encoder, settings, passages, strict, progress)
        info = {
            "format": FORMAT,
            "encoder": encoder.fingerprint,
            "dim": int(encoder.dim),
            "requested": _requested(settings),
            "settings": resolved,
            "corpus": _corpus_info(corpus_path, passages),
            "num_shards": -(-passages // settings.shard_passages),
        }
        write_json(info_path, info)
    if train_only:
        return info
    _build_shards(
        corpus_path, index_dir, encoder, settings, info, host_id, num_hosts, strict, progress
    )
    return info


class _ShardWriter:
    """Appends chunks to one shard's logs; commits, resumes and finalizes them."""

    def __init__(self, folder: str, info: dict, shard: int, passages: int, exact: bool):
        self.folder = folder
        self.shard = shard
        self.passages = passages  # of this shard
        self.exact = exact
        self.dim = info["dim"]
        self.pq_m = info["settings"]["pq_m"]
        self.nlist = info["settings"]["nlist"]
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
        codes = np.fromfile(os.path.join(folder, "codes.bin"), np.uint8).reshape(tokens, self.pq_m)
        _write_npy(os.path.join(folder, "codes.npy"), codes[order])
        del codes
        _fault("finalize", count)
        _write_npy(os.path.join(folder, "list_offsets.npy"), offsets)
        doc_index = np.fromfile(os.path.join(folder, "doc_index.bin"), np.int32)
        _write_npy(os.path.join(folder, "doc_index.npy"), doc_index[order])
        del doc_index
        if self.exact:
            self._sorted_vectors(order)
        docs_tmp = os.path.join(folder, DOC_IDS_FILE + ".tmp")
        with open(os.path.join(folder, "docs.log"), "rb") as src, open(docs_tmp, "wb") as dst:
            while block := src.read(1 << 24):
                dst.write(block)
            dst.flush()
            os.fsync(dst.fileno())
        _replace(docs_tmp, os.path.join(folder, DOC_IDS_FILE))
        files = ["codes.npy", "list_offsets.npy", "doc_index.npy", DOC_IDS_FILE]
        files += ["vectors.npy"] if self.exact else []
        summary = {
            "shard": self.shard,
            "passages": self.state["passages"],
            "tokens": tokens,
            "exact": self.exact,
            "bytes": {name: os.path.getsize(os.path.join(folder, name)) for name in files},
        }
        write_json(os.path.join(folder, SHARD_FILE), summary)
        for name in self.logs + [PROGRESS_FILE]:
            os.remove(os.path.join(folder, name))
        return summary

    def _sorted_vectors(self, order: np.ndarray, block: int = 1 << 16) -> None:
        """vectors.bin rows in `order`, gathered in blocks (bounded memory) into vectors.npy."""
        source = os.path.join(self.folder, "vectors.bin")
        tokens = len(order)
        rows = np.memmap(source, np.float32, "r", shape=(tokens, self.dim)) if tokens else None
        path = os.path.join(self.folder, "vectors.npy")
        tmp = f"{path}.tmp.npy"
        out = np.lib.format.open_memmap(tmp, "w+", np.float32, (tokens, self.dim))
        for start in range(0, tokens, block):
            out[start : start + block] = rows[order[start : start + block]]
        out.flush()
        del out, rows
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        _replace(tmp, path)


def _shard_passages(info: dict, shard: int) -> int:
    per = info["requested"]["shard_passages"]
    return min(per, info["corpus"]["passages"] - shard * per)


def _build_shards(
    corpus_path, index_dir, encoder, settings, info, host_id, num_hosts, strict, progress
):
    import faiss

    exact = info["settings"]["exact"]
    mine = [s for s in range(info["num_shards"]) if s % num_hosts == host_id]
    writers: dict[int, _ShardWriter] = {}
    done_passages = 0
    for shard in mine:
        folder = shard_dir(index_dir, shard)
        if os.path.isfile(os.path.join(folder, SHARD_FILE)):
            done_passages += _shard_passages(info, shard)
            continue
        writers[shard] = _ShardWriter(folder, info, shard, _shard_passages(info, shard), exact)
        done_passages += writers[shard].state["passages"]
    total = sum(_shard_passages(info, s) for s in mine)
    finalized = 0
    for shard, writer in list(writers.items()):  # killed while finalizing: finish that first
        if writer.state["passages"] == writer.passages:
            finalized += 1
            writer.finalize(finalized)
            del writers[shard]
    if not writers:
        if progress:
            print(f"{index_dir}: this host's {len(mine)} shards are complete", file=sys.stderr)
        return
    compress = Compressor(faiss.read_index(os.path.join(index_dir, QUANTIZER_FILE)))
    chunk_passages = settings.chunk_passages
    title = settings.include_title

    # Where each pending shard resumes, fixed before the reader thread starts.
    plan = {shard: (w.done_chunks, w.passages) for shard, w in writers.items()}

    def chunks():  # (shard, chunk number, docids, token lists), this host's pending ones only
        per = settings.shard_passages
        batch: list[tuple[str, str, str]] = []
        seen = -1
        for seen, (_, docid, doc_title, text) in enumerate(
            formats.iter_corpus(corpus_path, strict)
        ):
            shard, local = divmod(seen, per)
            if shard not in plan or local // chunk_passages < plan[shard][0]:
                continue
            batch.append((docid, doc_title if title else "", text))
            if len(batch) == chunk_passages or local == plan[shard][1] - 1:
                docids = [d for d, _, _ in batch]
                tokens = encoder.tokenize_documents(
                    [t for _, t, _ in batch], [x for *_, x in batch]
                )
                yield shard, local // chunk_passages, docids, tokens
                batch = []
        if seen + 1 != info["corpus"]["passages"]:
            raise ConfigError(
                f"{corpus_path} now has {seen + 1} passages, but the index in {index_dir} was "
                f"started with {info['corpus']['passages']}: the corpus changed"
            )

    bar = _progress_bar(total, done_passages) if progress else None
    started, encoded, count = time.time(), 0, 0
    for shard, chunk, docids, tokens in formats.prefetch(chunks(), name="rankt5-index-read"):
        writer = writers[shard]
        if chunk != writer.done_chunks:  # pragma: no cover (the reader follows the writers)
            raise ConfigError(f"shard {shard}: chunk {chunk} follows {writer.done_chunks - 1}")
        embeddings = encoder.encode(tokens)
        lengths = np.array([len(e) for e in embeddings], np.int64)
        vectors = (
            np.concatenate(embeddings).astype(np.float32)
            if len(embeddings) and lengths.sum()
            else np.zeros((0, info["dim"]), np.float32)
        )
        lists, codes = (
            compress(vectors)
            if len(vectors)
            else (
                np.zeros(0, np.int32),
                np.zeros((0, info["settings"]["pq_m"]), np.uint8),
            )
        )
        writer.append(docids, vectors, lengths, lists, codes)
        count += 1
        _fault("chunk", count)
        writer.commit()
        encoded += len(docids)
        if bar is not None:
            bar.update(len(docids))
        if writer.state["passages"] == writer.passages:
            finalized += 1
            writer.finalize(finalized)
            del writers[shard]
    if bar is not None:
        bar.close()
    if progress:
        elapsed = max(time.time() - started, 1e-9)
        stats = (
            index_stats(index_dir)
            if all(
                os.path.isfile(os.path.join(shard_dir(index_dir, s), SHARD_FILE))
                for s in range(info["num_shards"])
            )
            else None
        )
        line = f"encoded {encoded} passages in {elapsed:.1f}s ({encoded / elapsed:.1f} passages/s)"
        if stats:
            line += (
                f"; {stats['tokens']} tokens, {stats['compressed_bytes_per_token']:.1f} bytes/token "
                f"compressed vs {stats['flat_bytes_per_token']} flat float32 "
                f"({100 * stats['compressed_reduction']:.1f}% smaller)"
            )
        print(line, file=sys.stderr)


def _progress_bar(total: int, initial: int):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(
        total=total,
        initial=initial,
        unit="passage",
        unit_scale=True,
        desc="index",
        file=sys.stderr,
        smoothing=0.1,
    )


# -- reading --------------------------------------------------------------------------------
def read_index_info(index_dir: str) -> dict:
    """index.json of a complete index (every shard finalized); `ConfigError` otherwise."""
    path = os.path.join(index_dir, INDEX_FILE)
    if not os.path.isfile(path):
        raise ConfigError(f"{index_dir} holds no token index ({INDEX_FILE} missing)")
    info = read_json(path)
    if info.get("format") != FORMAT:
        raise ConfigError(f"{path}: index format {info.get('format')}, this version reads {FORMAT}")
    missing = [
        s
        for s in range(info["num_shards"])
        if not os.path.isfile(os.path.join(shard_dir(index_dir, s), SHARD_FILE))
    ]
    if missing:
        raise ConfigError(
            f"{index_dir}: {len(missing)} of {info['num_shards']} shards are unfinished (first: "
            f"shard {missing[0]}); run `rankt5 index` again to finish them"
        )
    return info


def index_stats(index_dir: str) -> dict:
    """Sizes of a complete index: tokens, and bytes per token of each part.

    `compressed_bytes_per_token` counts what compressed search reads from disk: the PQ codes,
    the int32 document number of each token, the list offsets and the quantizer (centroids and
    codebooks), over all tokens. Faiss holds an int64 id per token beside each code in memory
    (`search_memory_bytes_per_token`). `flat_bytes_per_token` is float32 vectors alone.
    """
    info = read_index_info(index_dir)
    shards = [
        read_json(os.path.join(shard_dir(index_dir, s), SHARD_FILE))
        for s in range(info["num_shards"])
    ]
    tokens = sum(s["tokens"] for s in shards)
    sizes = {}
    for summary in shards:
        for name, size in summary["bytes"].items():
            sizes[name] = sizes.get(name, 0) + size
    quantizer = os.path.getsize(os.path.join(index_dir, QUANTIZER_FILE))
    compressed = sizes["codes.npy"] + sizes["doc_index.npy"] + sizes["list_offsets.npy"]
    compressed += quantizer
    dim, pq_m = info["dim"], info["settings"]["pq_m"]
    per = max(tokens, 1)
    flat = 4 * dim
    return {
        "passages": info["corpus"]["passages"],
        "tokens": tokens,
        "tokens_per_passage": tokens / max(info["corpus"]["passages"], 1),
        "dim": dim,
        "nlist": info["settings"]["nlist"],
        "pq_m": pq_m,
        "pq_bits": info["settings"]["pq_bits"],
        "flat_bytes_per_token": flat,
        "code_bytes_per_token": sizes["codes.npy"] / per,
        "doc_index_bytes_per_token": sizes["doc_index.npy"] / per,
        "quantizer_bytes": quantizer,
        "compressed_bytes_per_token": compressed / per,
        "compressed_reduction": 1 - compressed / per / flat,
        "search_memory_bytes_per_token": (sizes["codes.npy"] + 8 * tokens) / per,
        "exact_bytes_per_token": (sizes.get("vectors.npy", 0) + sizes["doc_index.npy"]) / per,
        "doc_ids_bytes": sizes[DOC_IDS_FILE],
    }
