"""UR2N's XTR inputs: Python and TensorFlow token for token; the XTR training task (a query, its
positive, one hard negative sampled statelessly) and its feature converter."""

import os

import numpy as np
import pytest
import seqio
import tensorflow as tf

from rankt5_jax.data import feature_converters, prepare, synthetic, tasks_lib, xtr_inputs
from rankt5_jax.data.vocab import EOS_ID
from rankt5_jax.errors import ConfigError
from rankt5_jax.retrieval import bm25

TEXTS = [
    ("", ""),
    ("", "alpha beta"),
    ("A Title", "some text   with  spaces"),
    ("café", "naïve façade – ünïcode ß"),
    ("", " ".join(["kapedi setivi lorem"] * 30)),
    ("long title " * 10, "body"),
]


def test_python_and_tensorflow_tokens_are_equal(vocab, spm_path):
    seqio_vocab = tasks_lib.get_vocabulary(spm_path)
    titles, texts = zip(*TEXTS)
    joined = [xtr_inputs.document_text(t, x) for t, x in TEXTS]
    for max_length in (2, 9, 64):
        queries = xtr_inputs.query_tokens_batch(vocab, texts, max_length)
        docs = xtr_inputs.document_tokens_batch(vocab, titles, texts, max_length)
        tf_queries = xtr_inputs.query_tokens_tf(seqio_vocab, list(texts), max_length).numpy()
        tf_docs = xtr_inputs.document_tokens_tf(seqio_vocab, joined, max_length).numpy()
        assert tf_queries.shape == tf_docs.shape == (len(TEXTS), max_length)
        for row, (title, text) in enumerate(TEXTS):
            query = xtr_inputs.query_tokens(vocab, text, max_length)
            doc = xtr_inputs.document_tokens(vocab, title, text, max_length)
            assert query == queries[row] and doc == docs[row]
            for ids, tf_ids in ((query, tf_queries[row]), (doc, tf_docs[row])):
                assert ids[-1] == EOS_ID and len(ids) <= max_length
                assert tf_ids.tolist() == ids + [0] * (max_length - len(ids))
    # The ranker's template words, then the text; cut before EOS.
    assert xtr_inputs.query_tokens(vocab, "alpha beta", 64) == vocab.encode("Query: alpha beta") + [
        EOS_ID
    ]
    doc = xtr_inputs.document_tokens(vocab, "A Title", "body", 64)
    assert doc == vocab.encode("Document: A Title body") + [EOS_ID]
    assert xtr_inputs.document_tokens(vocab, "", "body", 64) == vocab.encode("Document: body") + [1]
    long = xtr_inputs.document_tokens(vocab, "", TEXTS[4][1], 16)
    assert len(long) == 16 and long[:15] == vocab.encode("Document: " + TEXTS[4][1])[:15]
    with pytest.raises(ConfigError, match="max_length"):
        xtr_inputs.query_tokens(vocab, "x", 1)


@pytest.fixture(scope="module")
def records(tmp_path_factory, spm_path):
    out = str(tmp_path_factory.mktemp("xtr_data"))
    collection = synthetic.make_collection(
        num_queries=12, distractors_per_query=6, random_docs=20, seed=4
    )
    run = bm25.bm25_run(collection["corpus"], collection["queries"], top_k=10)
    paths = synthetic.write_collection(out, collection, run)
    target = os.path.join(out, "records")
    prepare.prepare(
        paths["queries"],
        paths["corpus"],
        paths["qrels"],
        paths["run"],
        target,
        top_k=10,
        num_shards=1,
        verbose=False,
    )
    parsed = {}
    for raw in tf.data.TFRecordDataset(tf.io.gfile.glob(os.path.join(target, "train.tfrecord-*"))):
        ex = tf.io.parse_single_example(raw, prepare.feature_description())
        ex = {k: v.numpy() for k, v in ex.items()}
        parsed[ex["qid"].decode()] = ex
    return target, parsed


def _examples(name, lengths, epochs):
    task = seqio.get_mixture_or_task(name)
    dataset = task.get_dataset(lengths, split="train", shuffle=False, num_epochs=1)
    return list(dataset.as_numpy_iterator())


def test_xtr_task_gives_query_positive_and_a_sampled_hard_negative(records, vocab, spm_path):
    target, parsed = records
    lengths = {"inputs": 24, "queries": 10}
    name = tasks_lib.register_xtr_task("xtr_test", target, spm_path, seed=3, num_epochs=3)
    assert tasks_lib.is_xtr_task(name) and not tasks_lib.is_xtr_task(
        tasks_lib.register_prepared_task("rank_test", target, spm_path, list_size=3)
    )
    examples = _examples(name, lengths, 3)
    assert len(examples) == 3 * len(parsed)
    negatives_by_epoch = {}
    for index, ex in enumerate(examples):
        epoch = index // len(parsed)
        record = parsed[ex["qid"].decode()]
        assert ex["queries"].shape == (10,) and ex["inputs"].shape == (2, 24)
        query = xtr_inputs.query_tokens(vocab, record["query"].decode(), 10)
        assert ex["queries"].tolist() == query + [0] * (10 - len(query))

        def encoded(text):
            ids = xtr_inputs.document_tokens(vocab, "", text.decode(), 24)
            return ids + [0] * (24 - len(ids))

        positives = record["pos_texts"]
        assert ex["inputs"][0].tolist() == encoded(positives[epoch % len(positives)])
        negatives = [
            encoded(text)
            for text, label in zip(record["cand_texts"], record["cand_labels"])
            if label <= 0
        ]
        assert ex["inputs"][1].tolist() in negatives  # a first-stage candidate, not relevant
        negatives_by_epoch.setdefault(epoch, []).append(ex["inputs"][1].tolist())
    # Stateless sampling: a new draw each epoch, the same draw for the same seed.
    assert negatives_by_epoch[0] != negatives_by_epoch[1]
    tasks_lib.register_xtr_task("xtr_test", target, spm_path, seed=3, num_epochs=3)
    again = _examples(name, lengths, 3)
    assert all(np.array_equal(a["inputs"], b["inputs"]) for a, b in zip(examples, again))
    tasks_lib.register_xtr_task("xtr_test", target, spm_path, seed=4, num_epochs=1)
    other = _examples(name, lengths, 1)
    assert any(not np.array_equal(a["inputs"], b["inputs"]) for a, b in zip(examples, other))
    with pytest.raises(ConfigError, match="hard_negatives"):
        tasks_lib.register_xtr_task("xtr_bad", target, spm_path, hard_negatives=0)


def test_xtr_feature_converter(records, spm_path):
    target, _ = records
    name = tasks_lib.register_xtr_task("xtr_conv", target, spm_path, num_epochs=1)
    converter = feature_converters.for_task(name)
    assert isinstance(converter, feature_converters.XTRFeatureConverter)
    ranking = tasks_lib.register_prepared_task("rank_conv", target, spm_path, list_size=3)
    assert isinstance(
        feature_converters.for_task(ranking), feature_converters.RankingFeatureConverter
    )
    lengths = {"inputs": 20, "queries": 8}
    dataset = seqio.get_dataset(
        name, lengths, dataset_split="train", shuffle=False, feature_converter=converter
    )
    batch = next(iter(dataset.batch(4).as_numpy_iterator()))
    assert set(batch) == {"query_tokens", "doc_tokens"}
    assert batch["query_tokens"].shape == (4, 8) and batch["doc_tokens"].shape == (4, 2, 20)
    assert (batch["query_tokens"] == EOS_ID).sum() == 4
    assert (batch["doc_tokens"] == EOS_ID).sum() == 8
    assert converter.get_model_feature_lengths(lengths) == {"query_tokens": 8, "doc_tokens": 20}
    with pytest.raises(ValueError, match="packed"):
        feature_converters.XTRFeatureConverter(pack=True)
