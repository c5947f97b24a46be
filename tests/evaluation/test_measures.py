"""Run evaluation against pytrec_eval (trec_eval) and in-graph Rax metrics."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from rankt5_jax.data import formats
from rankt5_jax.errors import ConfigError
from rankt5_jax.evaluation import measures
from rankt5_jax.modeling import metrics as modeling_metrics

pytrec_eval = pytest.importorskip("pytrec_eval")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _random_case(seed):
    """A run with tied scores, unjudged documents, judged queries missing from the run, and
    graded labels (including queries whose judgments are all non-relevant)."""
    rng = np.random.default_rng(seed)
    run, qrels = {}, {}
    for q in range(25):
        qid = f"q{q}"
        docs = [f"d{i}" for i in rng.choice(60, size=int(rng.integers(1, 40)), replace=False)]
        if q % 7 != 3:  # judged but absent from the run
            run[qid] = {d: float(rng.integers(0, 5)) / 2 for d in docs}  # many ties
        judged = rng.choice(60, size=int(rng.integers(1, 15)), replace=False)
        qrels[qid] = {f"d{i}": int(rng.integers(0, 4)) for i in judged}
    run["q_unjudged"] = {"d1": 1.0, "d2": 0.5}
    return run, qrels


def _trec_reference(run, qrels, rel):
    evaluator = pytrec_eval.RelevanceEvaluator(
        qrels,
        {"map", "ndcg_cut.5,10", "recall.100", "P.5"},
        relevance_level=rel,
    )
    per_query = evaluator.evaluate(run)
    # RR@10 = recip_rank of the run cut to its top 10 in trec_eval's order.
    cut = {q: {d: s[d] for d in measures.rank_documents(s)[:10]} for q, s in run.items()}
    rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}, relevance_level=rel).evaluate(cut)
    names = {
        "AP": "map",
        "nDCG@5": "ndcg_cut_5",
        "nDCG@10": "ndcg_cut_10",
        "R@100": "recall_100",
        "P@5": "P_5",
    }
    out = {ours: np.mean([v[theirs] for v in per_query.values()]) for ours, theirs in names.items()}
    out["RR@10"] = np.mean([v["recip_rank"] for v in rr.values()])
    return out, len(per_query)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("rel", [1, 2])
def test_evaluate_run_equals_trec_eval(seed, rel):
    run, qrels = _random_case(seed)
    expected, num_queries = _trec_reference(run, qrels, rel)
    ours = measures.evaluate_run(run, qrels, list(expected), rel=rel)
    assert len(measures.evaluate_per_query(run, qrels, ["AP"])) == num_queries
    for name, value in expected.items():
        assert ours[name] == pytest.approx(value, abs=1e-6), name


def test_rel_level_in_measure_name():
    run, qrels = _random_case(5)
    a = measures.evaluate_run(run, qrels, ["RR(rel=2)@10", "AP(rel=2)"])
    b = measures.evaluate_run(run, qrels, ["RR@10", "AP"], rel=2)
    assert a["RR(rel=2)@10"] == b["RR@10"] and a["AP(rel=2)"] == b["AP"]


def test_tie_order_is_docid_descending():
    assert measures.rank_documents({"a": 1.0, "c": 1.0, "b": 2.0}) == ["b", "c", "a"]


def test_bad_measure_name():
    with pytest.raises(ConfigError):
        measures.Measure.parse("MRR@10")


def test_in_graph_metrics_perfect_and_reversed():
    labels = np.array([[1.0, 0.0, 0.0, 0.0]])
    mask = np.ones_like(labels, bool)
    perfect = modeling_metrics.in_graph_metrics(np.array([[4.0, 3.0, 2.0, 1.0]]), labels, mask)
    worst = modeling_metrics.in_graph_metrics(np.array([[1.0, 2.0, 3.0, 4.0]]), labels, mask)
    assert float(perfect["mrr@10"]) == 1.0 and float(perfect["ndcg@10"]) == 1.0
    assert float(worst["mrr@10"]) == pytest.approx(0.25)
    assert float(worst["map"]) == pytest.approx(0.25)


def test_evaluate_cli_equals_trec_eval(tmp_path):
    run, qrels = _random_case(7)
    run_path, qrels_path = tmp_path / "run.txt", tmp_path / "qrels.txt"
    formats.write_trec_run(str(run_path), run)
    with open(qrels_path, "w") as handle:
        for qid, docs in qrels.items():
            for docid, grade in docs.items():
                handle.write(f"{qid} 0 {docid} {grade}\n")
    expected, _ = _trec_reference(formats.read_run(str(run_path)), qrels, 1)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "rankt5_jax",
            "evaluate",
            "--run",
            str(run_path),
            "--qrels",
            str(qrels_path),
            "--metrics",
            "RR@10,nDCG@5,nDCG@10,AP,R@100,P@5",
            "--json",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    for name, value in expected.items():
        assert result[name] == pytest.approx(value, abs=1e-6), name


def test_evaluate_cli_beir_qrels_and_errors(tmp_path):
    run_path = tmp_path / "run.txt"
    run_path.write_text("q1 Q0 d1 1 2.0 t\nq1 Q0 d2 2 1.0 t\n")
    beir = tmp_path / "test.tsv"
    beir.write_text("query-id\tcorpus-id\tscore\nq1\td2\t1\n")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "rankt5_jax",
            "evaluate",
            "--run",
            str(run_path),
            "--qrels",
            str(beir),
            "--metrics",
            "RR@10",
            "--json",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    assert json.loads(out.stdout.splitlines()[-1]) == {"RR@10": 0.5}
    bad = tmp_path / "bad_run.txt"
    bad.write_text("q1 Q0 d1 1 2.0 t\nq1 Q0 d2 2.0\n")
    out = subprocess.run(
        [sys.executable, "-m", "rankt5_jax", "evaluate", "--run", str(bad), "--qrels", str(beir)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and f"{bad}:2" in out.stderr
