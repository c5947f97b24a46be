"""rankt5_jax.pyterrier: `pt.Experiment` over BM25, BM25 >> RankT5 and UR2N >> RankT5 gives
`rankt5 evaluate`'s per-query values and `rankt5 compare`'s t-test p-values; every variant's
re-ranker gives `Ranker.score`'s scores (pairwise models in one call across queries, FiT5 one list
per query with the input scores as its feature, refused without them); the retrievers' frames,
`% k`, the text loader and PyTerrier's column inspection."""

import json

import ir_measures
import jax
import numpy as np
import pandas as pd
import pyterrier as pt
import pytest

from rankt5_jax import Ranker
from rankt5_jax.checkpoints.convert import write_params_model_dir
from rankt5_jax.data import formats, synthetic
from rankt5_jax.errors import ConfigError
from rankt5_jax.evaluation import compare, measures
from rankt5_jax.modeling import registry
from rankt5_jax.modeling.network import get_config
from rankt5_jax.pyterrier import (
    RankT5ReRanker,
    RankT5Retriever,
    TextLoader,
    frame_to_run,
    run_to_frame,
)
from rankt5_jax.retrieval import bm25, token_index

METRICS = ["nDCG@10", "AP", "RR@10"]
MAX_LENGTH = 64


def _tiny(variant, vocab, **overrides):
    """A tiny random model of `variant` (FiT5: two global layers, per-query features)."""
    if registry.get(variant).list_aware:
        overrides.setdefault("num_global_layers", 2)
    spec = registry.make_spec(variant, get_config("tiny", vocab_size=512, **overrides), vocab)
    if variant == "fit5":
        spec["features"] = {"mode": "per_query"}
    model = registry.build_model(spec)
    params = model.get_initial_variables(
        jax.random.PRNGKey(1), {"encoder_input_tokens": (1, 2, 8)}
    )["params"]
    return model, jax.tree_util.tree_map(np.asarray, params)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, fit5_spm_path, fit5_vocab):
    folder = tmp_path_factory.mktemp("pyterrier")
    collection = synthetic.make_collection(
        num_queries=12, distractors_per_query=4, random_docs=40, seed=3, titles=True
    )
    corpus_path = str(folder / "corpus.jsonl")
    with open(corpus_path, "w") as handle:
        for docid, doc in collection["corpus"].items():
            handle.write(json.dumps({"_id": docid, **doc}) + "\n")
    # One UR2N model (RankT5-EncDec with an XTR layer), loaded from its directory by path:
    # its XTR layer is the first stage, its score the second.
    model, params = _tiny("encdec", fit5_vocab, xtr_dim=16)
    model_dir = str(folder / "ur2n")
    write_params_model_dir(model_dir, model.spec(), params, fit5_spm_path)
    reranker = RankT5ReRanker(model_dir, max_length=MAX_LENGTH)
    ranker = reranker.ranker
    token_dir = str(folder / "tokens")
    settings = token_index.IndexSettings(
        chunk_passages=128, kmeans_iterations=4, codec="ivfflat", nlist=8
    )
    encoder = ranker.xtr_encoder(MAX_LENGTH)
    token_index.build_index(corpus_path, token_dir, encoder, settings, progress=False)
    bm25_dir = str(folder / "bm25")
    bm25.build_from_file(corpus_path, progress=False).save(bm25_dir)
    return {
        **collection,
        "corpus_path": corpus_path,
        "reranker": reranker,
        "ranker": ranker,
        "token_dir": token_dir,
        "bm25_dir": bm25_dir,
    }


def _topics(queries):
    return pd.DataFrame({"qid": list(queries), "query": list(queries.values())})


def _reranked(ranker, run, queries, corpus):
    """`Ranker.score` of each query's candidates: what `rankt5 rerank` gives."""
    out = {}
    for qid, doc_scores in run.items():
        docs = list(doc_scores)
        texts = [corpus.text(d) for d in docs]
        out[qid] = dict(zip(docs, map(float, ranker.score(queries[qid], texts))))
    return out


def test_experiment_equals_rankt5_evaluate_and_compare(setup):
    queries, qrels, ranker = setup["queries"], setup["qrels"], setup["ranker"]
    bm25_stage = RankT5Retriever.from_index(setup["bm25_dir"], k=10)
    ur2n_stage = RankT5Retriever.ur2n(ranker, setup["token_dir"], k=10, token_k=50)
    rankt5 = TextLoader(setup["corpus_path"]) >> setup["reranker"]
    topics = _topics(queries)
    qrels_frame = pd.DataFrame(
        [(q, d, g) for q, docs in qrels.items() for d, g in docs.items()],
        columns=["qid", "docno", "label"],
    )
    names = ["bm25", "bm25 >> rankt5", "ur2n >> rankt5"]
    systems = [bm25_stage, bm25_stage >> rankt5, ur2n_stage >> rankt5]
    eval_metrics = [ir_measures.parse_measure(m) for m in METRICS]
    means = pt.Experiment(systems, topics, qrels_frame, eval_metrics, names=names, baseline=0)

    # The runs rankt5_jax's own commands give: BM25's index, UR2N's search, Ranker.score.
    corpus = formats.Corpus(setup["corpus_path"])
    bm25_run = bm25.BM25Index.load(setup["bm25_dir"]).search(queries, 10)
    ur2n_run = ranker.search(queries, k=10, index_dir=setup["token_dir"], token_k=50)
    runs = {
        names[0]: bm25_run,
        names[1]: _reranked(ranker, bm25_run, queries, corpus),
        names[2]: _reranked(ranker, ur2n_run, queries, corpus),
    }
    outputs = [system(topics) for system in systems]
    assert frame_to_run(outputs[0]) == bm25_run  # the retriever's frame is the index's run
    for name, frame in zip(names[1:], outputs[1:]):
        got = frame_to_run(frame)
        assert got.keys() == runs[name].keys()
        for qid, doc_scores in runs[name].items():  # re-ranker scores = Ranker.score
            assert got[qid].keys() == doc_scores.keys()
            np.testing.assert_allclose(
                [got[qid][d] for d in doc_scores], list(doc_scores.values()), atol=1e-5
            )
        # ranks: 0 for the best score, as pt.model.add_ranks gives
        best = frame.loc[frame.groupby("qid")["score"].idxmax()]
        assert (best["rank"] == 0).all()
    # ... evaluated on the pipelines' own scores (so the two differ by no float rounding)
    runs[names[1]] = frame_to_run(outputs[1])
    runs[names[2]] = frame_to_run(outputs[2])
    # (pt.Experiment gives per-query values without a baseline only: the same systems' frames)
    per_query = pt.Experiment(outputs, topics, qrels_frame, eval_metrics, names, perquery=True)

    for name, run in runs.items():
        expected = measures.evaluate_per_query(run, qrels, METRICS)
        rows = per_query[per_query["name"] == name]
        assert set(rows["qid"]) == set(expected) and len(expected) == len(queries)
        for qid, measure, value in zip(rows["qid"], rows["measure"], rows["value"]):
            assert value == pytest.approx(expected[qid][measure], abs=1e-12), (name, qid, measure)
        mean = means[means["name"] == name].iloc[0]
        for metric, value in measures.evaluate_run(run, qrels, METRICS).items():
            assert mean[metric] == pytest.approx(value, abs=1e-12)
    # The re-rankers changed the rankings (the test compares different runs).
    assert runs[names[1]] != runs[names[0]] and runs[names[2]] != runs[names[1]]

    # pt.Experiment's paired t-test against the baseline = rankt5 compare's.
    values = {n: compare.per_query_values(r, qrels, METRICS, name=n) for n, r in runs.items()}
    for name in names[1:]:
        row = means[means["name"] == name].iloc[0]
        for metric in METRICS:
            p = compare.paired_ttest(values[name].values[metric], values[names[0]].values[metric])
            assert row[f"{metric} p-value"] == pytest.approx(p, rel=1e-9, abs=1e-12)


def test_every_variant_reranks_as_ranker_score(setup, fit5_vocab):
    corpus = setup["corpus"]
    queries = dict(list(setup["queries"].items())[:3])
    run = bm25.BM25Index.load(setup["bm25_dir"]).search(queries, 4)
    frame = run_to_frame(run, queries)
    # titles where the corpus has them; an empty title as a missing value
    frame = TextLoader(corpus)(frame)
    frame.loc[frame.index[0], "title"] = None
    assert list(frame.columns) == ["qid", "query", "docno", "score", "rank", "text", "title"]
    shuffled = frame.sample(frac=1.0, random_state=0)  # rows need not come in rank order

    for variant in registry.NAMES:
        model, params = _tiny(variant, fit5_vocab)
        ranker = Ranker(model, params, fit5_vocab, max_length=MAX_LENGTH)
        # (list-aware models: one query per call, the shape Ranker.score compiles for one list)
        reranker = RankT5ReRanker(ranker, chunk_pairs=1 if ranker.list_aware else 4096)
        calls = []
        score_lists = ranker.score_token_lists

        def counted(lists, score_lists=score_lists, calls=calls):
            calls.append(len(lists))
            return score_lists(lists)

        ranker.score_token_lists = counted
        out = reranker(shuffled)
        # Pairwise models: one call for all three queries (batches cross them); FiT5: each
        # query's candidates as one list.
        assert calls == ([1] * len(queries) if ranker.list_aware else [len(queries)]), variant
        columns = ["qid", "query", "docno", "text", "title", "score", "rank"]
        assert list(out.columns) == columns and len(out) == len(frame)
        assert (out["docno"].values == shuffled["docno"].values).all()  # rows kept in place
        for qid in queries:
            rows = out[out["qid"] == qid]
            first = shuffled[shuffled["qid"] == qid]
            titles = [t or "" for t in rows["title"]]
            features = first["score"].tolist() if ranker.needs_features else None
            want = ranker.score(queries[qid], rows["text"].tolist(), features, titles)
            np.testing.assert_allclose(rows["score"].to_numpy(), want, atol=1e-5, err_msg=variant)
            assert sorted(rows["rank"]) == list(range(len(rows)))
            assert rows.loc[rows["score"].idxmax(), "rank"] == 0
        if ranker.needs_features:
            # FiT5 reads the input scores: other first-stage scores, other output scores ...
            other = shuffled.assign(score=shuffled["score"].to_numpy()[::-1])
            assert np.abs(reranker(other)["score"].to_numpy() - out["score"].to_numpy()).max()
            # ... and refuses a frame without them, in one line
            with pytest.raises(ConfigError, match="no score column") as err:
                reranker(shuffled.drop(columns=["score", "rank"]))
            assert "\n" not in str(err.value)
            with pytest.raises(pt.validate.InputValidationError):
                pt.inspect.transformer_outputs(reranker, ["qid", "query", "docno", "text"])
        else:
            without = reranker(shuffled.drop(columns=["score", "rank"]))
            np.testing.assert_allclose(without["score"], out["score"], atol=1e-6)
        assert pt.inspect.transformer_outputs(reranker, list(frame.columns)) == columns


def test_retriever_and_text_loader_frames(setup, capsys):
    queries = dict(list(setup["queries"].items())[:4])
    retriever = RankT5Retriever.from_index(
        setup["bm25_dir"], k=8, verbose=True, corpus=setup["corpus_path"]
    )
    topics = _topics({**queries, "nothing": "zzzqqq"})  # a query no document matches
    topics["extra"] = "kept"
    found = retriever(topics)
    assert "RankT5Retriever(bm25, k=8)" in capsys.readouterr().err  # the progress bar
    assert list(found.columns) == ["qid", "query", "extra", "docno", "score", "rank"]
    assert set(found["qid"]) == set(queries) and (found["extra"] == "kept").all()
    assert frame_to_run(found) == bm25.BM25Index.load(setup["bm25_dir"]).search(queries, 8)
    for _, rows in found.groupby("qid"):
        assert rows["rank"].tolist() == list(range(len(rows)))  # trec_eval order, ranks from 0
        assert list(rows["docno"]) == measures.rank_documents(dict(zip(rows.docno, rows.score)))

    # `% k` lowers the retriever's own k
    cut = (retriever % 3).compile()
    assert isinstance(cut, RankT5Retriever) and cut.k == 3
    assert (cut(topics).groupby("qid").size() <= 3).all()
    assert (retriever % 50).compile() is retriever

    # the corpus text: by docno, through pt.text.get_text on the retriever
    with_text = (retriever >> pt.text.get_text(retriever, ["text", "title"]))(topics)
    corpus = setup["corpus"]
    assert with_text["text"].tolist() == [corpus[d]["text"] for d in with_text["docno"]]
    assert with_text["title"].tolist() == [corpus[d]["title"] for d in with_text["docno"]]
    with_text_columns = pt.inspect.transformer_outputs(
        retriever >> TextLoader(corpus, "text"), ["qid", "query"]
    )
    assert with_text_columns == ["qid", "query", "docno", "score", "rank", "text"]

    with pytest.raises(ConfigError, match="'missing' of the frame is not in"):
        TextLoader(setup["corpus_path"])(pd.DataFrame({"qid": ["q"], "docno": ["missing"]}))
    with pytest.raises(ConfigError, match="needs a query frame"):
        retriever(pd.DataFrame({"qid": ["1"]}))
    empty = retriever(topics.iloc[:0])
    assert len(empty) == 0 and list(empty.columns)[-3:] == ["docno", "score", "rank"]
    with pytest.raises(ConfigError, match="given no corpus"):
        RankT5Retriever.from_index(setup["bm25_dir"]).text_loader()
    assert not pt.java.started()  # PyTerrier 1.x: all of the above without a JVM
