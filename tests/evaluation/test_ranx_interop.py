"""ranx on `rankt5 compare --output table.json` gives our per-query values and t-test p-values:
the table's runs have their ties broken in trec_eval's order. On the original runs, which are
full of ties, ranx ranks ties its own way and its values differ; README's awk line (each score
replaced by minus its rank, on our run files) makes it agree too."""

import json
import subprocess

import numpy as np
import pytest

ranx = pytest.importorskip("ranx")

from rankt5_jax import cli  # noqa: E402
from rankt5_jax.data import formats  # noqa: E402
from rankt5_jax.evaluation import compare  # noqa: E402

METRICS = "RR@10,nDCG@10,nDCG@5,AP,R@20,P@5,RR(rel=2)@10"


def _collection(seed=0, queries=30, docs=40):
    """Graded qrels and three runs whose scores are rounded to one decimal (many ties); the
    last run lacks two judged queries."""
    rng = np.random.default_rng(seed)
    qrels, runs = {}, {"base": {}, "better": {}, "other": {}}
    for q in range(queries):
        qid = f"q{q:02d}"
        docids = [f"d{q}-{i:03d}" for i in range(docs)]
        grades = rng.choice([0, 0, 0, 1, 2, 3], size=docs)
        grades[rng.integers(docs)] = 2  # every query has a relevant document
        qrels[qid] = {d: int(g) for d, g in zip(docids, grades) if rng.random() < 0.7 or g}
        for name, signal in (("base", 0.1), ("better", 0.3), ("other", 0.2)):
            if name == "other" and q < 2:
                continue
            scores = np.round(signal * grades + rng.random(docs), 1)
            runs[name][qid] = {d: float(s) for d, s in zip(docids, scores)}
    return qrels, runs


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ranx")
    qrels, runs = _collection()
    with open(folder / "qrels.txt", "w") as handle:
        for qid, judged in qrels.items():
            for docid, grade in judged.items():
                handle.write(f"{qid} 0 {docid} {grade}\n")
    paths = []
    for name, run in runs.items():
        path = str(folder / f"{name}.run")
        formats.write_trec_run(path, run)
        paths.append(path)
    out = folder / "table.json"
    args = ["compare", "--qrels", str(folder / "qrels.txt"), "--runs", *paths]
    assert cli.main(args + ["--metrics", METRICS, "--output", str(out)]) == 0
    with open(out) as handle:
        return {"table": json.load(handle), "paths": paths, "folder": folder, "runs": runs}


def _ranx_values(qrels, run, metrics):
    ranx.evaluate(qrels, run, list(metrics.values()), make_comparable=True)
    return {ours: dict(run.scores[theirs]) for ours, theirs in metrics.items()}


def test_ranx_on_the_table_gives_our_values_and_p_values(table):
    t = table["table"]
    assert t["tie_order"] == compare.TIE_ORDER
    metrics = t["ranx"]["metrics"]
    assert metrics == {
        "RR@10": "mrr@10",
        "nDCG@10": "ndcg@10",
        "nDCG@5": "ndcg@5",
        "AP": "map",
        "R@20": "recall@20",
        "P@5": "precision@5",
        "RR(rel=2)@10": "mrr@10-l2",
    }
    qrels = ranx.Qrels(t["ranx"]["qrels"])
    runs = [ranx.Run(run, name=name) for name, run in t["ranx"]["runs"].items()]
    for run in runs:
        values = _ranx_values(qrels, run, metrics)
        for metric in metrics:
            ours = t["per_query"][run.name][metric]
            assert set(ours) == set(t["qids"])
            theirs = {q: values[metric].get(q, 0.0) for q in ours}
            np.testing.assert_allclose(
                [theirs[q] for q in t["qids"]], [ours[q] for q in t["qids"]], atol=1e-9
            )
            assert np.isclose(np.mean(list(theirs.values())), t["metrics"][run.name][metric])
    assert t["queries"]["other"]["missing"] == 2  # counted 0 by both (make_comparable)

    report = ranx.compare(
        qrels, runs, metrics=list(metrics.values()), stat_test="student", make_comparable=True
    ).to_dict()
    baseline = t["baseline"]
    for test in t["tests"]:
        p = report[test["run"]]["comparisons"][baseline][metrics[test["metric"]]]
        if np.isnan(p):  # scipy's t-test of all-zero differences; we define it as 1
            assert test["p_value"] == 1.0 and test["difference"] == 0.0
        else:
            assert p == pytest.approx(test["p_value"], rel=1e-9, abs=1e-15)
    assert any(test["p_value"] < 0.05 for test in t["tests"])  # not all trivially equal


def test_ties_change_ranx_values_and_readme_awk_line_fixes_them(table):
    t = table["table"]
    metrics = {m: t["ranx"]["metrics"][m] for m in ("RR@10", "nDCG@10", "AP")}
    qrels = ranx.Qrels(t["ranx"]["qrels"])
    base_path = table["paths"][0]
    tied = ranx.Run.from_file(base_path, kind="trec")
    assert len({s for docs in table["runs"]["base"].values() for s in docs.values()}) <= 31
    differ = 0
    values = _ranx_values(qrels, tied, metrics)
    for metric in metrics:
        ours = t["per_query"]["base"][metric]
        differ += sum(abs(values[metric][q] - ours[q]) > 1e-12 for q in ours)
    assert differ > 0  # ranx orders the ties otherwise

    # README: `awk '{print $1, $2, $3, $4, -$4, $6}' bm25.run > bm25.ranked.run`
    fixed = str(table["folder"] / "base.ranked.run")
    with open(fixed, "w") as handle:
        subprocess.run(
            ["awk", "{print $1, $2, $3, $4, -$4, $6}", base_path], stdout=handle, check=True
        )
    values = _ranx_values(qrels, ranx.Run.from_file(fixed, kind="trec"), metrics)
    for metric in metrics:
        ours = t["per_query"]["base"][metric]
        np.testing.assert_allclose([values[metric][q] for q in ours], list(ours.values()))
    # and our own evaluation ranks the rewritten file the same
    assert compare.tie_free_run(formats.read_run(fixed)) == compare.tie_free_run(
        table["runs"]["base"]
    )
