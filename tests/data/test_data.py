"""Data path: readers, prepare, seqio tasks, list sampling, feature conversion, model batches."""

import os

import jax
import numpy as np
import pytest
import seqio

from rankt5_jax.data import formats, prepare, synthetic, tasks_lib
from rankt5_jax.data.feature_converters import RankingFeatureConverter
from rankt5_jax.data.vocab import EOS_ID
from rankt5_jax.errors import InputFormatError
from rankt5_jax.modeling.models import RankT5Enc, RankT5EncDec
from rankt5_jax.modeling.network import get_config
from rankt5_jax.retrieval import bm25


@pytest.fixture(scope="module")
def collection_dir(tmp_path_factory, spm_path):
    out = str(tmp_path_factory.mktemp("collection"))
    collection = synthetic.make_collection(num_queries=30, distractors_per_query=8, seed=3)
    run = bm25.bm25_run(collection["corpus"], collection["queries"], top_k=60)
    # A query whose qrels name no positive among the corpus is skipped and counted.
    collection["queries"]["q_nopos"] = "lone query"
    collection["qrels"]["q_nopos"] = {"d0": 0}
    run["q_nopos"] = {"d1": 1.0, "d2": 0.5}
    paths = synthetic.write_collection(out, collection, run)
    return out, paths, collection


@pytest.fixture(scope="module")
def records(collection_dir):
    out, paths, _ = collection_dir
    stats = prepare.prepare(
        paths["queries"],
        paths["corpus"],
        paths["qrels"],
        paths["run"],
        os.path.join(out, "records"),
        num_shards=2,
        top_k=50,
        verbose=False,
    )
    return os.path.join(out, "records"), stats


def test_prepare_counts_skips(records, capsys):
    _, stats = records
    assert stats.queries_written == 30
    assert stats.skipped_no_positive == 1
    assert "skipped 1 without a positive" in stats.summary()


def _train_examples(records_dir, spm_path, seed, list_size=36, length=64, upsample=False):
    name = tasks_lib.register_prepared_task(
        f"test_train_{seed}_{upsample}",
        records_dir,
        spm_path,
        list_size=list_size,
        seed=seed,
        upsample_positives=upsample,
        num_epochs=2,
    )
    task = seqio.get_mixture_or_task(name)
    ds = task.get_dataset({"inputs": length, "targets": 1}, split="train", shuffle=False)
    return list(ds.as_numpy_iterator())


def test_lists_template_labels_and_sampling(records, spm_path, vocab, collection_dir):
    records_dir, _ = records
    _, _, collection = collection_dir
    examples = _train_examples(records_dir, spm_path, seed=0)
    assert len(examples) == 60  # 30 queries x 2 epochs
    first_epoch = {ex["qid"].decode(): ex for ex in examples[:30]}
    second_epoch = {ex["qid"].decode(): ex for ex in examples[30:]}
    for qid, ex in first_epoch.items():
        tokens, label, mask = ex["inputs"], ex["label"], ex["mask"]
        assert tokens.shape == (36, 64) and label.shape == (36,) and mask.shape == (36,)
        assert label[0] == 1 and np.all(label[1:] == 0)
        query = collection["queries"][qid]
        relevant = {d for d, g in collection["qrels"][qid].items() if g > 0}
        relevant_texts = {collection["corpus"][d]["text"] for d in relevant}
        for row, valid in zip(tokens, mask):
            if not valid:
                assert not row.any()
                continue
            ids = row[row > 0].tolist()
            assert ids[-1] == EOS_ID  # EOS always survives truncation
            text = vocab.decode(ids)
            assert text.startswith(f"Query: {query} Document:")
        negatives = [
            vocab.decode(r[r > 0].tolist()).split("Document: ", 1)[1] for r in tokens[1:][mask[1:]]
        ]
        for neg in negatives:  # no sampled negative is judged relevant
            assert not any(t.startswith(neg) for t in relevant_texts)
        # Across epochs the negatives differ; the same (seed, epoch) repeats exactly.
        assert not np.array_equal(tokens, second_epoch[qid]["inputs"])
    again = _train_examples(records_dir, spm_path, seed=0)
    for a, b in zip(examples, again):
        np.testing.assert_array_equal(a["inputs"], b["inputs"])
    other = _train_examples(records_dir, spm_path, seed=1)
    assert any(not np.array_equal(a["inputs"], b["inputs"]) for a, b in zip(examples, other))


def test_padding_when_few_candidates_and_upsampling(records, spm_path):
    records_dir, _ = records
    examples = _train_examples(records_dir, spm_path, seed=0, list_size=80)
    assert any(not ex["mask"].all() for ex in examples)
    for ex in examples:
        assert np.all(ex["label"][~ex["mask"]] == 0)
    up = _train_examples(records_dir, spm_path, seed=0, list_size=6, upsample=True)[0]
    assert up["inputs"].shape[0] == 10 and up["label"].tolist() == [1] * 5 + [0] * 5


def test_truncation_keeps_query_and_eos(records, spm_path, vocab):
    records_dir, _ = records
    ex = _train_examples(records_dir, spm_path, seed=0, length=16)[0]
    for row in ex["inputs"][ex["mask"]]:
        assert row[-1] == EOS_ID or EOS_ID in row
        assert vocab.decode(row.tolist()).startswith("Query:")


def test_feature_converter_batch_through_models(records, spm_path, vocab):
    records_dir, _ = records
    name = tasks_lib.register_prepared_task("test_fc", records_dir, spm_path, list_size=36)
    ds = seqio.get_dataset(
        name,
        {"inputs": 48, "targets": 1},
        dataset_split="train",
        shuffle=False,
        num_epochs=1,
        feature_converter=RankingFeatureConverter(pack=False),
    ).batch(2)
    batch = next(ds.as_numpy_iterator())
    assert batch["encoder_input_tokens"].shape == (2, 36, 48)
    assert batch["decoder_input_tokens"].shape == (2, 36, 1)
    assert not batch["decoder_input_tokens"].any()
    config = get_config("tiny", vocab_size=384)
    for model in (
        RankT5EncDec(config, score_token_id=vocab.token_id("<extra_id_10>")),
        RankT5Enc(config),
    ):
        params = model.get_initial_variables(
            jax.random.PRNGKey(0), {"encoder_input_tokens": (1, 1, 48)}
        )["params"]
        # Compiled as one program: op by op, each of the model's ops compiles on its own.
        (loss, metrics), grads = jax.jit(jax.value_and_grad(model.loss_fn, has_aux=True))(
            params, batch, jax.random.PRNGKey(1)
        )
        assert np.isfinite(float(loss)) and float(loss) > 0
        leaves = jax.tree_util.tree_leaves(grads)
        assert all(np.all(np.isfinite(np.asarray(g))) for g in leaves)
        assert any(np.abs(np.asarray(g)).sum() > 0 for g in leaves)
    with pytest.raises(ValueError, match="pack"):
        RankingFeatureConverter(pack=True)


def test_eval_task_carries_ids(records, spm_path, collection_dir):
    out, paths, _ = collection_dir
    prepare.prepare(
        paths["queries"],
        paths["corpus"],
        paths["qrels"],
        paths["run"],
        os.path.join(out, "eval_records"),
        split="dev",
        num_shards=1,
        require_positive=False,
        verbose=False,
    )
    name = tasks_lib.register_prepared_task(
        "test_eval",
        os.path.join(out, "eval_records"),
        spm_path,
        mode="eval",
        splits=("dev",),
        max_candidates=40,
    )
    task = seqio.get_mixture_or_task(name)
    examples = list(
        task.get_dataset(
            {"inputs": 32, "targets": 1}, split="dev", shuffle=False
        ).as_numpy_iterator()
    )
    run = formats.read_run(paths["run"])
    assert len(examples) == 31
    for ex in examples:
        qid = ex["qid"].decode()
        expected = sorted(run[qid], key=lambda d: -run[qid][d])[:40]
        assert [d.decode() for d in ex["docids"][ex["mask"]]] == expected


# ------------------------------------------------------------------------------------------
# Malformed input: file and line named, or counted skips with strict=False
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reader,content,line,pattern",
    [
        ("run", "q1 Q0 d1 1 2.0 t\nq1 Q0 d2 2\n", 2, "column count"),
        ("run", "q1 Q0 d1 1 2.0 t\nq1 Q0 d1 2 1.0 t\n", 2, "duplicate docid"),
        ("run", "q1 Q0 d1 1 abc t\n", 1, "bad score"),
        ("qrels", "q1 0 d1 1\nq1 0 d2\n", 2, "column count"),
        ("qrels", "q1 0 d1 x\n", 1, "bad relevance"),
        ("queries", "q1\tfine\nq2 no tab\n", 2, "column count"),
        ("queries", "q1\tfine\nq1\tagain\n", 2, "duplicate id"),
        ("queries", "q1\t   \n", 1, "empty text"),
        ("corpus", '{"_id": "d1", "text": "a"}\n{"_id": "d2"}\n', 2, "missing field"),
        ("corpus", '{"_id": "d1", "text": "a"}\n{"_id": "d1", "text": "b"}\n', 2, "duplicate id"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path, reader, content, line, pattern):
    path = tmp_path / ("corpus.jsonl" if reader == "corpus" else f"{reader}.txt")
    path.write_text(content)
    read = {
        "run": formats.read_run,
        "qrels": formats.read_qrels,
        "queries": formats.read_queries,
        "corpus": lambda p, **kw: formats.Corpus(p, **kw),
    }[reader]
    with pytest.raises(InputFormatError, match=pattern) as info:
        read(str(path))
    assert info.value.path == str(path) and info.value.line == line
    assert f"{path}:{line}" in str(info.value)
    if reader in ("run", "qrels", "queries") and pattern != "duplicate docid":
        skips = formats.Skips()
        read(str(path), strict=False, skips=skips)
        assert skips.total == 1 and str(path) in skips.summary()


def test_bad_utf8_and_empty_file(tmp_path):
    bad = tmp_path / "q.tsv"
    bad.write_bytes(b"q1\tok\nq2\t\xff\xfe bad\n")
    with pytest.raises(InputFormatError, match="UTF-8") as info:
        formats.read_queries(str(bad))
    assert info.value.line == 2
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(InputFormatError, match="empty"):
        formats.read_qrels(str(empty))


def test_run_with_unknown_ids(tmp_path, collection_dir):
    _, paths, _ = collection_dir
    corpus = formats.Corpus(paths["corpus"])
    queries = formats.read_queries(paths["queries"])
    run = tmp_path / "run.txt"
    run.write_text("q0 Q0 d0 1 1.0 t\nq0 Q0 nosuchdoc 2 0.5 t\n")
    with pytest.raises(InputFormatError, match="unknown document id") as info:
        formats.read_run(str(run), known_queries=queries, corpus=corpus)
    assert info.value.line == 2
    run.write_text("zz Q0 d0 1 1.0 t\n")
    with pytest.raises(InputFormatError, match="unknown query id"):
        formats.read_run(str(run), known_queries=queries, corpus=corpus)
    out = tmp_path / "rec"
    with pytest.raises(InputFormatError, match="unknown query id") as info:
        prepare.prepare(
            paths["queries"], paths["corpus"], paths["qrels"], str(run), str(out), verbose=False
        )
    assert info.value.line == 1
    stats = prepare.prepare(
        paths["queries"],
        paths["corpus"],
        paths["qrels"],
        str(run),
        str(out),
        strict=False,
        verbose=False,
    )
    assert stats.queries_written == 0 and sum(stats.skipped_lines.values()) == 1


def test_corpus_index_lookup(collection_dir):
    _, paths, collection = collection_dir
    corpus = formats.Corpus(paths["corpus"])
    assert len(corpus) == len(collection["corpus"])
    for docid in ("d0", "d5", f"d{len(collection['corpus']) - 1}"):
        assert corpus.text(docid) == collection["corpus"][docid]["text"]
    assert "nope" not in corpus
    again = formats.Corpus(paths["corpus"])  # from the cached index
    assert again.text("d3") == corpus.text("d3")


# ------------------------------------------------------------------------------------------
# MS MARCO from TFDS, offline: a local builder with the features of `huggingface:ms_marco/v2.1`
# (that community builder needs the Hugging Face hub even for mock data), fed by mock_data.
# ------------------------------------------------------------------------------------------

import tensorflow as tf  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402


class MsMarcoV21Local(tfds.core.GeneratorBasedBuilder):
    """The feature layout of TFDS `huggingface:ms_marco/v2.1` (10 Bing passages per query)."""

    VERSION = tfds.core.Version("2.1.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "query": tfds.features.Text(),
                    "query_id": tf.int32,
                    "query_type": tfds.features.Text(),
                    "answers": tfds.features.Sequence(tfds.features.Text()),
                    "passages": tfds.features.Sequence(
                        {
                            "is_selected": tf.int32,
                            "passage_text": tfds.features.Text(),
                            "url": tfds.features.Text(),
                        }
                    ),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):  # one record, only so the split metadata exists
        yield (
            0,
            {
                "query": "q",
                "query_id": 0,
                "query_type": "",
                "answers": [],
                "passages": {"is_selected": [1], "passage_text": ["p"], "url": [""]},
            },
        )


def test_msmarco_tfds_task_with_mock_data(spm_path, vocab, tmp_path):
    data_dir = str(tmp_path / "tfds")
    MsMarcoV21Local(data_dir=data_dir).download_and_prepare()
    with tfds.testing.mock_data(num_examples=12, data_dir=data_dir):
        name = tasks_lib.register_msmarco_tfds_task(
            "msmarco_mock",
            vocab_path=spm_path,
            tfds_name="ms_marco_v21_local:2.1.0",
            tfds_data_dir=data_dir,
            list_size=5,
        )
        task = seqio.get_mixture_or_task(name)
        ds = task.get_dataset({"inputs": 40, "targets": 1}, split="train", shuffle=False)
        examples = list(ds.take(6).as_numpy_iterator())
    assert examples
    for ex in examples:
        assert ex["inputs"].shape == (5, 40) and ex["label"][0] > 0
        assert np.all(ex["label"][1:] <= 0)
        assert vocab.decode(ex["inputs"][0].tolist()).startswith("Query:")


def test_query_with_zero_candidates_is_counted(tmp_path, collection_dir):
    _, paths, _ = collection_dir
    run = tmp_path / "run.txt"
    run.write_text("q0 Q0 nosuchdoc 1 1.0 t\nq1 Q0 d0 1 1.0 t\n")
    stats = prepare.prepare(
        paths["queries"],
        paths["corpus"],
        paths["qrels"],
        str(run),
        str(tmp_path / "rec"),
        strict=False,
        verbose=False,
        require_positive=False,
    )
    assert stats.skipped_no_candidates == 1 and stats.queries_written == 1
    assert "1 without candidates" in stats.summary()


def test_pair_task_follows_the_models_template(records, spm_path, vocab):
    """A task registered without a template builds the template of the model that trains on it
    (monoT5's `... Relevant:`), and goes back to RankT5's for a RankT5 model; a task bound to
    another template than the model's is refused, naming both."""
    from rankt5_jax.data.vocab import MONOT5_TEMPLATE, RANKT5_TEMPLATE
    from rankt5_jax.errors import ConfigError

    records_dir, _ = records
    name = tasks_lib.register_prepared_task(
        "test_follow", records_dir, spm_path, list_size=4, num_epochs=1
    )

    def first_text(task_name):
        task = seqio.get_mixture_or_task(task_name)
        ds = task.get_dataset({"inputs": 64, "targets": 1}, split="train", shuffle=False)
        row = next(ds.as_numpy_iterator())["inputs"][0]
        return vocab.decode(row[row > 0].tolist())

    # (The tests' tiny vocabulary has no piece for "R": it decodes as an unknown piece.)
    assert "elevant:" not in first_text(name)
    tasks_lib.follow_model_template(name, MONOT5_TEMPLATE)
    assert first_text(name).endswith("elevant:")  # the document was cut, `Relevant:` kept
    tasks_lib.follow_model_template(name, RANKT5_TEMPLATE)
    assert "elevant:" not in first_text(name)
    bound = tasks_lib.register_prepared_task(
        "test_bound", records_dir, spm_path, list_size=4, num_epochs=1, template=RANKT5_TEMPLATE
    )
    with pytest.raises(ConfigError, match="Relevant"):
        tasks_lib.follow_model_template(bound, MONOT5_TEMPLATE)
    tasks_lib.follow_model_template(bound, RANKT5_TEMPLATE)  # the same template: nothing to do
