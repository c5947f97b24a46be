"""List-aware scoring (FiT5): whole lists per call, features from the run, rerank and errors."""

import json
import os

import jax
import numpy as np
import pytest

from rankt5_jax import Ranker
from rankt5_jax.checkpoints.convert import write_params_model_dir
from rankt5_jax.cli import main as cli_main
from rankt5_jax.data import formats, synthetic
from rankt5_jax.errors import ConfigError, InputFormatError
from rankt5_jax.evaluation import measures
from rankt5_jax.inference import rerank
from rankt5_jax.inference.ranker import list_sizes
from rankt5_jax.modeling import registry
from rankt5_jax.modeling.network import get_config
from rankt5_jax.modeling.partitioning import Partitioner
from rankt5_jax.retrieval import bm25


@pytest.fixture(scope="module")
def fit5_dir(tmp_path_factory, fit5_spm_path, fit5_vocab):
    """Our model directory holding a tiny random FiT5 (per-query features)."""
    config = get_config("tiny", vocab_size=512, num_global_layers=2)
    spec = registry.make_spec("fit5", config, fit5_vocab)
    spec["features"] = {"mode": "per_query"}
    model = registry.build_model(spec)
    params = model.get_initial_variables(
        jax.random.PRNGKey(0), {"encoder_input_tokens": (1, 4, 8)}
    )["params"]
    out = str(tmp_path_factory.mktemp("fit5") / "model")
    write_params_model_dir(
        out, model.spec(), jax.tree_util.tree_map(np.asarray, params), fit5_spm_path
    )
    return out


DOCS = ["bako dite fuma", "a much longer document " * 12, "lemo rasi tuvo kezi", "x", "fuma"]
FEATURES = [12.0, 7.5, 3.0, 11.0, 9.0]


def test_scores_are_the_models_list_scores_whatever_the_batching(fit5_dir):
    reference = Ranker.load(fit5_dir, batch_size=1, batch_tokens=0)
    tokens = reference.tokenize("fuma lemo", DOCS, features=FEATURES)
    width = max(map(len, tokens))
    padded = np.zeros((1, len(tokens), width), np.int32)
    for row, seq in enumerate(tokens):
        padded[0, row, : len(seq)] = seq
    direct = np.asarray(
        reference.model.score_lists(reference.params, {"encoder_input_tokens": padded})
    )[0]
    scores = reference.score("fuma lemo", DOCS, features=FEATURES)
    np.testing.assert_allclose(scores, direct, atol=1e-5)
    for batch_size, batch_tokens in [(64, None), (64, 0), (3, 64)]:
        ranker = Ranker.load(fit5_dir, batch_size=batch_size, batch_tokens=batch_tokens)
        np.testing.assert_allclose(
            ranker.score("fuma lemo", DOCS, features=FEATURES), scores, atol=1e-5
        )
    perm = np.array([4, 2, 0, 1, 3])
    permuted = reference.score(
        "fuma lemo", [DOCS[i] for i in perm], features=[FEATURES[i] for i in perm]
    )
    np.testing.assert_allclose(permuted, scores[perm], atol=1e-5)
    # The feature is read: other first-stage scores give other scores.
    other = reference.score("fuma lemo", DOCS, features=FEATURES[::-1])
    assert np.abs(other - scores).max() > 1e-6
    with pytest.raises(ConfigError, match="first-stage scores"):
        reference.score("fuma lemo", DOCS)


def test_lists_are_never_split_and_share_calls_by_shape(fit5_dir):
    ranker = Ranker.load(fit5_dir, batch_size=8, batch_tokens=0)
    rng = np.random.default_rng(0)
    lists = [
        [list(rng.integers(3, 200, rng.integers(3, 30))) + [1] for _ in range(n)]
        for n in (3, 20, 1, 9, 3)
    ]
    batches = list(ranker.list_batches(lists))
    seen = sorted(i for indices, _, _ in batches for i in indices)
    assert seen == list(range(len(lists)))  # each list exactly once, whole
    for indices, tokens, mask in batches:
        assert tokens.shape[1] in list_sizes(20) and tokens.shape[0] == len(indices)
        assert tokens.shape[0] * tokens.shape[1] <= max(8, tokens.shape[1])
        for row, index in enumerate(indices):
            assert mask[row].sum() == len(lists[index])
    together = ranker.score_token_lists(lists)
    for candidates, scores in zip(lists, together):
        np.testing.assert_allclose(scores, ranker.score_token_lists([candidates])[0], atol=1e-5)
    assert list_sizes(100)[-1] == 104 and list_sizes(100, 8)[-1] == 104
    assert all(size % 4 == 0 for size in list_sizes(300, 4))


@pytest.mark.parametrize("data, model", [(4, 1), (2, 2)])
def test_list_axis_sharded_over_the_mesh_gives_the_same_scores(fit5_dir, data, model):
    single = Ranker.load(fit5_dir, batch_size=8)
    mesh = Partitioner(data_axis_size=data, model_axis_size=model, devices=jax.devices()[:4])
    sharded = Ranker.load(fit5_dir, batch_size=8, partitioner=mesh)
    docs = DOCS * 4
    features = FEATURES * 4
    np.testing.assert_allclose(
        sharded.score("fuma", docs, features=features),
        single.score("fuma", docs, features=features),
        atol=1e-5,
    )


@pytest.fixture(scope="module")
def collection_files(tmp_path_factory):
    collection = synthetic.make_collection(num_queries=6, seed=4)
    run = bm25.bm25_run(collection["corpus"], collection["queries"], top_k=12)
    out = str(tmp_path_factory.mktemp("fit5_files"))
    return synthetic.write_collection(out, collection, run)


def test_rerank_writes_a_complete_run_that_evaluate_reproduces(
    fit5_dir, collection_files, tmp_path, capsys
):
    paths = collection_files
    output = str(tmp_path / "fit5.run")
    reranked = rerank.rerank_files(
        fit5_dir,
        paths["queries"],
        paths["corpus"],
        paths["run"],
        output,
        qrels_path=paths["qrels"],
        top_k=10,
        batch_size=16,
        json_metrics=True,
        progress=False,
    )
    source = formats.read_run(paths["run"])
    written = formats.read_run(output)
    assert set(written) == set(source)
    for qid in source:
        top = measures.rank_documents(source[qid])[:10]
        assert set(written[qid]) == set(top)
    # The scores are the ranker's list scores with the run's scores as features.
    ranker = Ranker.load(fit5_dir)
    queries = formats.read_queries(paths["queries"])
    corpus = formats.Corpus(paths["corpus"])
    qid = sorted(source)[0]
    top = measures.rank_documents(source[qid])[:10]
    pairs = [corpus.get(d) for d in top]
    expected = ranker.score(
        queries[qid],
        [body for _, body in pairs],
        features=[source[qid][d] for d in top],
        titles=[title for title, _ in pairs],
    )
    np.testing.assert_allclose([reranked[qid][d] for d in top], expected, atol=1e-5)
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    cli_main(["evaluate", "--run", output, "--qrels", paths["qrels"], "--json"])
    evaluated = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for name, value in printed["reranked"].items():
        assert evaluated[name] == pytest.approx(value, abs=1e-9)


def test_runs_without_usable_scores_are_one_line_errors(fit5_dir, collection_files, tmp_path):
    paths = collection_files
    source = formats.read_run(paths["run"])
    no_scores = str(tmp_path / "msmarco.run")
    with open(no_scores, "w") as handle:
        for qid, docs in source.items():
            for rank, docid in enumerate(measures.rank_documents(docs), 1):
                handle.write(f"{qid}\t{docid}\t{rank}\n")
    nan_run = str(tmp_path / "nan.run")
    with open(paths["run"]) as handle:
        lines = handle.read().splitlines()
    parts = lines[2].split()
    parts[4] = "nan"
    lines[2] = " ".join(parts)
    with open(nan_run, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    for run_path, line, message, strict in [
        (no_scores, 1, "no scores", False),  # even lenient reading refuses a run without scores
        (nan_run, 3, "not finite", True),
    ]:
        with pytest.raises(InputFormatError) as info:
            rerank.rerank_files(
                fit5_dir,
                paths["queries"],
                paths["corpus"],
                run_path,
                str(tmp_path / "out.run"),
                strict=strict,
                progress=False,
            )
        text = str(info.value)
        assert f"{run_path}:{line}" in text and message in text and "\n" not in text
    # A pairwise model takes the MS MARCO 'qid docid rank' run (ordered by rank).
    run = formats.read_run(no_scores)
    qid = next(iter(run))
    assert measures.rank_documents(run[qid]) == measures.rank_documents(source[qid])
    assert not os.path.exists(str(tmp_path / "out.run"))
