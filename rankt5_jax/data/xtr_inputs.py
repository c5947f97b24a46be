"""The token inputs of UR2N's XTR layer: queries and documents encoded on their own.

  query:     `Query: {q}` + EOS                  (`query_tokens`)
  document:  `Document: {title} {text}` + EOS    (`document_tokens`; no title: `Document: {text}`)

Each is cut to `max_length - 1` tokens before the EOS, so EOS always ends it. The prefixes are the
words of the ranker's own template (`Query: {q} Document: {d}`): the encoder below the XTR layer
is the ranker's, frozen, and was fine-tuned only on inputs carrying these markers; keeping them
keeps its inputs close to what it learnt, and tells the one shared encoder which side it reads
(as ColBERT's `[Q]`/`[D]` markers do). Every real token is embedded and indexed, the markers and
EOS included (their embeddings are contextual, like ColBERT's marker tokens); they cost two or
three index entries per document.

The same token ids in Python (indexing and search, `Vocabulary`) and in TensorFlow (training,
`query_tokens_tf` / `document_tokens_tf` over a seqio vocabulary), tested equal token for token.
The document text is `title text` as `rankt5 prepare` writes `*_texts` and `Corpus.text` reads it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rankt5_jax.data.vocab import EOS_ID, QUERY_PREFIX, Vocabulary
from rankt5_jax.errors import ConfigError

DOCUMENT_PREFIX = "Document: "


def document_text(title: str, text: str) -> str:
    """The document as the ranker reads it: `title text` (`text` alone without a title)."""
    return f"{title} {text}".strip() if title else text


def _check_length(max_length: int) -> int:
    if max_length < 2:
        raise ConfigError(f"max_length must leave room for a token and EOS, got {max_length}")
    return int(max_length)


def _cut(ids: Sequence[int], max_length: int) -> list[int]:
    return list(ids[: max_length - 1]) + [EOS_ID]


def query_tokens(vocab: Vocabulary, text: str, max_length: int) -> list[int]:
    """`Query: {text}` cut to `max_length - 1` tokens, then EOS."""
    return _cut(vocab.encode(QUERY_PREFIX + text), _check_length(max_length))


def document_tokens(vocab: Vocabulary, title: str, text: str, max_length: int) -> list[int]:
    """`Document: {title} {text}` cut to `max_length - 1` tokens, then EOS."""
    return _cut(
        vocab.encode(DOCUMENT_PREFIX + document_text(title, text)), _check_length(max_length)
    )


def query_tokens_batch(vocab: Vocabulary, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """`query_tokens` of many queries (one batched SentencePiece call)."""
    max_length = _check_length(max_length)
    return [_cut(ids, max_length) for ids in vocab.encode_batch([QUERY_PREFIX + t for t in texts])]


def document_tokens_batch(
    vocab: Vocabulary, titles: Sequence[str], texts: Sequence[str], max_length: int
) -> list[list[int]]:
    """`document_tokens` of many documents (one batched SentencePiece call)."""
    max_length = _check_length(max_length)
    if len(titles) != len(texts):
        raise ConfigError(f"{len(titles)} titles for {len(texts)} texts")
    joined = [DOCUMENT_PREFIX + document_text(a, b) for a, b in zip(titles, texts)]
    return [_cut(ids, max_length) for ids in vocab.encode_batch(joined)]


def _tokens_tf(vocab: Any, prefix: str, texts: Any, max_length: int) -> Any:
    import tensorflow as tf

    max_length = _check_length(max_length)
    texts = tf.convert_to_tensor(texts, tf.string)
    joined = tf.strings.join([tf.fill(tf.shape(texts), prefix), texts])
    ids = tf.cast(vocab.tf_tokenizer.tokenize(joined), tf.int32)[:, : max_length - 1]
    eos = tf.RaggedTensor.from_tensor(tf.fill([tf.shape(texts)[0], 1], EOS_ID))
    return tf.concat([ids, eos], 1).to_tensor(default_value=0, shape=[None, max_length])


def query_tokens_tf(vocab: Any, texts: Any, max_length: int) -> Any:
    """`query_tokens` in TensorFlow: query strings `[N]` -> int32 `[N, max_length]`, 0-padded.
    `vocab` is a `seqio.SentencePieceVocabulary` of the same SentencePiece model."""
    return _tokens_tf(vocab, QUERY_PREFIX, texts, max_length)


def document_tokens_tf(vocab: Any, texts: Any, max_length: int) -> Any:
    """`document_tokens` in TensorFlow: document texts `[N]` (`document_text(title, text)`, as
    prepared records' `*_texts` hold them) -> int32 `[N, max_length]`, 0-padded."""
    return _tokens_tf(vocab, DOCUMENT_PREFIX, texts, max_length)
