"""The token index's compression, one pluggable codec per scheme (`rankt5 index --codec NAME`).

    codec = make_codec("ivfsq4", dim=128)           # or "ivfpq16", "opq16", "ivfres2", ...
    codec.train(sample_vectors, nlist=2048, iterations=20, seed=0)
    codec.save("index_dir/quantizer.faiss")
    lists, codes = codec.encode(vectors)            # int32 [n], uint8 [n, codec.code_size]
    codec = load_codec("index_dir/quantizer.faiss", meta)      # meta: an `index_meta.CodecMeta`
    search = codec.open_lists(offsets, codes, ids, nprobe=32)  # one shard's lists
    scores, ids = search(queries, k)                # the k best ids of each query row

A `Codec` (the protocol below) assigns each token to an inverted list (a coarse centroid) and a
fixed-size code; the index stores the codes grouped by list (`codes.npy`, `list_offsets.npy`)
with the document number of each token beside them, and hands them back to the codec to search.
Every codec here is a Faiss IVF index with inner product and residual coding (the token minus
its list's centroid), trained on a seeded sample and encoded with `sa_encode`:

| name | Faiss | code bytes per token | what |
|---|---|---|---|
| `ivfpq` | `IndexIVFPQ` | `pq_m` (`--pq_m`, 0: dim / 8) | PQ of the residual (the index's codec before codecs existed) |
| `ivfpqN` | `IndexIVFPQ`, M = N | N | PQ at N bytes (`ivfpq4`, `ivfpq8`, `ivfpq16`, `ivfpq32`, ...) |
| `opq`, `opqN` | `OPQMatrix` + `IndexIVFPQ` | N (dim / 8) | a learnt rotation before PQ |
| `ivfresB` | `IndexIVFPQ`, M = dim, B bits | dim x B / 8 | ColBERTv2's centroid + B-bit residual per dimension (B = 1, 2, 4): a 1-D quantizer of 2**B levels per dimension, learnt by k-means |
| `ivfsq4`, `ivfsq8` | `IndexIVFScalarQuantizer` QT_4bit / QT_8bit | dim / 2, dim | uniform 4- or 8-bit scalar quantization of the residual per dimension |
| `ivfflat` | `IndexIVFFlat` | 4 dim | no compression (float32): only the inverted lists' probing is approximate |

Faiss has no 1- or 2-bit per-dimension scalar quantizer of its own, so `ivfresB` is Faiss's PQ
with one dimension per sub-vector: each dimension's residual gets its own 2**B-level codebook
(ColBERTv2 uses one set of quantile buckets for all dimensions; k-means per dimension is at
least as fine). On disk a token costs its code plus 4 bytes (its int32 document number), plus
the quantizer (centroids and codebooks) once.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Protocol

import numpy as np

from rankt5_jax.errors import ConfigError

# The smallest codec keeping recall@100 >= 0.95 of exact search on a trained tiny UR2N model
# (docs/retrieval.md, "Compression: codecs"; tests/retrieval/test_codecs.py): 1 byte per
# dimension. `ivfpq` (dim / 8 bytes) was the default before codecs existed.
DEFAULT_CODEC = "ivfsq8"
NAMES_HELP = (
    "ivfpq, ivfpqN (N bytes), opq, opqN, ivfres1, ivfres2, ivfres4, ivfsq4, ivfsq8, ivfflat"
)
_NAME = re.compile(r"^(ivfpq|opq|ivfres|ivfsq|ivfflat)(\d*)$")


class Codec(Protocol):
    """What the token index needs of a compression scheme."""

    name: str
    code_size: int  # bytes per token of `encode`'s codes

    def train(self, vectors: np.ndarray, nlist: int, iterations: int, seed: int) -> None:
        """Learns the coarse centroids and the code's parameters from a sample, seeded."""

    def save(self, path: str) -> None:
        """Writes the trained, empty codec (read back by `load_codec`)."""

    def encode(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """float32 [n, dim] -> (inverted list int32 [n], codes uint8 [n, code_size])."""

    def open_lists(self, offsets: np.ndarray, codes: np.ndarray, ids: np.ndarray, nprobe: int):
        """A search over one shard's codes (rows grouped by list, list l = rows
        `offsets[l]:offsets[l + 1]`, `ids` int64 per row): `search(q [R, dim], k) ->
        (scores float32 [R, k], ids int64 [R, k])`, -1 ids past what the lists hold."""


@dataclasses.dataclass(frozen=True)
class CodecSpec:
    """A codec name, parsed: `family` (ivfpq, opq, ivfres, ivfsq, ivfflat) and its number."""

    name: str
    family: str
    number: int  # 0: none given

    def resolve(self, dim: int, pq_m: int, pq_bits: int, train_tokens: int) -> tuple[int, int]:
        """(pq_m, bits) for this width and training sample (`pq_m`, `pq_bits`: the flags,
        read by ivfpq and opq; 0: dim / 8)."""
        if self.family in ("ivfpq", "opq"):
            m = self.number or pq_m or max(1, dim // 8)
            if dim % m:
                raise ConfigError(f"pq_m={m} must divide the embedding width {dim}")
            # PQ codebooks need at least 2**bits training points; tiny corpora get fewer bits.
            bits = min(pq_bits, max(1, int(math.floor(math.log2(max(train_tokens, 2))))))
            return m, bits
        if self.family == "ivfres":
            return dim, self.number
        if self.family == "ivfsq":
            return 0, self.number
        return 0, 32  # ivfflat


def parse_codec(name: str) -> CodecSpec:
    """The `CodecSpec` of `name`; a one-line `ConfigError` naming the valid names otherwise."""
    match = _NAME.match(name or "")
    number = int(match.group(2)) if match and match.group(2) else 0
    valid = (
        match is not None
        and {
            "ivfpq": number >= 0,
            "opq": number >= 0,
            "ivfres": number in (1, 2, 4),
            "ivfsq": number in (4, 8),
            "ivfflat": match.group(2) == "",
        }[match.group(1)]
    )
    if not valid:
        raise ConfigError(f"--codec {name!r}: not a codec; use one of {NAMES_HELP}")
    return CodecSpec(name, match.group(1), number)


class FaissIVFCodec:
    """Every codec of this module: a Faiss IVF index (inner product, residual codes)."""

    def __init__(self, spec: CodecSpec, dim: int, pq_m: int, bits: int, index=None):
        self.spec = spec
        self.name = spec.name
        self.dim = dim
        self.pq_m = pq_m
        self.bits = bits
        self.index = index

    # -- building ---------------------------------------------------------------------------
    def _new_index(self, nlist: int):
        import faiss

        coarse = faiss.IndexFlatIP(self.dim)
        ip = faiss.METRIC_INNER_PRODUCT
        family = self.spec.family
        if family in ("ivfpq", "opq", "ivfres"):
            ivf = faiss.IndexIVFPQ(coarse, self.dim, nlist, self.pq_m, self.bits, ip)
        elif family == "ivfsq":
            qtype = {4: faiss.ScalarQuantizer.QT_4bit, 8: faiss.ScalarQuantizer.QT_8bit}
            ivf = faiss.IndexIVFScalarQuantizer(coarse, self.dim, nlist, qtype[self.bits], ip, True)
        else:
            ivf = faiss.IndexIVFFlat(coarse, self.dim, nlist, ip)
        return ivf  # (Faiss's Python wrapper keeps `coarse` alive with `ivf`)

    def train(self, vectors: np.ndarray, nlist: int, iterations: int, seed: int) -> None:
        import faiss

        ivf = self._new_index(nlist)
        ivf.cp.seed = seed
        ivf.cp.niter = iterations
        ivf.cp.spherical = True  # unit-length token embeddings: centroids on the sphere
        ivf.cp.verbose = False
        if hasattr(ivf, "pq"):
            ivf.pq.cp.seed = seed + 1
            ivf.pq.cp.niter = iterations
            ivf.pq.cp.verbose = False
        index = ivf
        if self.spec.family == "opq":
            opq = faiss.OPQMatrix(self.dim, self.pq_m)
            opq.niter = iterations
            index = faiss.IndexPreTransform(opq, ivf)
        index.train(np.ascontiguousarray(vectors, np.float32))
        self.index = index

    def save(self, path: str) -> None:
        import faiss

        faiss.write_index(self.index, path)

    @property
    def ivf(self):
        import faiss

        return faiss.extract_index_ivf(self.index)

    @property
    def code_size(self) -> int:
        return int(self.ivf.code_size)

    def encode(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        coarse_bytes = self.ivf.coarse_code_size()
        if not len(vectors):
            return np.zeros(0, np.int32), np.zeros((0, self.code_size), np.uint8)
        codes = self.index.sa_encode(np.ascontiguousarray(vectors, np.float32))
        lists = np.zeros(len(codes), np.int64)
        for byte in range(coarse_bytes):
            lists |= codes[:, byte].astype(np.int64) << (8 * byte)
        return lists.astype(np.int32), np.ascontiguousarray(codes[:, coarse_bytes:])

    # -- searching --------------------------------------------------------------------------
    def open_lists(self, offsets: np.ndarray, codes: np.ndarray, ids: np.ndarray, nprobe: int):
        import faiss

        index = faiss.clone_index(self.index)
        ivf = faiss.extract_index_ivf(index)
        offsets = np.asarray(offsets)
        invlists = ivf.invlists
        for lst in np.nonzero(np.diff(offsets))[0]:
            begin, end = int(offsets[lst]), int(offsets[lst + 1])
            part_ids = np.ascontiguousarray(ids[begin:end], np.int64)
            block = np.ascontiguousarray(codes[begin:end])
            invlists.add_entries(
                int(lst), end - begin, faiss.swig_ptr(part_ids), faiss.swig_ptr(block)
            )
        ivf.ntotal = index.ntotal = int(offsets[-1])
        ivf.nprobe = nprobe

        def search(queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
            found_scores, found = index.search(np.ascontiguousarray(queries, np.float32), k)
            return np.where(found >= 0, found_scores, -np.inf).astype(np.float32), found

        return search


def make_codec(name: str, dim: int, pq_m: int = 0, pq_bits: int = 8, train_tokens: int = 1 << 20):
    """An untrained codec `name` for `dim`-wide tokens (see the module doc for the names)."""
    spec = parse_codec(name)
    m, bits = spec.resolve(dim, pq_m, pq_bits, train_tokens)
    return FaissIVFCodec(spec, dim, m, bits)


def load_codec(path: str, meta) -> FaissIVFCodec:
    """The trained codec saved at `path` (`meta`: the index's `index_meta.CodecMeta`)."""
    import faiss

    index = faiss.read_index(path)
    return FaissIVFCodec(parse_codec(meta.codec), index.d, meta.pq_m, meta.pq_bits, index)
