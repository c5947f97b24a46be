"""`rankt5 sweep` over two generated BEIR-layout folders with a tiny checkpoint: BM25 or a given
run as first stage, re-ranking, the table with the average, resume, and refused settings."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from rankt5_jax import cli
from rankt5_jax.checkpoints import formats as ckpt_formats
from rankt5_jax.data import formats, synthetic
from rankt5_jax.errors import ConfigError
from rankt5_jax.evaluation import compare
from rankt5_jax.experiments import sweep
from rankt5_jax.modeling.models import RankT5EncDec
from rankt5_jax.modeling.network import get_config

METRICS = ["nDCG@10", "RR@10"]
OPTIONS = {"max_length": 48, "batch_size": 32}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, spm_path, vocab):
    """A Hugging Face-layout RankT5-EncDec directory with random weights and our vocabulary."""
    config = get_config("tiny", vocab_size=384)
    model = RankT5EncDec(config, score_token_id=vocab.token_id("<extra_id_10>"))
    params = model.get_initial_variables(
        jax.random.PRNGKey(0), {"encoder_input_tokens": (1, 1, 8)}
    )["params"]
    out = str(tmp_path_factory.mktemp("sweep_ckpt") / "model")
    ckpt_formats.save_hf(
        out, config, jax.tree_util.tree_map(np.asarray, params), "encdec", spm_path
    )
    return out


def _beir_folder(root, name, seed):
    """corpus.jsonl, queries.jsonl (with an unjudged train query) and qrels/test.tsv."""
    collection = synthetic.make_collection(
        num_queries=5, distractors_per_query=3, random_docs=8, doc_words=12, seed=seed
    )
    folder = root / name
    (folder / "qrels").mkdir(parents=True)
    with open(folder / "corpus.jsonl", "w") as handle:
        for docid, doc in collection["corpus"].items():
            handle.write(json.dumps({"_id": docid, **doc}) + "\n")
    queries = dict(collection["queries"])
    queries["train_only"] = "not in the test split"
    with open(folder / "queries.jsonl", "w") as handle:
        for qid, text in queries.items():
            handle.write(json.dumps({"_id": qid, "text": text}) + "\n")
    with open(folder / "qrels" / "test.tsv", "w") as handle:
        handle.write("query-id\tcorpus-id\tscore\n")
        for qid, docs in collection["qrels"].items():
            for docid, grade in docs.items():
                handle.write(f"{qid}\t{docid}\t{grade}\n")
    return str(folder), collection


def test_sweep_writes_the_table_and_resumes(tmp_path, checkpoint, monkeypatch, capsys):
    folder_a, coll_a = _beir_folder(tmp_path, "set_a", seed=3)
    folder_b, _ = _beir_folder(tmp_path, "set_b", seed=4)
    out = tmp_path / "out"
    kwargs = dict(top_k=6, metrics=METRICS, rerank_options=OPTIONS, progress=False)
    result = sweep.sweep(checkpoint, [folder_a, folder_b], str(out), first_stage="bm25", **kwargs)
    assert [d.name for d in result.datasets] == ["set_a", "set_b"]
    for d, folder in zip(result.datasets, (folder_a, folder_b)):
        assert not d.skipped and d.queries == 5
        qrels = formats.read_qrels(os.path.join(folder, "qrels", "test.tsv"))
        first = formats.read_run(str(out / d.name / "first_stage.run"))
        reranked = formats.read_run(str(out / d.name / "reranked.run"))
        assert set(first) <= set(qrels)  # only the split's queries were retrieved
        for qid, docs in first.items():
            assert 0 < len(docs) <= 6 and set(reranked[qid]) == set(docs)
        expected = compare.compare_runs(
            {"first_stage": first, "reranked": reranked}, qrels, metrics=METRICS
        )
        for run in ("first_stage", "reranked"):
            assert d.means[run] == pytest.approx(expected.runs[run].means, abs=1e-12)
        stored = json.loads((out / d.name / "metrics.json").read_text())
        assert stored["means"] == d.means and stored["queries"] == 5
        assert (out / d.name / "done.json").is_file()
    # The table: one row per dataset and the average of their means.
    table = (out / "table.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.count("|") > 3}
    assert {"set_a", "set_b", "Average"} <= set(rows)
    average = result.average()
    for metric in METRICS:
        want = np.mean([d.means["reranked"][metric] for d in result.datasets])
        assert average["reranked"][metric] == pytest.approx(want)
    assert f"{average['first_stage']['nDCG@10']:.4f}" in rows["Average"]
    assert f"{average['reranked']['RR@10']:.4f}" in rows["Average"]
    assert rows["set_a"].startswith("| set_a | 5 |")
    assert "\\begin{tabular}" in (out / "table.tex").read_text()
    stamp = os.path.getmtime(out / "set_a" / "reranked.run")

    # A second call skips both datasets: nothing is retrieved or re-ranked again.
    def refuse(*args, **kwargs):
        raise AssertionError("a finished dataset was run again")

    from rankt5_jax.inference import rerank
    from rankt5_jax.retrieval import bm25

    monkeypatch.setattr(rerank, "rerank_files", refuse)
    monkeypatch.setattr(bm25, "retrieve_files", refuse)
    capsys.readouterr()
    again = sweep.sweep(checkpoint, [folder_a, folder_b], str(out), first_stage="bm25", **kwargs)
    assert all(d.skipped for d in again.datasets)
    assert again.to_json()["average"] == result.to_json()["average"]
    assert os.path.getmtime(out / "set_a" / "reranked.run") == stamp
    assert capsys.readouterr().err.count("finished earlier") == 2
    # Other settings for the same output folder are refused, naming what changed.
    with pytest.raises(ConfigError, match="other settings .*top_k: 6 -> 5"):
        sweep.sweep(checkpoint, [folder_a], str(out), first_stage="bm25", **{**kwargs, "top_k": 5})
    monkeypatch.undo()

    # A given run as first stage (the same BM25 run, inside the folder): the same re-ranking.
    shutil.copy(out / "set_a" / "first_stage.run", os.path.join(folder_a, "bm25.run"))
    argv = ["sweep", "--checkpoint", checkpoint, "--datasets", folder_a,
            "--first_stage", "bm25.run", "--output_dir", str(tmp_path / "out2"), "--top_k", "6",
            "--metrics", ",".join(METRICS), "--max_length", "48", "--batch_size", "32",
            "--quiet", "--json"]  # fmt: skip
    assert cli.main(argv) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert list(printed["datasets"]) == ["set_a"]
    assert printed["datasets"]["set_a"]["reranked"] == pytest.approx(
        result.datasets[0].means["reranked"], abs=1e-6
    )
    assert formats.read_run(str(tmp_path / "out2" / "set_a" / "reranked.run")).keys() == set(
        coll_a["qrels"]
    ) & set(formats.read_run(str(out / "set_a" / "first_stage.run")))


def test_bad_dataset_folders_and_shared_runs_are_refused_before_any_work(tmp_path, capsys):
    folder_a, _ = _beir_folder(tmp_path, "set_a", seed=3)
    folder_b, _ = _beir_folder(tmp_path, "set_b", seed=4)
    os.remove(os.path.join(folder_b, "qrels", "test.tsv"))
    code = cli.main(["sweep", "--checkpoint", "none", "--datasets", folder_a, folder_b,
                     "--output_dir", str(tmp_path / "o")])  # fmt: skip
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and "missing qrels/test.tsv" in err[0]
    run = tmp_path / "shared.run"
    run.write_text("0 Q0 d1 1 1.0 x\n")
    folder_c, _ = _beir_folder(tmp_path, "set_c", seed=5)
    with pytest.raises(ConfigError, match="same file"):
        sweep.sweep("none", [folder_a, folder_c], str(tmp_path / "o"), first_stage=str(run))
    with pytest.raises(ConfigError, match="share a name"):
        sweep.sweep("none", [folder_a, folder_a + "/"], str(tmp_path / "o"))
    with pytest.raises(ConfigError, match="no run file"):
        sweep.sweep("none", [folder_a], str(tmp_path / "o"), first_stage="{dataset}.run")
    assert not os.path.exists(tmp_path / "o")  # refused before anything was written


class Killed(Exception):
    pass


def test_sweep_loads_once_resumes_inside_a_dataset_and_states_its_query_counts(
    tmp_path, checkpoint, monkeypatch, capsys
):
    from rankt5_jax import Ranker
    from rankt5_jax.inference import rerank, run_scoring

    folder_a, _ = _beir_folder(tmp_path, "set_a", seed=3)
    folder_b, _ = _beir_folder(tmp_path, "set_b", seed=4)
    loads = []
    load = rerank.LoadOptions.load
    monkeypatch.setattr(
        rerank.LoadOptions, "load", lambda self, c: loads.append(c) or load(self, c)
    )
    options = {**OPTIONS, "chunk_pairs": 6}  # a chunk per query or two
    kwargs = dict(top_k=6, metrics=METRICS, rerank_options=options, progress=False)
    reference = sweep.sweep(checkpoint, [folder_a, folder_b], str(tmp_path / "ref"), **kwargs)
    assert loads == [checkpoint]  # once for both datasets

    # set_b fails after its second chunk is journaled (as a kill would).
    out = tmp_path / "out"
    progress = out / "set_b" / "reranked.run.journal" / "progress.p0.json"
    score = Ranker.score_token_lists
    calls = []
    armed = [True]

    def failing(self, lists):
        if armed[0] and progress.is_file() and json.loads(progress.read_text())["chunks"] == 2:
            raise Killed
        calls.append(len(lists))
        return score(self, lists)

    monkeypatch.setattr(Ranker, "score_token_lists", failing)
    with pytest.raises(Killed):
        sweep.sweep(checkpoint, [folder_a, folder_b], str(out), **kwargs)
    assert (out / "set_a" / "done.json").is_file() and not (out / "set_b" / "done.json").exists()
    calls.clear()
    loads.clear()
    armed[0] = False
    again = sweep.sweep(checkpoint, [folder_a, folder_b], str(out), **kwargs)
    assert loads == [checkpoint] and [d.skipped for d in again.datasets] == [True, False]
    sizes = [len(d) for d in formats.read_run(str(out / "set_b" / "first_stage.run")).values()]
    chunks_b = len(run_scoring._chunk_bounds([min(6, n) for n in sizes], 6))
    assert len(calls) == chunks_b - 2  # only set_b's unrecorded chunks were scored
    for name in ("set_a", "set_b"):
        ours = (out / name / "reranked.run").read_bytes()
        assert ours == (tmp_path / "ref" / name / "reranked.run").read_bytes()
    assert not (out / "set_b" / "reranked.run.journal").exists()
    assert again.to_json()["average"] == reference.to_json()["average"]

    # --missing: a first stage lacking a judged query; zero counts it 0, skip leaves it out, as
    # compare_runs and the CLI's stderr line say.
    given = formats.read_run(str(out / "set_a" / "first_stage.run"))
    dropped = sorted(given)[0]
    run_file = os.path.join(folder_a, "lacking.run")
    formats.write_trec_run(run_file, {q: d for q, d in given.items() if q != dropped})
    qrels = formats.read_qrels(os.path.join(folder_a, "qrels", "test.tsv"))
    capsys.readouterr()
    base = ["sweep", "--checkpoint", checkpoint, "--datasets", folder_a, "--first_stage",
            "lacking.run", "--output_dir", str(tmp_path / "out3"), "--top_k", "6", "--metrics",
            ",".join(METRICS), "--max_length", "48", "--batch_size", "32", "--quiet", "--json"]  # fmt: skip
    for missing in ("zero", "skip"):
        assert cli.main([*base, "--missing", missing]) == 0
        captured = capsys.readouterr()
        printed = json.loads(captured.out.strip().splitlines()[-1])
        data = printed["datasets"]["set_a"]
        assert printed["missing_mode"] == missing
        assert data["missing"] == {"first_stage": 1, "reranked": 1}
        assert data["evaluated"]["reranked"] == (5 if missing == "zero" else 4)
        runs = {
            "first_stage": formats.read_run(str(tmp_path / "out3" / "set_a" / "first_stage.run")),
            "reranked": formats.read_run(str(tmp_path / "out3" / "set_a" / "reranked.run")),
        }
        expected = compare.compare_runs(runs, qrels, metrics=METRICS, missing=missing)
        assert data["reranked"] == pytest.approx(expected.runs["reranked"].means, abs=1e-12)
        assert f"of 5 judged queries (--missing {missing})" in captured.err


def test_a_sweep_with_fewer_datasets_keeps_the_earlier_rows(tmp_path, checkpoint, capsys):
    """A call naming fewer datasets than the folder holds merges its table with the datasets
    earlier calls finished there (same settings), averages over the whole table and names it;
    datasets finished with other settings are left out, naming the setting."""
    folder_a, _ = _beir_folder(tmp_path, "set_a", seed=3)
    folder_b, _ = _beir_folder(tmp_path, "set_b", seed=4)
    folder_c, _ = _beir_folder(tmp_path, "set_c", seed=5)
    out = tmp_path / "out"
    kwargs = dict(top_k=6, metrics=METRICS, rerank_options=OPTIONS, progress=False)
    both = sweep.sweep(checkpoint, [folder_a, folder_b], str(out), **kwargs)
    # set_a alone: set_b's row stays, the average is still over both.
    capsys.readouterr()
    alone = sweep.sweep(checkpoint, [folder_a], str(out), **kwargs)
    assert [(d.name, d.earlier) for d in alone.datasets] == [("set_a", False), ("set_b", True)]
    assert alone.average() == both.average()
    assert "set_b: finished by an earlier call" in capsys.readouterr().err
    table = (out / "table.md").read_text()
    rows = {line.split("|")[1].strip() for line in table.splitlines() if line.count("|") > 3}
    assert {"set_a", "set_b", "Average"} <= rows
    assert "Average over the 2 datasets of the table: set_a, set_b (set_b finished by an " in table
    stored = json.loads((out / "results.json").read_text())
    assert list(stored["datasets"]) == ["set_a", "set_b"] and stored["datasets"]["set_b"]["earlier"]
    assert stored["average_over"] == ["set_a", "set_b"]
    assert "set_b" in (out / "table.tex").read_text()
    # A new dataset: its row, then the earlier ones in the earlier table's order; the average
    # over all three.
    third = sweep.sweep(checkpoint, [folder_c], str(out), **kwargs)
    assert [d.name for d in third.datasets] == ["set_c", "set_a", "set_b"]
    for metric in METRICS:
        want = np.mean([d.means["reranked"][metric] for d in third.datasets])
        assert third.average()["reranked"][metric] == pytest.approx(want)
    # Other metrics and --missing apply to the earlier rows too (evaluated again from disk).
    ndcg = sweep.sweep(checkpoint, [folder_c], str(out), **{**kwargs, "metrics": ["nDCG@5"]})
    assert all(set(d.means["reranked"]) == {"nDCG@5"} for d in ndcg.datasets)
    assert len(ndcg.datasets) == 3
    # Another setting: the earlier datasets are left out, naming it; the table is not partial.
    folder_d, _ = _beir_folder(tmp_path, "set_d", seed=6)
    capsys.readouterr()
    other = sweep.sweep(checkpoint, [folder_d], str(out), **{**kwargs, "top_k": 5})
    assert [d.name for d in other.datasets] == ["set_d"]
    err = capsys.readouterr().err
    assert err.count("with other settings (top_k: 6 -> 5): left out of the table") == 3
    assert "Average over the 1 dataset of the table: set_d." in (out / "table.md").read_text()
    leftovers = [name for name in os.listdir(out) if name.startswith("table") and "tmp" in name]
    assert not leftovers
