"""The token index's files and their typed descriptions (`index.json`, `shard.json`).

    meta = IndexMeta.read("index_dir")          # a complete index (every shard finalized)
    meta.settings.codec, meta.settings.nlist, meta.corpus.passages, meta.num_shards
    shard = ShardMeta.read("index_dir", 0)      # shard_00000/shard.json

`index.json` and `shard.json` keep the keys today's and earlier indexes wrote: an index written
before codecs existed has no `codec` (it is "ivfpq", the only one then) and no `code_size` (its
PQ codes' bytes: `ceil(pq_m * pq_bits / 8)`); both are filled in on reading, so every index
loads unchanged. The small file helpers (JSON and .npy written atomically through
`data.atomic`) live here too.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np

from rankt5_jax.data import atomic
from rankt5_jax.errors import ConfigError

FORMAT = 1
INDEX_FILE = "index.json"
QUANTIZER_FILE = "quantizer.faiss"
SHARD_FILE = "shard.json"
PROGRESS_FILE = "progress.json"
DOC_IDS_FILE = "doc_ids.txt"
LEGACY_CODEC = "ivfpq"  # what an index.json without a codec was built with


# -- small file helpers ---------------------------------------------------------------------
# One writer owns each index file and a resumed build rewrites it: `per_process=False` (a fixed
# temporary name, which the resumed build overwrites).
def write_json(path: str, value: Any) -> None:
    """Writes `value` as JSON (sorted keys) atomically."""
    atomic.write_json(path, value, end="\n", per_process=False, indent=1, sort_keys=True)


def read_json(path: str) -> Any:
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: unreadable ({err})") from err


def write_npy(path: str, array: np.ndarray) -> None:
    with atomic.atomic_open(path, "wb", per_process=False) as handle:
        np.save(handle, array, allow_pickle=False)


def shard_dir(index_dir: str, shard: int) -> str:
    return os.path.join(index_dir, f"shard_{shard:05d}")


# -- typed descriptions ---------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class CodecMeta:
    """The compression as built (`index.json` "settings": the resolved values).

    Attributes:
      codec: the codec's name (`codecs.CODECS`).
      nlist: inverted lists (coarse centroids).
      pq_m: PQ sub-vectors (PQ codecs; the embedding width for the b-bit residual codecs, 0
        for scalar quantizers and flat).
      pq_bits: bits per PQ sub-vector code (or per dimension for scalar quantizers; 32: flat).
      code_size: bytes per token of the codes (`codes.npy` rows).
      exact: float32 vectors stored beside the codes (exact search, `--rescore`).
      train_passages, train_tokens: the sample the compression was trained on.
    """

    codec: str
    nlist: int
    pq_m: int
    pq_bits: int
    code_size: int
    exact: bool
    train_passages: int
    train_tokens: int

    @classmethod
    def from_json(cls, value: dict) -> CodecMeta:
        codec = value.get("codec", LEGACY_CODEC)
        code_size = value.get("code_size")
        if code_size is None:  # written before codecs: PQ codes, packed bits
            code_size = -(-value["pq_m"] * value["pq_bits"] // 8)
        return cls(
            codec=codec,
            nlist=int(value["nlist"]),
            pq_m=int(value["pq_m"]),
            pq_bits=int(value["pq_bits"]),
            code_size=int(code_size),
            exact=bool(value["exact"]),
            train_passages=int(value["train_passages"]),
            train_tokens=int(value["train_tokens"]),
        )

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class CorpusMeta:
    """The corpus's identity: its path and size (an `irds:` id as it is, without a size)."""

    path: str
    bytes: int | None
    passages: int

    @classmethod
    def of(cls, corpus_path: str, passages: int) -> CorpusMeta:
        is_file = os.path.isfile(corpus_path)
        return cls(
            path=os.path.abspath(corpus_path) if is_file else corpus_path,
            bytes=os.path.getsize(corpus_path) if is_file else None,
            passages=passages,
        )

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class IndexMeta:
    """`index.json`: what was asked for, what was built, by which encoder, over which corpus.

    Attributes:
      encoder: the encoder's fingerprint (JSON; `xtr_encoder.TokenEncoder.fingerprint`).
      dim: the embedding width.
      requested: the `IndexSettings` as given (a rerun with others is refused).
      settings: the compression as built (`CodecMeta`).
      corpus: `CorpusMeta`.
      num_shards: shards of `requested["shard_passages"]` passages.
      format: the layout's version (`FORMAT`).
    """

    encoder: dict
    dim: int
    requested: dict
    settings: CodecMeta
    corpus: CorpusMeta
    num_shards: int
    format: int = FORMAT
    kind: str = "xtr"  # the retriever that reads it (`retrieval.base.Retriever.load`)

    @classmethod
    def from_json(cls, value: dict, path: str = INDEX_FILE) -> IndexMeta:
        if value.get("format") != FORMAT:
            raise ConfigError(
                f"{path}: index format {value.get('format')}, this version reads {FORMAT}"
            )
        try:
            corpus = value["corpus"]
            return cls(
                encoder=value["encoder"],
                dim=int(value["dim"]),
                requested=value["requested"],
                settings=CodecMeta.from_json(value["settings"]),
                corpus=CorpusMeta(corpus["path"], corpus["bytes"], int(corpus["passages"])),
                num_shards=int(value["num_shards"]),
                kind=value.get("kind", "xtr"),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(f"{path}: not a token index description ({err!r})") from err

    def to_json(self) -> dict:
        return {
            "format": self.format,
            "kind": self.kind,
            "encoder": self.encoder,
            "dim": self.dim,
            "requested": self.requested,
            "settings": self.settings.to_json(),
            "corpus": self.corpus.to_json(),
            "num_shards": self.num_shards,
        }

    @property
    def shard_passages(self) -> int:
        return int(self.requested["shard_passages"])

    def passages_of(self, shard: int) -> int:
        per = self.shard_passages
        return min(per, self.corpus.passages - shard * per)

    @classmethod
    def read(cls, index_dir: str, complete: bool = True) -> IndexMeta:
        """`index_dir`'s description; with `complete`, every shard must be finalized."""
        path = os.path.join(index_dir, INDEX_FILE)
        if not os.path.isfile(path):
            raise ConfigError(f"{index_dir} holds no token index ({INDEX_FILE} missing)")
        meta = cls.from_json(read_json(path), path)
        if complete:
            missing = [
                s
                for s in range(meta.num_shards)
                if not os.path.isfile(os.path.join(shard_dir(index_dir, s), SHARD_FILE))
            ]
            if missing:
                raise ConfigError(
                    f"{index_dir}: {len(missing)} of {meta.num_shards} shards are unfinished "
                    f"(first: shard {missing[0]}); run `rankt5 index` again to finish them"
                )
        return meta


@dataclasses.dataclass(frozen=True)
class ShardMeta:
    """`shard.json`, written last: the shard is complete.

    Attributes:
      shard: its number; passages, tokens: what it holds.
      exact: float32 vectors stored (`vectors.npy`).
      bytes: each final file's size.
    """

    shard: int
    passages: int
    tokens: int
    exact: bool
    bytes: dict

    @classmethod
    def read(cls, index_dir: str, shard: int) -> ShardMeta:
        path = os.path.join(shard_dir(index_dir, shard), SHARD_FILE)
        value = read_json(path)
        try:
            return cls(
                shard=int(value["shard"]),
                passages=int(value["passages"]),
                tokens=int(value["tokens"]),
                exact=bool(value["exact"]),
                bytes=dict(value["bytes"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(f"{path}: not a shard description ({err!r})") from err

    def write(self, index_dir: str) -> None:
        write_json(os.path.join(shard_dir(index_dir, self.shard), SHARD_FILE), self.to_json())

    def to_json(self) -> dict:
        return dataclasses.asdict(self)
