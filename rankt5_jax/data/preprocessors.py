"""seqio preprocessors that turn per-query records into RankT5 lists.

Prepared records (see `prepare.py`) hold, per query: `qid`, `query`, the positives (`pos_ids`,
`pos_texts`, `pos_labels`) and the retriever's candidates in rank order (`cand_ids`, `cand_texts`,
`cand_labels`, grade 0 when unjudged).

Training lists (paper section 5.1): one positive (cycling through a query's positives across
epochs) and `list_size - 1` negatives sampled uniformly without replacement from the candidates not
judged relevant (grade <= 0). Sampling is a pure function of (seed, query id, epoch): a resumed or
repeated run sees exactly the same lists. Lists with too few negatives are padded (`mask=False`).
For pointwise losses, `upsample_positives=True` repeats the positive as many times as there are
negatives (the list grows to `2 * (list_size - 1)`). `negatives="top"` takes the `list_size - 1`
highest-ranked candidates not judged relevant instead, in run order (FiT5's training lists: one
positive and the top-ranked negatives of the first stage; only the positive changes by epoch).

Inputs are built at the token level: `Query: {q}` (cut only beyond `max_query_length`),
`Document:`, the document tokens cut to fit, then EOS, so the query and EOS always survive.
Padded list items are all-zero token rows.

FiT5 (`with_features=True` on the list steps, then `build_feature_inputs`): the lists also carry
each item's first-stage score, title and body (`doc_scores`, `doc_titles`, `doc_bodies`; padded
with 0 and ""), and the inputs follow `data.features.FeatureTemplate` token for token,
`Query: {q} Title: {t} Feature: {f} Passage: {d} Relevant:` + EOS. The feature is discretised
over the list the model sees: in `per_query` mode the min and max are those of the list's real
items (`mask`), i.e. of the sampled training list (positive and its negatives), and of the first
`max_candidates` candidates for evaluation lists (as re-ranking normalises over the candidates it
re-ranks); `fixed` mode does not depend on the list.

UR2N's XTR layer (`build_xtr_inputs` after `sample_training_lists(list_size=2)`): the query and
each document are encoded on their own (`data.xtr_inputs`): `queries [Tq]` and `inputs [2, Td]`,
the positive and one hard negative sampled from the first-stage candidates as above.
"""

from __future__ import annotations

import functools

import tensorflow as tf

from rankt5_jax.data.features import FeatureConfig, FeatureTemplate
from rankt5_jax.data.vocab import EOS_ID, RANKT5_TEMPLATE, template_parts
from rankt5_jax.data.xtr_inputs import document_tokens_tf, query_tokens_tf

_HASH_BUCKETS = 2**31 - 1
NEGATIVES = ("random", "top")
# Per list item: (record field suffix, list feature, padding value). `texts` is RankT5's input;
# the others are FiT5's (`with_features=True`).
_TEXT_FIELD = ("texts", "doc_texts", "")
_FEATURE_FIELDS = (
    ("scores", "doc_scores", 0.0),
    ("titles", "doc_titles", ""),
    ("bodies", "doc_bodies", ""),
)


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


def _check_negatives(negatives: str) -> None:
    if negatives not in NEGATIVES:
        raise ValueError(f"negatives must be one of {NEGATIVES}, got {negatives!r}")


def _list_fields(with_features: bool) -> list[tuple]:
    """The per-item fields to carry. Records without FiT5's fields are refused when a FiT5 task
    is registered (`tasks_lib`): an assertion here would be a stateful op, and tf.data cannot
    save the position of an iterator over stateful ops (exact resume)."""
    return [_TEXT_FIELD, *_FEATURE_FIELDS] if with_features else [_TEXT_FIELD]


def sample_list_tf(
    example: dict[str, tf.Tensor],
    list_size: int,
    seed: int,
    upsample_positives: bool,
    negatives: str = "random",
    with_features: bool = False,
) -> dict[str, tf.Tensor]:
    """One training list from one prepared record (TF graph code; see module docstring)."""
    _check_negatives(negatives)
    fields = _list_fields(with_features)
    epoch = example.get("epoch", tf.constant(0, tf.int64))
    num_pos = tf.size(example["pos_ids"], out_type=tf.int64)
    pos_index = tf.math.floormod(epoch, tf.maximum(num_pos, 1))
    pos_label = tf.cast(tf.gather(example["pos_labels"], pos_index), tf.float32)[None]

    candidates = tf.where(example["cand_labels"] <= 0)[:, 0]  # in run order
    if negatives == "random":
        stateless = _stateless_seed(seed, example["qid"], epoch)
        keys = tf.random.stateless_uniform(tf.shape(candidates), seed=stateless)
        candidates = tf.gather(candidates, tf.argsort(keys))
    chosen = candidates[: list_size - 1]
    num_neg = tf.size(chosen)
    repeats = tf.maximum(num_neg, 1) if upsample_positives else 1
    out_size = 2 * (list_size - 1) if upsample_positives else list_size

    out = {"qid": example["qid"], "query": example["query"]}
    for name, key, fill in fields:
        positive = tf.gather(example[f"pos_{name}"], pos_index)[None]
        values = tf.concat(
            [tf.repeat(positive, repeats), tf.gather(example[f"cand_{name}"], chosen)], 0
        )
        out[key] = _pad_list(values, out_size, fill)
    labels = tf.concat([tf.repeat(pos_label, repeats), tf.zeros([num_neg])], 0)
    out["label"] = _pad_list(labels, out_size, 0.0)
    out["mask"] = _pad_list(tf.ones_like(labels, tf.bool), out_size, False)
    return out


def sample_training_lists(
    dataset: tf.data.Dataset,
    list_size: int = 36,
    seed: int = 0,
    upsample_positives: bool = False,
    num_epochs: int | None = None,
    negatives: str = "random",
    with_features: bool = False,
) -> tf.data.Dataset:
    """seqio preprocessor: records -> training lists, repeated `num_epochs` times (None: forever).

    `negatives`: "random" (uniform samples, a new draw each epoch) or "top" (the top-ranked
    candidates not judged relevant); `with_features`: carry FiT5's scores, titles and bodies."""
    _check_negatives(negatives)
    dataset = repeat_with_epoch(dataset, num_epochs)
    fn = functools.partial(
        sample_list_tf,
        list_size=list_size,
        seed=seed,
        upsample_positives=upsample_positives,
        negatives=negatives,
        with_features=with_features,
    )
    return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def candidate_lists(
    dataset: tf.data.Dataset, max_candidates: int = 1000, with_features: bool = False
) -> tf.data.Dataset:
    """seqio preprocessor for evaluation: the first `max_candidates` candidates in run order with
    their grades, padded to `max_candidates` (`mask=False`), carrying `qid` and `docids` (and,
    `with_features`, FiT5's scores, titles and bodies)."""

    fields = _list_fields(with_features)

    def convert(example):
        ids = example["cand_ids"][:max_candidates]
        labels = tf.cast(example["cand_labels"][:max_candidates], tf.float32)
        out = {
            "qid": example["qid"],
            "targets_pretokenized": example["qid"],  # seqio evaluators read targets from here
            "query": example["query"],
            "docids": _pad_list(ids, max_candidates, ""),
            "label": _pad_list(labels, max_candidates, 0.0),
            "mask": _pad_list(tf.ones_like(ids, tf.bool), max_candidates, False),
        }
        for name, key, fill in fields:
            out[key] = _pad_list(example[f"cand_{name}"][:max_candidates], max_candidates, fill)
        return out

    return dataset.map(convert, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def build_inputs(
    dataset: tf.data.Dataset,
    sequence_length,
    output_features,
    max_query_length: int = 64,
    add_eos: bool = True,
    template: str = RANKT5_TEMPLATE,
) -> tf.data.Dataset:
    """seqio preprocessor: `query` + `doc_texts [L]` -> `inputs [L, T]` (template, truncation),
    `targets [L, 1]` (zeros). T is `sequence_length["inputs"]`; padded items become zero rows.
    `template`: the pair template, token for token as `data.vocab.InputTemplate` builds it
    (monoT5's `MONOT5_TEMPLATE` keeps `Relevant:` and EOS, cutting the document first)."""
    length = _sequence_length(sequence_length)
    vocab = output_features["inputs"].vocabulary
    query_prefix, doc_prefix, suffix = template_parts(template)
    prefix = vocab.encode_tf(tf.constant(doc_prefix))
    tail = tf.concat(
        [vocab.encode_tf(tf.constant(suffix)), tf.constant([EOS_ID] if add_eos else [], tf.int32)],
        0,
    )

    def convert(example):
        query = vocab.encode_tf(tf.strings.join([query_prefix, example["query"]]))[
            :max_query_length
        ]
        query = query[: length - tf.size(prefix) - tf.size(tail) - 1]  # >= 1 document token
        docs = vocab.tf_tokenizer.tokenize(example["doc_texts"])  # ragged [L, None]
        budget = length - tf.size(query) - tf.size(prefix) - tf.size(tail)
        docs = tf.cast(docs[:, : tf.maximum(budget, 0)], tf.int32)
        num_items = tf.shape(example["doc_texts"])[0]
        head = tf.tile(tf.concat([query, prefix], 0)[None], [num_items, 1])
        tail_rows = tf.tile(tail[None], [num_items, 1])
        tokens = tf.concat(
            [tf.RaggedTensor.from_tensor(head), docs, tf.RaggedTensor.from_tensor(tail_rows)], 1
        )
        tokens = tokens.to_tensor(default_value=0, shape=[None, length])
        tokens = tokens * tf.cast(example["mask"], tf.int32)[:, None]
        static_items = example["doc_texts"].shape[0]  # known from the list preprocessors
        out = {k: v for k, v in example.items() if k not in ("doc_texts", "query", "epoch")}
        out["inputs"] = tf.ensure_shape(tokens, [static_items, length])
        out["targets"] = tf.ensure_shape(tf.zeros([num_items, 1], tf.int32), [static_items, 1])
        return out

    return dataset.map(convert, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def discretise_tf(scores: tf.Tensor, mask: tf.Tensor, config: FeatureConfig) -> tf.Tensor:
    """`data.features.discretise` in TensorFlow for one list: float scores `[L]` -> int32
    features in [0, 100]; `per_query` takes the min and max over the real items (`mask`).
    Computed in float64 with the same operations, so the integers are the same. Scores are
    finite (the run reader refuses others); no check here, as checks are stateful ops."""
    values = tf.cast(scores, tf.float64)
    real = tf.boolean_mask(values, mask)
    if config.mode == "fixed":
        low = tf.constant(config.low, tf.float64)
        high = tf.constant(config.high, tf.float64)
    else:  # per_query; an all-padding list gives low=inf > high=-inf: 100, rows zeroed anyway
        low, high = tf.reduce_min(real), tf.reduce_max(real)
    normed = (tf.clip_by_value(values, low, high) - low) / (high - low)
    features = tf.clip_by_value(tf.floor(normed * 100.0 + 1e-9), 0.0, 100.0)
    features = tf.where(high <= low, tf.constant(100.0, tf.float64), features)
    return tf.cast(features, tf.int32)


def _cut_rows(tokens: tf.RaggedTensor, keep: tf.Tensor) -> tf.RaggedTensor:
    """The first `keep[i]` tokens of each row `i` of a ragged `[L, None]` tensor."""
    lengths = tf.minimum(tokens.row_lengths(), keep)
    starts = tokens.row_starts()
    return tf.gather(tokens.values, tf.ragged.range(starts, starts + lengths))


def build_feature_inputs(
    dataset: tf.data.Dataset,
    sequence_length,
    output_features,
    features: dict | FeatureConfig | None = None,
    max_query_length: int = 64,
) -> tf.data.Dataset:
    """seqio preprocessor (FiT5): `query`, `doc_titles`, `doc_bodies`, `doc_scores` `[L]` ->
    `inputs [L, T]` and `targets [L, 1]` (zeros), the same token ids as
    `data.features.FeatureTemplate(vocab, features, T, max_query_length).join` (with
    `encode_list`'s query cut): `max_query_length` counts the query's own tokens; the space left
    goes to the query, then the title, then the body (cut first); the template's words, the
    feature and EOS always stay. Padded items become zero rows. T is `sequence_length["inputs"]`.
    """
    config = FeatureConfig.from_dict(features)
    length = _sequence_length(sequence_length)
    vocab = output_features["inputs"].vocabulary
    # The Python template checks that its words fit, and encodes them with the same model.
    template = FeatureTemplate(vocab, config, length, max_query_length)
    parts = template.parts  # [("text", ids) | ("field", name)] in template order
    fixed = sum(len(value) for kind, value in parts if kind == "text")
    tokenizer = vocab.tf_tokenizer

    def tokenize(texts):
        return tf.cast(tokenizer.tokenize(texts), tf.int32)

    def convert(example):
        num_items = tf.shape(example["doc_bodies"])[0]
        mask = example["mask"]
        query = tokenize(example["query"])[:max_query_length]
        fields = {}
        if config.uses_features:
            feature = discretise_tf(example["doc_scores"], mask, config)
            fields["f"] = tokenize(tf.strings.as_string(feature))
            spare = length - fixed - 1 - fields["f"].row_lengths()
        else:
            spare = tf.fill([num_items], tf.constant(length - fixed - 1, tf.int64))
        queries = tf.RaggedTensor.from_tensor(tf.tile(query[None], [num_items, 1]))
        for name, tokens in (
            ("q", queries),
            ("t", tokenize(example["doc_titles"])),
            ("d", tokenize(example["doc_bodies"])),
        ):
            # As FeatureTemplate.join: a field the template lacks takes no space.
            room = tf.maximum(spare, 0) if name in template.fields else tf.zeros_like(spare)
            fields[name] = _cut_rows(tokens, room)
            spare -= fields[name].row_lengths()
        pieces = []
        for kind, value in parts:
            if kind == "text":
                words = tf.constant(value, tf.int32)[None]
                pieces.append(tf.RaggedTensor.from_tensor(tf.tile(words, [num_items, 1])))
            else:
                pieces.append(fields[value])
        pieces.append(tf.RaggedTensor.from_tensor(tf.fill([num_items, 1], EOS_ID)))
        tokens = tf.concat(pieces, 1).to_tensor(default_value=0, shape=[None, length])
        tokens = tokens * tf.cast(mask, tf.int32)[:, None]
        static_items = example["doc_bodies"].shape[0]  # known from the list preprocessors
        dropped = ("query", "epoch", "doc_texts", *(key for _, key, _ in _FEATURE_FIELDS))
        out = {k: v for k, v in example.items() if k not in dropped}
        out["inputs"] = tf.ensure_shape(tokens, [static_items, length])
        out["targets"] = tf.ensure_shape(tf.zeros([num_items, 1], tf.int32), [static_items, 1])
        return out

    return dataset.map(convert, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def build_xtr_inputs(dataset: tf.data.Dataset, sequence_length, output_features) -> tf.data.Dataset:
    """seqio preprocessor (UR2N): `query` + `doc_texts [M]` (and `mask [M]`) -> `queries [Tq]`
    (`xtr_inputs.query_tokens`) and `inputs [M, Td]` (`xtr_inputs.document_tokens`, padded
    items all-zero rows); `Tq` and `Td` are `sequence_length["queries"]` and `["inputs"]`."""
    doc_length = _sequence_length(sequence_length)
    query_length = _sequence_length(sequence_length, "queries")
    vocab = output_features["inputs"].vocabulary

    def convert(example):
        query = query_tokens_tf(vocab, example["query"][None], query_length)[0]
        docs = document_tokens_tf(vocab, example["doc_texts"], doc_length)
        docs = docs * tf.cast(example["mask"], tf.int32)[:, None]
        static_items = example["doc_texts"].shape[0]  # known from the list preprocessors
        return {
            "qid": example["qid"],
            "queries": tf.ensure_shape(query, [query_length]),
            "inputs": tf.ensure_shape(docs, [static_items, doc_length]),
        }

    return dataset.map(convert, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
