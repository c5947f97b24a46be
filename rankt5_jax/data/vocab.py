"""SentencePiece vocabulary with T5's extra ids, and the token-level RankT5 input template.

T5's vocabulary is a SentencePiece model (pad 0, EOS 1, UNK 2) followed by 100 sentinel ids:
`<extra_id_0>` is the last id (`base_size + 99`), `<extra_id_99>` is `base_size`. With the standard
32000-piece model, `<extra_id_10>` is 32089. Ids are always looked up, never hard-coded.

`Vocabulary` uses the sentencepiece library directly (no TensorFlow import, batch encoding in C++);
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import sentencepiece as spm

from rankt5_jax.data import paths
from rankt5_jax.errors import ConfigError

PAD_ID = 0
EOS_ID = 1
_EXTRA_ID = re.compile(r"^<extra_id_(\d+)>$")


def model_file(path: str | os.PathLike) -> str:
    """The local path of the SentencePiece model `path` (sentencepiece, and seqio through
    TensorFlow's GCS client, read local files only): a model in a bucket is downloaded to this
    host. A missing model: a one-line `ConfigError`."""
    path = os.fspath(path)
    if paths.is_remote(path) and paths.isfile(path):
        path = paths.local_copy(path)
    if not os.path.isfile(path):
        raise ConfigError(f"SentencePiece model not found: {path}")
    return path


class Vocabulary:
    """A T5 SentencePiece vocabulary.

    Args:
      path: the SentencePiece model file (`spiece.model`).
      extra_ids: number of sentinel ids appended after the pieces (100 for T5).
    """

    def __init__(self, path: str | os.PathLike, extra_ids: int = 100):
        self.path = model_file(path)
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.Load(self.path)
        except Exception as err:  # sentencepiece raises OSError/RuntimeError variants
            raise ConfigError(f"{self.path}: not a SentencePiece model ({err})") from err
        if self._sp.pad_id() != PAD_ID or self._sp.eos_id() != EOS_ID:
            raise ConfigError(
                f"{self.path}: T5 vocabularies need pad id 0 and EOS id 1, got pad "
                f"{self._sp.pad_id()} and EOS {self._sp.eos_id()}"
            )
        self.extra_ids = extra_ids
        self.base_size = self._sp.GetPieceSize()

    @property
    def size(self) -> int:
        return self.base_size + self.extra_ids

    @property
    def eos_id(self) -> int:
        return EOS_ID

    @property
    def pad_id(self) -> int:
        return PAD_ID

    def pieces(self) -> list[str]:
        """The SentencePiece pieces, by id (sentinels not included)."""
        return [self._sp.IdToPiece(i) for i in range(self.base_size)]

    def encode(self, text: str) -> list[int]:
        return self._sp.EncodeAsIds(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self._sp.Encode(list(texts), num_threads=os.cpu_count() or 1)

    def decode(self, ids: Sequence[int]) -> str:
        pieces = []
        normal: list[int] = []
        for token in ids:
            token = int(token)
            if token == PAD_ID:
                continue
            if token >= self.base_size:
                if normal:
                    pieces.append(self._sp.DecodeIds(normal))
                    normal = []
                pieces.append(f"<extra_id_{self.size - 1 - token}>")
            elif token == EOS_ID:
                break
            else:
                normal.append(token)
        if normal:
            pieces.append(self._sp.DecodeIds(normal))
        return " ".join(p for p in pieces if p)

    def token_id(self, token: str) -> int:
        """The id of one token: `<extra_id_N>`, text that encodes to one piece (`true` ->
        `▁true`, 1176 in T5's vocabulary, as monoT5 reads it), or else a piece by name (`▁true`,
        or a user-defined piece such as `true` in the generated test vocabularies).

        Text is tried before piece names: T5's vocabulary may also hold a word-internal piece
        `true`, which is not the token monoT5 was trained to emit."""
        match = _EXTRA_ID.match(token)
        if match:
            index = int(match.group(1))
            if index >= self.extra_ids:
                raise ConfigError(f"{token} is beyond the {self.extra_ids} extra ids")
            return self.size - 1 - index
        ids = self.encode(token)
        if len(ids) == 1 and ids[0] != self._sp.unk_id():
            return ids[0]
        piece_id = self._sp.PieceToId(token)
        if piece_id != self._sp.unk_id() or token == self._sp.IdToPiece(self._sp.unk_id()):
            return piece_id
        raise ConfigError(f"{token!r} is not a single token of {self.path} (it encodes to {ids})")


def padded_vocab_size(size: int, multiple: int = 128) -> int:
    """Embedding rows for a vocabulary: rounded up as T5 does (32100 -> 32128)."""
    return -(-size // multiple) * multiple


# The RankT5 input template's two text parts, shared by `InputTemplate` (Python) and the seqio
# preprocessor `build_inputs` (TensorFlow): `{QUERY_PREFIX}{q} {DOCUMENT_PREFIX} {d}` + EOS.
QUERY_PREFIX = "Query: "
DOCUMENT_PREFIX = "Document:"
# Pair templates (`{q}`: the query, `{d}`: the document): RankT5's, and monoT5's as published
# (castorini's checkpoints; pyterrier-t5 and rerankers build it so).
RANKT5_TEMPLATE = "Query: {q} Document: {d}"
MONOT5_TEMPLATE = "Query: {q} Document: {d} Relevant:"


def template_parts(template: str) -> tuple[str, str, str]:
    """`"{prefix}{q}{middle}{d}{suffix}"` -> `(prefix, middle, suffix)`, the middle and suffix
    stripped (they are encoded as words of their own): RankT5's template gives
    `("Query: ", "Document:", "")`, monoT5's `("Query: ", "Document:", "Relevant:")`."""
    if not isinstance(template, str) or template.count("{q}") != 1 or template.count("{d}") != 1:
        raise ConfigError(f"input template {template!r} needs one {{q}} and one {{d}}")
    prefix, _, rest = template.partition("{q}")
    middle, sep, suffix = rest.partition("{d}")
    if not sep:
        raise ConfigError(f"input template {template!r}: {{q}} must come before {{d}}")
    return prefix, middle.strip(), suffix.strip()


class InputTemplate:
    """A pair template (`Query: {q} Document: {d}` by default) then EOS, built from tokens so
    truncation is exact.

    The query part (`Query: {q}`) is cut only beyond `max_query_length` tokens; the document
    (`Document: {title} {text}`) is cut to fit `max_length`; the text after the document
    (monoT5's `Relevant:`) and EOS always end the sequence.

    Args:
      vocab: the vocabulary.
      max_length: total tokens including EOS.
      max_query_length: tokens kept of `Query: {q}`.
      add_eos: append EOS (T5 inputs end with it).
      template: `{q}` and `{d}` in text (`RANKT5_TEMPLATE`, `MONOT5_TEMPLATE`, ...).
    """

    def __init__(
        self,
        vocab: Vocabulary,
        max_length: int = 512,
        max_query_length: int = 64,
        add_eos: bool = True,
        template: str = RANKT5_TEMPLATE,
    ):
        self.vocab = vocab
        self.max_length = max_length
        self.max_query_length = max_query_length
        self.add_eos = add_eos
        self.template = template
        self._query_prefix, doc_prefix, suffix = template_parts(template)
        self._doc_prefix = vocab.encode(doc_prefix) if doc_prefix else []
        self._suffix = vocab.encode(suffix) if suffix else []
        self._reserved = len(self._doc_prefix) + len(self._suffix) + int(add_eos)
        if max_length < self._reserved + 2:
            raise ConfigError(f"max_length={max_length} leaves no room for the template")
        self.max_query_length = min(max_query_length, max_length - self._reserved - 1)

    def query_tokens(self, query: str) -> list[int]:
        return self.vocab.encode(self._query_prefix + query)[: self.max_query_length]

    def join(self, query_ids: Sequence[int], doc_ids: Sequence[int]) -> list[int]:
        """Joins an encoded query part and encoded document text, truncating the document."""
        budget = self.max_length - len(query_ids) - self._reserved
        tokens = list(query_ids) + self._doc_prefix + list(doc_ids[: max(budget, 0)])
        tokens += self._suffix
        if self.add_eos:
            tokens.append(EOS_ID)
        return tokens

    def encode_pairs(self, query: str, docs: Sequence[str]) -> list[list[int]]:
        query_ids = self.query_tokens(query)
        return [self.join(query_ids, doc_ids) for doc_ids in self.vocab.encode_batch(docs)]
