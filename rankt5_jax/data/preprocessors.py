"""seqio preprocessors that turn per-query records into RankT5 lists.

Prepared records (see `prepare.py`) hold, per query: `qid`, `query`, the positives (`pos_ids`,
`pos_texts`, `pos_labels`) and the retriever's candidates in rank order (`cand_ids`, `cand_texts`,
`cand_labels`, grade 0 when unjudged).

Training lists (paper section 5.1): one positive (cycling through a query's positives across
epochs) and `list_size - 1` negatives sampled uniformly without replacement from the candidates not
judged relevant (grade <= 0). Sampling is a pure function of (seed, query id, epoch): a resumed or
repeated run sees exactly the same lists. Lists with too few negatives are padded (`mask=False`).
For pointwise losses, `upsample_positives=True` repeats the positive as many times as there are
negatives (the list grows to `2 * (list_size - 1)`).

Inputs are built at the token level: `Query: {q}` (cut only beyond `max_query_length`),
`Document:`, the document tokens cut to fit, then EOS, so the query and EOS always survive.
Padded list items are all-zero token rows.
"""

from __future__ import annotations

import functools

import tensorflow as tf

from rankt5_jax.data.vocab import DOCUMENT_PREFIX, EOS_ID, QUERY_PREFIX

_HASH_BUCKETS = 2**31 - 1


def _sequence_length(sequence_length, key: str = "inputs") -> int:
    length = sequence_length[key]
    return int(length[-1]) if isinstance(length, list | tuple) else int(length)


def repeat_with_epoch(dataset: tf.data.Dataset, num_epochs: int | None = None) -> tf.data.Dataset:
    """Repeats the records, adding an int64 `epoch` feature (0, 1, ...); `None`: forever."""
    epochs = tf.data.Dataset.range(num_epochs) if num_epochs else tf.data.Dataset.range(2**62)
    return epochs.flat_map(lambda epoch: dataset.map(lambda ex: dict(ex, epoch=epoch)))


def _stateless_seed(seed: int, qid: tf.Tensor, epoch: tf.Tensor) -> tf.Tensor:
    key = tf.strings.to_hash_bucket_fast(qid, _HASH_BUCKETS)
    mixed = tf.cast(seed, tf.int64) * 1_000_003 + tf.cast(epoch, tf.int64)
    return tf.stack([mixed % _HASH_BUCKETS, key])


def _pad_list(values: tf.Tensor, size: int, fill) -> tf.Tensor:
    """Pads a 1-D list feature to the static `size` (T5X needs fully known shapes)."""
    padding = tf.fill([size - tf.size(values)], tf.constant(fill, values.dtype))
    return tf.ensure_shape(tf.concat([values, padding], 0), [size])


def sample_list_tf(
    example: dict[str, tf.Tensor], list_size: int, seed: int, upsample_positives: bool
) -> dict[str, tf.Tensor]:
    """One training list from one prepared record (TF graph code; see module docstring)."""
    epoch = example.get("epoch", tf.constant(0, tf.int64))
    stateless = _stateless_seed(seed, example["qid"], epoch)
    num_pos = tf.size(example["pos_ids"], out_type=tf.int64)
    pos_index = tf.math.floormod(epoch, tf.maximum(num_pos, 1))
    pos_text = tf.gather(example["pos_texts"], pos_index)[None]
    pos_label = tf.cast(tf.gather(example["pos_labels"], pos_index), tf.float32)[None]

    negatives = tf.where(example["cand_labels"] <= 0)[:, 0]
    keys = tf.random.stateless_uniform(tf.shape(negatives), seed=stateless)
    chosen = tf.gather(negatives, tf.argsort(keys))[: list_size - 1]
    neg_texts = tf.gather(example["cand_texts"], chosen)
    num_neg = tf.size(chosen)

    if upsample_positives:
        repeats = tf.maximum(num_neg, 1)
        texts = tf.concat([tf.repeat(pos_text, repeats), neg_texts], 0)
        labels = tf.concat([tf.repeat(pos_label, repeats), tf.zeros([num_neg])], 0)
        out_size = 2 * (list_size - 1)
    else:
        texts = tf.concat([pos_text, neg_texts], 0)
        labels = tf.concat([pos_label, tf.zeros([num_neg])], 0)
        out_size = list_size
    return {
        "qid": example["qid"],
        "query": example["query"],
        "doc_texts": _pad_list(texts, out_size, ""),
        "label": _pad_list(labels, out_size, 0.0),
        "mask": _pad_list(tf.ones_like(labels, tf.bool), out_size, False),
    }


def sample_training_lists(
    dataset: tf.data.Dataset,
    list_size: int = 36,
    seed: int = 0,
    upsample_positives: bool = False,
    num_epochs: int | None = None,
) -> tf.data.Dataset:
    """seqio preprocessor: records -> training lists, repeated `num_epochs` times (None: forever)."""
    dataset = repeat_with_epoch(dataset, num_epochs)
    fn = functools.partial(
        sample_list_tf, list_size=list_size, seed=seed, upsample_positives=upsample_positives
    )
    return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def candidate_lists(dataset: tf.data.Dataset, max_candidates: int = 1000) -> tf.data.Dataset:
    """seqio preprocessor for evaluation: the first `max_candidates` candidates in run order with
    their grades, padded to `max_candidates` (`mask=False`), carrying `qid` and `docids`."""

    def convert(example):
        ids = example["cand_ids"][:max_candidates]
        texts = example["cand_texts"][:max_candidates]
        labels = tf.cast(example["cand_labels"][:max_candidates], tf.float32)
        return {
            "qid": example["qid"],
            "targets_pretokenized": example["qid"],  # seqio evaluators read targets from here
            "query": example["query"],
            "docids": _pad_list(ids, max_candidates, ""),
            "doc_texts": _pad_list(texts, max_candidates, ""),
            "label": _pad_list(labels, max_candidates, 0.0),
            "mask": _pad_list(tf.ones_like(ids, tf.bool), max_candidates, False),
        }

    return dataset.map(convert, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def build_inputs(
    dataset: tf.data.Dataset,
    sequence_length,
    output_features,
    max_query_length: int = 64,
    add_eos: bool = True,
) -> tf.data.Dataset:
    """seqio preprocessor: `query` + `doc_texts [L]` -> `inputs [L, T]` (template, truncation),
    `targets [L, 1]` (zeros). T is `sequence_length["inputs"]`; padded items become zero rows."""
    length = _sequence_length(sequence_length)
    vocab = output_features["inputs"].vocabulary
    prefix = vocab.encode_tf(tf.constant(DOCUMENT_PREFIX))
    eos = tf.constant([EOS_ID] if add_eos else [], tf.int32)

    def convert(example):
        query = vocab.encode_tf(tf.strings.join([QUERY_PREFIX, example["query"]]))[
            :max_query_length
        ]
        query = query[: length - tf.size(prefix) - int(add_eos) - 1]  # >= 1 document token
        docs = vocab.tf_tokenizer.tokenize(example["doc_texts"])  # ragged [L, None]
        budget = length - tf.size(query) - tf.size(prefix) - int(add_eos)
        docs = tf.cast(docs[:, : tf.maximum(budget, 0)], tf.int32)
        num_items = tf.shape(example["doc_texts"])[0]
        head = tf.tile(tf.concat([query, prefix], 0)[None], [num_items, 1])
        tail = tf.tile(eos[None], [num_items, 1])
        tokens = tf.concat(
            [tf.RaggedTensor.from_tensor(head), docs, tf.RaggedTensor.from_tensor(tail)], 1
        )
        tokens = tokens.to_tensor(default_value=0, shape=[None, length])
        tokens = tokens * tf.cast(example["mask"], tf.int32)[:, None]
        static_items = example["doc_texts"].shape[0]  # known from the list preprocessors
        out = {k: v for k, v in example.items() if k not in ("doc_texts", "query", "epoch")}
        out["inputs"] = tf.ensure_shape(tokens, [static_items, length])
        out["targets"] = tf.ensure_shape(tf.zeros([num_items, 1], tf.int32), [static_items, 1])
        return out

    return dataset.map(convert, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
