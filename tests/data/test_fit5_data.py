"""FiT5's training data: prepared records with scores/titles/bodies, the TF template equal to
`features.FeatureTemplate` token for token, top-ranked negatives, old records for RankT5."""

import os

import numpy as np
import pytest
import seqio
import tensorflow as tf

from rankt5_jax.data import formats, prepare, synthetic, tasks_lib
from rankt5_jax.data.features import FeatureConfig, FeatureTemplate, discretise
from rankt5_jax.data.preprocessors import discretise_tf
from rankt5_jax.data.vocab import Vocabulary
from rankt5_jax.errors import ConfigError
from rankt5_jax.retrieval import bm25

TOP_K = 8
LIST_SIZE = 5
LONG_TITLE = " ".join(["kapedi setivi"] * 12)


@pytest.fixture(scope="module")
def fit5_vocab_path(tmp_path_factory):
    out = tmp_path_factory.mktemp("fit5_spm")
    return synthetic.train_sentencepiece(str(out / "spiece"), 300, fit5_words=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A titled collection (one very long title, some empty ones), its BM25 run and records;
    q0's positive is not in the run, q1's is in the run but below `TOP_K`."""
    out = str(tmp_path_factory.mktemp("fit5_data"))
    collection = synthetic.make_collection(
        num_queries=10, distractors_per_query=12, random_docs=20, seed=5, titles=True
    )
    corpus = collection["corpus"]
    for docid in ("d1", "d3", "d5"):
        corpus[docid]["title"] = ""
    run = bm25.bm25_run(corpus, collection["queries"], top_k=30)
    for qid in collection["queries"]:  # a long title on every query's second candidate
        corpus[sorted(run[qid], key=lambda d: -run[qid][d])[1]]["title"] = LONG_TITLE
    (pos0,) = collection["qrels"]["q0"]
    run["q0"].pop(pos0, None)
    ranked = sorted(run["q1"], key=lambda d: -run["q1"][d])
    collection["qrels"]["q1"] = {ranked[TOP_K + 2]: 1}  # listed, but beyond the top k
    paths = synthetic.write_collection(out, collection, run)
    records = os.path.join(out, "records")
    prepare.prepare(
        paths["queries"],
        paths["corpus"],
        paths["qrels"],
        paths["run"],
        records,
        top_k=TOP_K,
        num_shards=1,
        verbose=False,
    )
    prepare.prepare(
        paths["queries"],
        paths["corpus"],
        paths["qrels"],
        paths["run"],
        records,
        split="dev",
        top_k=TOP_K,
        num_shards=1,
        require_positive=False,
        verbose=False,
    )
    return {"dir": out, "paths": paths, "records": records, "collection": collection}


def _read_records(records_dir, split="train"):
    pattern = os.path.join(records_dir, f"{split}.tfrecord-*")
    out = {}
    for raw in tf.data.TFRecordDataset(tf.io.gfile.glob(pattern)):
        example = tf.io.parse_single_example(raw, prepare.feature_description())
        example = {key: value.numpy() for key, value in example.items()}
        out[example["qid"].decode()] = example
    return out


def _strings(values):
    return [v.decode() for v in values]


def test_records_carry_scores_titles_and_bodies(data):
    records = _read_records(data["records"])
    corpus = data["collection"]["corpus"]
    run = formats.read_run(data["paths"]["run"])
    assert len(records) == 10
    titled = 0
    for qid, record in records.items():
        ranked = sorted(run[qid].items(), key=lambda item: -item[1])
        cand_ids = _strings(record["cand_ids"])
        assert cand_ids == [d for d, _ in ranked[:TOP_K]]
        np.testing.assert_array_equal(
            record["cand_scores"], np.float32([s for _, s in ranked[:TOP_K]])
        )
        for prefix, ids in (("cand", cand_ids), ("pos", _strings(record["pos_ids"]))):
            titles = _strings(record[f"{prefix}_titles"])
            bodies = _strings(record[f"{prefix}_bodies"])
            texts = _strings(record[f"{prefix}_texts"])
            assert titles == [corpus[d]["title"] for d in ids]
            assert bodies == [corpus[d]["text"] for d in ids]
            # RankT5's text is unchanged: `title text`
            assert texts == [f"{corpus[d]['title']} {corpus[d]['text']}".strip() for d in ids]
            titled += sum(bool(t) for t in titles)
        (positive,) = _strings(record["pos_ids"])
        expected = run[qid].get(positive, min(run[qid].values()))
        assert record["pos_scores"].tolist() == [np.float32(expected)]
    assert titled > 0
    # q0's positive is not in the run: the query's lowest score; q1's is listed beyond top_k.
    assert records["q0"]["pos_scores"][0] == np.float32(min(run["q0"].values()))
    assert records["q0"]["pos_scores"][0] <= records["q0"]["cand_scores"][-1]
    (pos1,) = _strings(records["q1"]["pos_ids"])
    assert pos1 not in _strings(records["q1"]["cand_ids"])
    assert records["q1"]["pos_scores"][0] == np.float32(run["q1"][pos1])
    assert records["q1"]["pos_scores"][0] < records["q1"]["cand_scores"][-1]


@pytest.mark.parametrize(
    "mode,low,high",
    [
        ("fixed", 0.0, 0.78125),
        ("fixed", 2.0, 3.0),
        ("per_query", 0.0, 1.0),
    ],
)
def test_discretise_tf_equals_python(mode, low, high):
    config = FeatureConfig(mode=mode, low=low, high=high)
    rng = np.random.default_rng(0)
    lists = [
        rng.uniform(-1.0, 5.0, 40),
        np.array([0.29, 0.5, 0.57, 1.0, 0.0, 0.01, 2.29, 2.57]),
        np.array([3.5, 3.5, 3.5]),  # a constant list: 100 per query
        np.array([7.25]),
        # 0.2265625 / 0.78125 = 0.29 exactly (all three are float32-exact), but in float64
        # 100 * x is 28.999999999999996: the tolerance makes it 29, as in Python
        np.array([0.0, 0.2265625, 0.78125]),
    ]
    for values in lists:
        values = values.astype(np.float32)  # records store float32
        mask = np.ones(len(values), bool)
        if len(values) > 3:
            mask[-2:] = False  # padded items take no part in the per-query range
            values[-2:] = [1e6, -1e6]
        got = discretise_tf(tf.constant(values), tf.constant(mask), config).numpy()
        expected = discretise(values[mask].astype(np.float64).tolist(), config)
        assert got[mask].tolist() == expected
        assert got.dtype == np.int32 and got.min() >= 0 and got.max() <= 100
    on_boundary = discretise_tf(
        tf.constant([0.0, 0.2265625, 0.78125]), tf.constant([True, True, True]), config
    ).numpy()
    if mode == "per_query" or high == 0.78125:
        assert on_boundary.tolist() == [0, 29, 100]


def _rows(example):
    return [row for row, valid in zip(example["inputs"], example["mask"]) if valid]


def _check_rows(rows, expected, length):
    assert len(rows) == len(expected)
    for row, ids in zip(rows, expected):
        assert len(ids) <= length
        assert row[: len(ids)].tolist() == ids
        assert not row[len(ids) :].any()


def _cut_counts(template, query_ids, docs, titles, features):
    """How many inputs lose document tokens, and how many lose title tokens."""
    fixed = sum(len(ids) for kind, ids in template.parts if kind == "text")
    doc_cut = title_cut = 0
    for doc, title, feature in zip(docs, titles, features):
        feature_len = len(template.vocab.encode(str(feature))) if feature is not None else 0
        spare = template.max_length - fixed - feature_len - 1
        title_len = len(template.vocab.encode(title))
        doc_cut += len(query_ids) + title_len + len(template.vocab.encode(doc)) > spare
        title_cut += len(query_ids) + title_len > spare
    return doc_cut, title_cut


@pytest.mark.parametrize("mode", ["fixed", "per_query", "none"], ids=["fixed", "per_query", "none"])
def test_feature_inputs_equal_python_template(data, fit5_vocab_path, mode):
    vocab = Vocabulary(fit5_vocab_path)
    records = _read_records(data["records"])
    dev_records = _read_records(data["records"], "dev")
    scores = np.concatenate([r["cand_scores"] for r in records.values()])
    low, high = (float(np.percentile(scores, 25)), float(np.percentile(scores, 75)))
    config = FeatureConfig(mode=mode, low=low, high=high)
    cuts = {"doc": 0, "title": 0, "none": 0}
    seen_features = set()
    for length in (200, 56, 40):
        template = FeatureTemplate(vocab, config, length, max_query_length=3)
        train = tasks_lib.register_prepared_task(
            f"fit5_{mode}_train",
            data["records"],
            fit5_vocab_path,
            list_size=LIST_SIZE,
            negatives="top",
            num_epochs=2,
            max_query_length=3,
            features=config.to_dict(),
        )
        assert tasks_lib.task_features(train) == config
        examples = list(
            seqio.get_mixture_or_task(train)
            .get_dataset({"inputs": length, "targets": 1}, split="train", shuffle=False)
            .as_numpy_iterator()
        )
        assert len(examples) == 20  # 10 queries x 2 epochs
        for index, example in enumerate(examples):
            assert example["inputs"].shape == (LIST_SIZE, length)
            assert not example["inputs"][~example["mask"]].any()  # padded items: zero rows
            assert "doc_scores" not in example and "query" not in example
            record = records[example["qid"].decode()]
            # FiT5's list: the positive, then the top-ranked candidates not judged relevant.
            negatives = [i for i, g in enumerate(record["cand_labels"]) if g <= 0]
            negatives = negatives[: LIST_SIZE - 1]

            def items(name, record=record, negatives=negatives):
                return [record[f"pos_{name}"][0]] + [record[f"cand_{name}"][i] for i in negatives]

            docs, titles = _strings(items("bodies")), _strings(items("titles"))
            item_scores = [float(s) for s in items("scores")]
            features = template.features(item_scores) if config.uses_features else None
            expected = template.encode_list(
                record["query"].decode(),
                docs,
                titles,
                item_scores if config.uses_features else None,
            )
            _check_rows(_rows(example), expected, length)
            if index < 10:  # the same lists in the second epoch (one positive per query)
                np.testing.assert_array_equal(example["inputs"], examples[index + 10]["inputs"])
                query_ids = template.query_tokens(record["query"].decode())
                doc_cut, title_cut = _cut_counts(
                    template, query_ids, docs, titles, features or [None] * len(docs)
                )
                cuts["doc"] += doc_cut
                cuts["title"] += title_cut
                cuts["none"] += len(docs) - doc_cut
                seen_features |= set(features or [])
        evaluation = tasks_lib.register_prepared_task(
            f"fit5_{mode}_dev",
            data["records"],
            fit5_vocab_path,
            mode="eval",
            splits=("dev",),
            max_candidates=TOP_K + 2,
            max_query_length=3,
            features=config,
        )
        for example in (
            seqio.get_mixture_or_task(evaluation)
            .get_dataset({"inputs": length, "targets": 1}, split="dev", shuffle=False)
            .as_numpy_iterator()
        ):
            record = dev_records[example["qid"].decode()]
            assert example["inputs"].shape == (TOP_K + 2, length)
            assert _strings(example["docids"][example["mask"]]) == _strings(record["cand_ids"])
            expected = template.encode_list(  # per_query: over the query's candidates
                record["query"].decode(),
                _strings(record["cand_bodies"]),
                _strings(record["cand_titles"]),
                record["cand_scores"].tolist() if config.uses_features else None,
            )
            _check_rows(_rows(example), expected, length)
    # The lengths exercised whole inputs, cut documents and cut titles.
    assert cuts["none"] > 0 and cuts["doc"] > 0 and cuts["title"] > 0, cuts
    if config.uses_features:
        assert len(seen_features) > 5 and {0, 100} <= seen_features  # clipped or extremes


def test_feature_inputs_refuse_a_template_that_does_not_fit(data, fit5_vocab_path):
    name = tasks_lib.register_prepared_task(
        "fit5_too_short", data["records"], fit5_vocab_path, features={"mode": "per_query"}
    )
    with pytest.raises(ConfigError, match="no room"):
        seqio.get_mixture_or_task(name).get_dataset(
            {"inputs": 12, "targets": 1}, split="train", shuffle=False
        )


def test_negatives_option(data, spm_path):
    def lists(negatives, seed=0):
        name = tasks_lib.register_prepared_task(
            f"neg_{negatives}_{seed}",
            data["records"],
            spm_path,
            list_size=LIST_SIZE,
            seed=seed,
            negatives=negatives,
            num_epochs=2,
        )
        dataset = seqio.get_mixture_or_task(name).get_dataset(
            {"inputs": 48, "targets": 1}, split="train", shuffle=False
        )
        return [example["inputs"] for example in dataset.as_numpy_iterator()]

    top, random = lists("top"), lists("random")
    # top: no randomness (seeds and epochs give the same lists); random: new draws each epoch
    for a, b, c in zip(top[:10], top[10:], lists("top", seed=3)[:10]):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    assert any(not np.array_equal(a, b) for a, b in zip(random[:10], random[10:]))
    assert any(not np.array_equal(a, b) for a, b in zip(top, random))
    with pytest.raises(ConfigError, match="negatives"):
        tasks_lib.register_prepared_task("bad", data["records"], spm_path, negatives="hard")


def test_old_records_still_work_for_rankt5(data, spm_path, fit5_vocab_path, tmp_path):
    """Records written before FiT5's fields: RankT5 tasks read them exactly as the new ones;
    FiT5 tasks refuse them at registration, naming the missing fields."""
    old_dir = tmp_path / "old"
    old_dir.mkdir()
    old_fields = prepare.FEATURES[:8]
    assert "cand_scores" not in old_fields and "cand_texts" in old_fields
    with tf.io.TFRecordWriter(str(old_dir / "train.tfrecord-00000-of-00001")) as writer:
        pattern = os.path.join(data["records"], "train.tfrecord-*")
        for raw in tf.data.TFRecordDataset(tf.io.gfile.glob(pattern)):
            example = tf.train.Example.FromString(raw.numpy())
            for key in list(example.features.feature):
                if key not in old_fields:
                    del example.features.feature[key]
            writer.write(example.SerializeToString())

    def inputs(records_dir, name, mode="train"):
        name = tasks_lib.register_prepared_task(
            name, records_dir, spm_path, mode=mode, list_size=LIST_SIZE, num_epochs=1
        )
        assert tasks_lib.task_features(name) is None
        dataset = seqio.get_mixture_or_task(name).get_dataset(
            {"inputs": 48, "targets": 1}, split="train", shuffle=False
        )
        return list(dataset.as_numpy_iterator())

    for mode in ("train", "eval"):
        old = inputs(str(old_dir), f"old_{mode}", mode)
        new = inputs(data["records"], f"new_{mode}", mode)
        assert len(old) == len(new) == 10
        for a, b in zip(old, new):
            assert set(a) == set(b)
            for key in ("inputs", "label", "mask"):
                np.testing.assert_array_equal(a[key], b[key])
            assert a["inputs"].any()
    with pytest.raises(ConfigError, match="cand_scores.*prepare"):
        tasks_lib.register_prepared_task(
            "old_fit5", str(old_dir), fit5_vocab_path, features={"mode": "none"}
        )


def test_fit5_batches_and_the_model_features(data, fit5_vocab_path):
    """The feature converter's batches from a FiT5 task have the models' shapes; a model made
    with the same feature settings as the task keeps them (training on them: the smoke test)."""
    from rankt5_jax.data.feature_converters import RankingFeatureConverter
    from rankt5_jax.training import setup

    features = {"mode": "fixed", "low": 1.0, "high": 9.0}
    name = tasks_lib.register_prepared_task(
        "fit5_batches", data["records"], fit5_vocab_path, list_size=LIST_SIZE, features=features
    )
    batch = next(
        seqio.get_dataset(
            name,
            {"inputs": 64, "targets": 1},
            dataset_split="train",
            shuffle=False,
            num_epochs=1,
            feature_converter=RankingFeatureConverter(pack=False),
        )
        .batch(2)
        .as_numpy_iterator()
    )
    assert batch["encoder_input_tokens"].shape == (2, LIST_SIZE, 64)
    assert batch["label"].shape == batch["mask"].shape == (2, LIST_SIZE)
    assert batch["label"][:, 0].tolist() == [1, 1] and batch["mask"].all()
    model = setup.make_model(
        variant="fit5",
        size="tiny",
        vocab_path=fit5_vocab_path,
        num_global_layers=1,
        features=features,
    )
    assert model.features == tasks_lib.task_features(name) == FeatureConfig(**features)
    assert model.spec()["features"]["low"] == 1.0
