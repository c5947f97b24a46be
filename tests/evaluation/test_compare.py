"""`rankt5 compare`: p-values against scipy on pytrec_eval's per-query values, the randomization
test against an independent loop and exact enumeration, corrections, edge cases, tables, CLI."""

import itertools
import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from rankt5_jax import cli
from rankt5_jax.data import formats
from rankt5_jax.errors import ConfigError
from rankt5_jax.evaluation import compare, measures

pytrec_eval = pytest.importorskip("pytrec_eval")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _collection(seed, num_queries=40):
    """Graded qrels and three runs: a baseline, a better run (relevant documents pushed up) and
    a noisy one; each run misses some judged queries and names an unjudged one."""
    rng = np.random.default_rng(seed)
    qrels, runs = {}, {"base": {}, "better": {}, "noisy": {}}
    for q in range(num_queries):
        qid = f"q{q}"
        docs = [f"d{i}" for i in rng.choice(80, size=30, replace=False)]
        qrels[qid] = {d: int(rng.integers(0, 4)) for d in docs[: int(rng.integers(2, 12))]}
        base = {d: float(rng.normal()) for d in docs}
        better = {d: s + 0.8 * qrels[qid].get(d, 0) for d, s in base.items()}
        noisy = {d: s + float(rng.normal()) for d, s in base.items()}
        for name, run in (("base", base), ("better", better), ("noisy", noisy)):
            if (q + len(name)) % 9 != 0:  # judged but missing from this run
                runs[name][qid] = run
    for name in runs:
        runs[name][f"unjudged_{name}"] = {"d1": 1.0}
    return qrels, runs


def _pytrec_per_query(run, qrels, qids):
    """Per-query values by pytrec_eval (trec_eval), judged queries missing from the run as 0."""
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {"map", "ndcg_cut.10"})
    values = evaluator.evaluate(run)
    cut = {q: {d: s[d] for d in measures.rank_documents(s)[:10]} for q, s in run.items()}
    rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(cut)
    return {
        "AP": np.array([values[q]["map"] if q in values else 0.0 for q in qids]),
        "nDCG@10": np.array([values[q]["ndcg_cut_10"] if q in values else 0.0 for q in qids]),
        "RR@10": np.array([rr[q]["recip_rank"] if q in rr else 0.0 for q in qids]),
    }


@pytest.mark.parametrize("seed", [0, 1])
def test_ttest_equals_scipy_on_pytrec_eval_values(seed):
    qrels, runs = _collection(seed)
    result = compare.compare_runs(
        runs, qrels, metrics=["RR@10", "nDCG@10", "AP"], correction="none"
    )
    qids = sorted(qrels)
    assert result.qids == qids and result.baseline == "base"
    reference = {name: _pytrec_per_query(run, qrels, qids) for name, run in runs.items()}
    for name in runs:
        for metric in result.metrics:
            np.testing.assert_allclose(
                result.runs[name].values[metric], reference[name][metric], atol=1e-12
            )
    significant = []
    for name in ("better", "noisy"):
        for metric in result.metrics:
            expected = stats.ttest_rel(reference[name][metric], reference["base"][metric]).pvalue
            t = result.result(name, metric)
            assert abs(t.p_value - expected) <= 1e-9, (name, metric)
            assert t.p_adjusted == t.p_value and t.significant == (expected <= 0.05)
            assert t.mean_run == pytest.approx(reference[name][metric].mean(), abs=1e-12)
            assert t.mean_baseline == pytest.approx(reference["base"][metric].mean(), abs=1e-12)
            significant.append(t.significant)
    assert any(significant) and not all(significant)  # the case tests both outcomes


def test_missing_and_unjudged_queries_are_counted():
    qrels, runs = _collection(3)
    result = compare.compare_runs(runs, qrels)
    for name in runs:
        judged_missing = sum(1 for q in qrels if q not in runs[name])
        assert judged_missing > 0
        assert result.runs[name].missing == judged_missing
        assert result.runs[name].unjudged == 1
        # The mean is over every judged query (missing ones as 0): trec_eval -c.
        ranked = measures.evaluate_run(runs[name], qrels, ["AP"])["AP"]
        assert result.runs[name].means["AP"] == pytest.approx(
            ranked * (len(qrels) - judged_missing) / len(qrels)
        )
    report = result.to_json()["queries"]
    assert report["better"] == {
        "judged": 40,
        "evaluated": 40,
        "missing": result.runs["better"].missing,
        "unjudged": 1,
    }
    table = result.markdown()
    assert f"| better | 40 | 40 | {result.runs['better'].missing} | 1 |" in table


def _exact_sign_flip_p(diff):
    observed = abs(diff.mean())
    flips = np.array(list(itertools.product([-1, 1], repeat=diff.size)))
    return float(np.mean(np.abs(flips @ diff) / diff.size >= observed - 1e-12))


def _loop_randomization_p(diff, permutations, seed):
    """An independent implementation: Python's random, one permutation at a time."""
    rand = random.Random(seed)
    observed = abs(sum(diff) / len(diff))
    reached = 0
    for _ in range(permutations):
        total = sum(d if rand.random() < 0.5 else -d for d in diff)
        reached += abs(total / len(diff)) >= observed - 1e-12
    return (reached + 1) / (permutations + 1)


def test_randomization_test_agrees_with_an_independent_loop_and_exact_enumeration():
    rng = np.random.default_rng(7)
    a = rng.uniform(size=12)
    b = np.clip(a + rng.normal(0.08, 0.2, size=12), 0, 1)
    permutations = 20_000
    ours = compare.randomization_test(b, a, permutations=permutations, seed=3)
    diff = b - a
    exact = _exact_sign_flip_p(diff)
    loop = _loop_randomization_p(list(diff), 4000, seed=11)
    assert 0.02 < exact < 0.9  # a case where the test is not trivially decided
    # Monte Carlo errors: sd of a proportion over R draws.
    sd = np.sqrt(exact * (1 - exact) / permutations)
    assert abs(ours - exact) <= 4 * sd + 1 / permutations
    sd_both = np.sqrt(exact * (1 - exact) * (1 / permutations + 1 / 4000))
    assert abs(ours - loop) <= 4 * sd_both + 2 / 4000
    # Same seed, same p; another seed, another draw.
    assert compare.randomization_test(b, a, permutations=permutations, seed=3) == ours
    assert compare.randomization_test(b, a, permutations=permutations, seed=4) != ours
    # A clear difference reaches the smallest p the draws allow.
    assert compare.randomization_test(a + 0.5, a, permutations=999, seed=0) == 1 / 1000


def test_randomization_through_compare_runs_is_seeded():
    qrels, runs = _collection(2)
    kwargs = dict(metrics=["nDCG@10"], test="randomization", permutations=2000)
    one = compare.compare_runs(runs, qrels, seed=5, **kwargs).to_json()
    two = compare.compare_runs(runs, qrels, seed=5, **kwargs).to_json()
    assert one == two and one["permutations"] == 2000 and one["seed"] == 5
    t = compare.compare_runs(runs, qrels, **kwargs, correction="none").result("better", "nDCG@10")
    assert t.test == "randomization" and t.p_value < 0.01 and t.significant


def test_identical_runs_and_zero_differences_give_p_one():
    qrels, runs = _collection(4)
    same = {"a": runs["base"], "b": dict(runs["base"])}
    # Scores changed, rankings kept: the runs differ, every per-query value is equal.
    rescaled = {q: {d: 3 * s + 1 for d, s in docs.items()} for q, docs in runs["base"].items()}
    for second in (same["b"], rescaled):
        for test in ("ttest", "randomization"):
            result = compare.compare_runs(
                {"a": runs["base"], "b": second},
                qrels,
                metrics=["P@10"],
                test=test,
                permutations=500,
            )
            t = result.result("b", "P@10")
            assert t.p_value == 1.0 and t.p_adjusted == 1.0 and not t.significant
            assert t.difference == 0.0
    assert compare.paired_ttest(np.zeros(5), np.zeros(5)) == 1.0
    assert compare.randomization_test(np.ones(5), np.ones(5), permutations=10) == 1.0


def test_a_single_query():
    qrels = {"q1": {"d1": 1, "d2": 0}}
    runs = {"a": {"q1": {"d1": 0.1, "d2": 0.9}}, "b": {"q1": {"d1": 0.9, "d2": 0.1}}}
    for test in ("ttest", "randomization"):
        result = compare.compare_runs(runs, qrels, metrics=["RR@10"], test=test)
        t = result.result("b", "RR@10")
        assert (t.mean_baseline, t.mean_run) == (0.5, 1.0)
        assert t.p_value == 1.0 and not t.significant  # one query: no test possible


def test_qrels_sharing_no_query_is_a_one_line_error(tmp_path, capsys):
    qrels = tmp_path / "qrels.txt"
    qrels.write_text("q1 0 d1 1\n")
    a, b = tmp_path / "a.run", tmp_path / "b.run"
    a.write_text("q1 Q0 d1 1 1.0 a\n")
    b.write_text("q9 Q0 d1 1 1.0 b\n")
    with pytest.raises(ConfigError, match="run b shares no query with the qrels"):
        compare.compare_runs(
            {"a": formats.read_run(str(a)), "b": formats.read_run(str(b))},
            formats.read_qrels(str(qrels)),
        )
    code = cli.main(["compare", "--qrels", str(qrels), "--runs", str(a), str(b)])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and "shares no query with the qrels" in err[0]


def test_holm_and_bonferroni():
    p = [0.01, 0.04, 0.03, 0.2]
    assert compare.adjust(p, "bonferroni") == pytest.approx([0.04, 0.16, 0.12, 0.8])
    # Holm: sorted 0.01, 0.03, 0.04, 0.2 times 4, 3, 2, 1 -> 0.04, 0.09, 0.08 -> 0.09, 0.2.
    assert compare.adjust(p, "holm") == pytest.approx([0.04, 0.09, 0.09, 0.2])
    assert compare.adjust(p, "none") == p
    assert compare.adjust([0.5, 0.6], "holm") == [1.0, 1.0]
    with pytest.raises(ConfigError, match="unknown correction"):
        compare.adjust(p, "sidak")


def test_correction_decides_significance_per_metric_family():
    qrels, runs = _collection(0)
    plain = compare.compare_runs(runs, qrels, correction="none")
    holm = compare.compare_runs(runs, qrels, correction="holm")
    for metric in plain.metrics:
        ps = [plain.result(n, metric).p_value for n in ("better", "noisy")]
        expected = compare.adjust(ps, "holm")
        got = [holm.result(n, metric).p_adjusted for n in ("better", "noisy")]
        assert got == pytest.approx(expected)
        for n, p_adj in zip(("better", "noisy"), got):
            assert holm.result(n, metric).significant == (p_adj <= 0.05)


def test_tables_mark_significance():
    qrels, runs = _collection(1)
    result = compare.compare_runs(runs, qrels, metrics=["nDCG@10", "AP"])
    t = result.result("better", "nDCG@10")
    assert t.significant and t.difference > 0
    md = result.markdown()
    assert md.splitlines()[0] == "| run | nDCG@10 | AP |"
    assert f"| base (baseline) | {result.runs['base'].means['nDCG@10']:.4f} |" in md
    assert f"| better | {t.mean_run:.4f}†" in md
    assert "Holm-corrected" in md and "paired t-test over 40 judged queries" in md
    tex = result.latex()
    assert tex.startswith("\\begin{tabular}{lrr}") and "\\end{tabular}" in tex
    assert f"better & {t.mean_run:.4f}$^\\dagger$" in tex
    assert "nDCG@10 & AP" in tex
    named = compare.compare_runs({"a_b": runs["base"], "c%": runs["better"]}, qrels).latex()
    assert "a\\_b (baseline)" in named and "c\\%" in named


def test_cli_json_tables_and_no_jax(tmp_path):
    qrels, runs = _collection(0)
    qrels_path = tmp_path / "qrels.txt"
    qrels_path.write_text(
        "".join(f"{q} 0 {d} {g}\n" for q, docs in qrels.items() for d, g in docs.items())
    )
    paths = []
    for name, run in runs.items():
        paths.append(str(tmp_path / f"{name}.run"))
        formats.write_trec_run(paths[-1], run, tag=name)
    md, tex = tmp_path / "out" / "table.md", tmp_path / "out" / "table.tex"
    code = (
        "import sys; from rankt5_jax import cli; rc = cli.main(sys.argv[1:]); "
        "assert 'jax' not in sys.modules and 'tensorflow' not in sys.modules, 'heavy import'; "
        "sys.exit(rc)"
    )
    argv = ["compare", "--qrels", str(qrels_path), "--runs", paths[1], paths[2],
            "--baseline", paths[0], "--metrics", "RR@10,nDCG@10", "--json",
            "--output", str(md), "--output", str(tex)]  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=REPO
    )
    assert out.returncode == 0, out.stderr
    printed = json.loads(out.stdout.strip().splitlines()[-1])
    assert list(printed["metrics"]) == ["base", "better", "noisy"]
    expected = compare.compare_runs(runs, qrels, metrics=["RR@10", "nDCG@10"]).to_json()
    for name, means in expected["metrics"].items():
        assert printed["metrics"][name] == pytest.approx(means, abs=1e-12)
    assert len(printed["tests"]) == 4
    for got, want in zip(printed["tests"], expected["tests"]):
        assert set(want) <= set(got)
        assert {k: got[k] for k in ("baseline", "run", "metric", "test", "significant")} == {
            k: want[k] for k in ("baseline", "run", "metric", "test", "significant")
        }
        assert got["p_value"] == pytest.approx(want["p_value"], rel=1e-12)
    assert md.read_text() in out.stdout and md.read_text().startswith("| run | RR@10 | nDCG@10 |")
    assert tex.read_text().startswith("\\begin{tabular}")
