"""The XTR token index (UR2N's first stage): every document token's embedding, compressed.

    index = build_index("corpus.jsonl", "index_dir", encoder)   # streaming, resumable

`encoder` is anything with the `TokenEncoder` interface (`xtr_encoder.py`): `dim`, a JSON-able
`fingerprint`, `tokenize_documents(titles, texts)` and `encode(sequences) -> [n_i, dim]` arrays
(the unit-length embeddings of each sequence's tokens, padding excluded).

Layout of `index_dir`:

    index.json           settings, encoder fingerprint, corpus size, shard count (written once,
                         after the quantizer is trained)
    quantizer.faiss      the trained, empty codec (`codecs.py`; a Faiss IVF index, inner
                         product): coarse centroids and the residuals' quantizer
    shard_00000/         passages [0, shard_passages), then one folder per shard_passages
      shard.json         written last: the shard is complete (passages, tokens, file sizes)
      doc_ids.txt        the shard's document ids, one per line, in corpus order
      codes.npy          uint8 [tokens, code_size] codes, grouped by inverted list
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

The compression (`settings.codec`, see `codecs.py`) is trained once, before any chunk, on a seeded sample of passages
(`train_passages`); with several hosts (`num_hosts`, `host_id`: host h builds the shards s with
s % num_hosts == h) the first run to find no `index.json` trains it (`train_only` does only
that, so the others can start together). Exact search needs `vectors.npy` (`exact`: "auto"
stores them for corpora up to `EXACT_AUTO_PASSAGES` passages).

`index.json` and `shard.json` are read and written through the typed `index_meta.IndexMeta` and
`ShardMeta`; the shard writer is `index_shards.ShardWriter`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time

import numpy as np

from rankt5_jax.data import atomic, formats
from rankt5_jax.data import progress as progress_lib
from rankt5_jax.errors import ConfigError
from rankt5_jax.retrieval import codecs
from rankt5_jax.retrieval.index_meta import (  # noqa: F401 (the index's file names, re-exported)
    DOC_IDS_FILE,
    FORMAT,
    INDEX_FILE,
    LEGACY_CODEC,
    PROGRESS_FILE,
    QUANTIZER_FILE,
    SHARD_FILE,
    CodecMeta,
    CorpusMeta,
    IndexMeta,
    ShardMeta,
    read_json,
    shard_dir,
    write_json,
)
from rankt5_jax.retrieval.index_shards import FAULT_ENV, ShardWriter, fault  # noqa: F401

EXACT_AUTO_PASSAGES = 200_000


@dataclasses.dataclass(frozen=True)
class IndexSettings:
    """How an index is built (0 or "auto": chosen from the corpus, see `resolve`).

    Attributes:
      chunk_passages: passages encoded and committed together (the unit of resumption).
      shard_passages: passages per shard (the unit of finalization, merging and hosts).
      codec: the compression (`codecs.py`: ivfpq, ivfpqN, opq, ivfres2, ivfsq4, ...).
      nlist: inverted lists (coarse centroids); 0: a power of two near sqrt(tokens), at most
        the training tokens / 64.
      pq_m: PQ sub-vectors of the `ivfpq` and `opq` codecs (bytes per token at 8 bits); 0:
        dim // 8 (16 for 128 dimensions).
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
    codec: str = codecs.DEFAULT_CODEC

    def check(self) -> None:
        codecs.parse_codec(self.codec)
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


# -- training the compression ---------------------------------------------------------------
def _default_train_passages(passages: int) -> int:
    return min(passages, max(1024, math.ceil(16 * math.sqrt(passages))))


def _power_of_two_at_most(value: float) -> int:
    return 1 << max(0, int(math.floor(math.log2(max(value, 1.0)))))


def resolve(settings: IndexSettings, dim: int, passages: int, train_tokens: int, mean: float):
    """The concrete nlist, pq_m, bits and exact of `settings` for this corpus and sample."""
    nlist = settings.nlist or min(
        _power_of_two_at_most(math.sqrt(passages * mean)),
        _power_of_two_at_most(train_tokens / 64),
    )
    if nlist > train_tokens:
        raise ConfigError(
            f"nlist={nlist} inverted lists need at least as many training tokens; the sample "
            f"has {train_tokens} (raise train_passages or lower nlist)"
        )
    spec = codecs.parse_codec(settings.codec)
    pq_m, bits = spec.resolve(dim, settings.pq_m, settings.pq_bits, train_tokens)
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
    """A trained, empty Faiss `IndexIVFPQ` (inner product, PQ of the residuals), seeded: the
    `ivfpq` codec's index."""
    codec = codecs.FaissIVFCodec(codecs.parse_codec("ivfpq"), vectors.shape[1], pq_m, pq_bits)
    codec.train(vectors, nlist, iterations, seed)
    return codec.index


# -- building -------------------------------------------------------------------------------
def _requested(settings: IndexSettings) -> dict:
    return dataclasses.asdict(settings)


def _check_existing(info: dict, path: str, encoder, settings, corpus: dict) -> None:
    problems = []
    if info.get("format") != FORMAT:
        problems.append(f"format {info.get('format')} (this version reads {FORMAT})")
    if info.get("encoder") != encoder.fingerprint:
        problems.append("another encoder (checkpoint, step, dtype or max_length)")
    # An index.json written before codecs existed requested (and holds) the legacy codec.
    requested = {"codec": LEGACY_CODEC, **info.get("requested", {})}
    if requested != _requested(settings):
        problems.append(f"other settings {info.get('requested')}")
    if info.get("corpus") != corpus:
        problems.append(f"another corpus {info.get('corpus')}")
    if problems:
        raise ConfigError(
            f"{path} belongs to an index built with {'; '.join(problems)}: give a new "
            "--index_dir (or delete this one) to build another"
        )


def _count_passages(corpus_path: str, strict: bool) -> int:
    skips = formats.Skips()
    count = sum(1 for _ in formats.iter_corpus(corpus_path, strict, skips))
    if skips.total:
        print(f"warning: {skips.summary()}", file=sys.stderr)
    return count


def _train(index_dir, corpus_path, encoder, settings, passages, strict, progress) -> CodecMeta:
    """Trains and saves the codec; -> the compression as built (index.json's "settings")."""
    started = time.time()
    count = settings.train_passages or _default_train_passages(passages)
    count = min(count, passages)
    sample = _sample_passages(
        corpus_path, passages, count, settings.seed, strict, settings.include_title
    )
    vectors = []
    bar = progress_lib.progress(len(sample), "index: training sample", "passages", progress)
    with progress_lib.closing(bar):
        for start in range(0, len(sample), settings.chunk_passages):
            part = sample[start : start + settings.chunk_passages]
            vectors += encoder.encode(
                encoder.tokenize_documents([t for t, _ in part], [d for _, d in part])
            )
            if bar is not None:
                bar.update(len(part))
    tokens = sum(len(v) for v in vectors)
    if tokens < 2:
        raise ConfigError(f"{corpus_path}: the training sample holds {tokens} tokens")
    mean = tokens / max(len(sample), 1)
    nlist, pq_m, bits, exact = resolve(settings, encoder.dim, passages, tokens, mean)
    matrix = np.concatenate(vectors).astype(np.float32)
    del vectors
    spec = codecs.parse_codec(settings.codec)
    codec = codecs.FaissIVFCodec(spec, encoder.dim, pq_m, bits)
    if progress:  # k-means reports nothing while it runs: say what it is doing
        print(
            f"index: training the compression ({settings.codec}, nlist {nlist}, "
            f"{settings.kmeans_iterations} k-means iterations) on {tokens} tokens ...",
            file=sys.stderr,
            flush=True,
        )
    codec.train(matrix, nlist, settings.kmeans_iterations, settings.seed)
    with atomic.atomic_path(os.path.join(index_dir, QUANTIZER_FILE), per_process=False) as tmp:
        codec.save(tmp)
    if progress:
        print(
            f"trained the compression ({settings.codec}: {codec.code_size} bytes per token, "
            f"nlist {nlist}) on {tokens} tokens of {len(sample)} passages in "
            f"{time.time() - started:.1f}s",
            file=sys.stderr,
        )
    return CodecMeta(
        codec=settings.codec,
        nlist=nlist,
        pq_m=pq_m,
        pq_bits=bits,
        code_size=codec.code_size,
        exact=exact,
        train_passages=len(sample),
        train_tokens=tokens,
    )


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
        corpus = CorpusMeta.of(corpus_path, passages).to_json()
        _check_existing(info, info_path, encoder, settings, corpus)
        meta = IndexMeta.from_json(info, info_path)
    else:
        passages = _count_passages(corpus_path, strict)
        resolved = _train(index_dir, corpus_path, encoder, settings, passages, strict, progress)
        meta = IndexMeta(
            encoder=encoder.fingerprint,
            dim=int(encoder.dim),
            requested=_requested(settings),
            settings=resolved,
            corpus=CorpusMeta.of(corpus_path, passages),
            num_shards=-(-passages // settings.shard_passages),
        )
        info = meta.to_json()
        write_json(info_path, info)
    if not train_only:
        _build_shards(
            corpus_path, index_dir, encoder, settings, meta, host_id, num_hosts, strict, progress
        )
    return info


def _build_shards(
    corpus_path, index_dir, encoder, settings, meta: IndexMeta, host_id, num_hosts, strict, progress
):
    exact = meta.settings.exact
    mine = [s for s in range(meta.num_shards) if s % num_hosts == host_id]
    writers: dict[int, ShardWriter] = {}
    done_passages = 0
    for shard in mine:
        folder = shard_dir(index_dir, shard)
        if os.path.isfile(os.path.join(folder, SHARD_FILE)):
            done_passages += meta.passages_of(shard)
            continue
        writers[shard] = ShardWriter(folder, meta, shard, meta.passages_of(shard), exact)
        done_passages += writers[shard].state["passages"]
    total = sum(meta.passages_of(s) for s in mine)
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
    codec = codecs.load_codec(os.path.join(index_dir, QUANTIZER_FILE), meta.settings)
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
        if seen + 1 != meta.corpus.passages:
            raise ConfigError(
                f"{corpus_path} now has {seen + 1} passages, but the index in {index_dir} was "
                f"started with {meta.corpus.passages}: the corpus changed"
            )

    bar = progress_lib.progress(total, "index", "passages", progress, initial=done_passages)
    started, encoded, count = time.time(), 0, 0
    with progress_lib.closing(bar):
        for shard, chunk, docids, tokens in formats.prefetch(chunks(), name="rankt5-index-read"):
            writer = writers[shard]
            if chunk != writer.done_chunks:  # pragma: no cover (the reader follows the writers)
                raise ConfigError(f"shard {shard}: chunk {chunk} follows {writer.done_chunks - 1}")
            embeddings = encoder.encode(tokens)
            lengths = np.array([len(e) for e in embeddings], np.int64)
            vectors = (
                np.concatenate(embeddings).astype(np.float32)
                if len(embeddings) and lengths.sum()
                else np.zeros((0, meta.dim), np.float32)
            )
            lists, codes = codec.encode(vectors)
            writer.append(docids, vectors, lengths, lists, codes)
            count += 1
            fault("chunk", count)
            writer.commit()
            encoded += len(docids)
            if bar is not None:
                bar.update(len(docids))
            if writer.state["passages"] == writer.passages:
                finalized += 1
                writer.finalize(finalized)
                del writers[shard]
    if progress:
        elapsed = max(time.time() - started, 1e-9)
        complete = all(
            os.path.isfile(os.path.join(shard_dir(index_dir, s), SHARD_FILE))
            for s in range(meta.num_shards)
        )
        stats = index_stats(index_dir) if complete else None
        line = f"encoded {encoded} passages in {elapsed:.1f}s ({encoded / elapsed:.1f} passages/s)"
        if stats:
            line += (
                f"; {stats['tokens']} tokens, {stats['compressed_bytes_per_token']:.1f} bytes/token "
                f"compressed vs {stats['flat_bytes_per_token']} flat float32 "
                f"({100 * stats['compressed_reduction']:.1f}% smaller)"
            )
        print(line, file=sys.stderr)


# -- reading --------------------------------------------------------------------------------
def read_index_info(index_dir: str) -> dict:
    """index.json of a complete index (every shard finalized), as JSON; `ConfigError`
    otherwise. (`IndexMeta.read` gives it typed.)"""
    IndexMeta.read(index_dir)
    return read_json(os.path.join(index_dir, INDEX_FILE))


def index_stats(index_dir: str) -> dict:
    """Sizes of a complete index: tokens, and bytes per token of each part.

    `compressed_bytes_per_token` counts what compressed search reads from disk: the codes,
    the int32 document number of each token, the list offsets and the quantizer (centroids and
    codebooks), over all tokens. Faiss holds an int64 id per token beside each code in memory
    (`search_memory_bytes_per_token`). `flat_bytes_per_token` is float32 vectors alone;
    `exact_bytes_per_token` what exact search and `--rescore` read (vectors and doc numbers).
    """
    meta = IndexMeta.read(index_dir)
    shards = [ShardMeta.read(index_dir, s) for s in range(meta.num_shards)]
    tokens = sum(s.tokens for s in shards)
    sizes: dict[str, int] = {}
    for summary in shards:
        for name, size in summary.bytes.items():
            sizes[name] = sizes.get(name, 0) + size
    quantizer = os.path.getsize(os.path.join(index_dir, QUANTIZER_FILE))
    compressed = sizes["codes.npy"] + sizes["doc_index.npy"] + sizes["list_offsets.npy"]
    compressed += quantizer
    per = max(tokens, 1)
    flat = 4 * meta.dim
    codec = meta.settings
    return {
        "passages": meta.corpus.passages,
        "tokens": tokens,
        "tokens_per_passage": tokens / max(meta.corpus.passages, 1),
        "dim": meta.dim,
        "codec": codec.codec,
        "nlist": codec.nlist,
        "pq_m": codec.pq_m,
        "pq_bits": codec.pq_bits,
        "code_size": codec.code_size,
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
