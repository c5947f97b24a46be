"""Plots: `rankt5 compare --plot` (sorted per-query differences) and `rankt5 evaluate --plot`
(score distribution per relevance grade) write PNGs of the data they return."""

import numpy as np
import pytest

from rankt5_jax import cli
from rankt5_jax.data import formats
from rankt5_jax.errors import ConfigError
from rankt5_jax.evaluation import compare, plots

pytest.importorskip("matplotlib")

PNG = b"\x89PNG\r\n\x1a\n"


def _case():
    rng = np.random.default_rng(0)
    qrels, base, other = {}, {}, {}
    for q in range(12):
        qid = f"q{q}"
        docs = [f"d{i}" for i in range(15)]
        qrels[qid] = {d: int(rng.integers(0, 3)) for d in docs[:6]}
        base[qid] = {d: float(rng.normal()) for d in docs}
        other[qid] = {d: s + qrels[qid].get(d, 0) for d, s in base[qid].items()}
    return qrels, {"base": base, "other": other}


def _is_png(path):
    data = path.read_bytes()
    return len(data) > 1000 and data.startswith(PNG)


def test_difference_plot_draws_sorted_per_query_differences(tmp_path):
    qrels, runs = _case()
    comparison = compare.compare_runs(runs, qrels, metrics=["nDCG@10", "RR@10"])
    path = tmp_path / "sub" / "diff.png"
    drawn = plots.plot_differences(comparison, str(path))
    assert _is_png(path)
    assert set(drawn) == {("other", "nDCG@10"), ("other", "RR@10")}
    for (run, metric), panel in drawn.items():
        diff = panel["differences"]
        assert np.all(np.diff(diff) <= 0)  # sorted, largest gain first
        by_qid = dict(zip(comparison.qids, comparison.runs[run].values[metric]
                          - comparison.runs["base"].values[metric]))  # fmt: skip
        assert sorted(panel["qids"]) == comparison.qids
        np.testing.assert_array_equal(diff, [by_qid[q] for q in panel["qids"]])
        assert diff.mean() == pytest.approx(comparison.result(run, metric).difference)
    assert drawn[("other", "nDCG@10")]["differences"][0] > 0


def test_score_distribution_groups_scores_by_grade(tmp_path):
    qrels, runs = _case()
    run = runs["other"]
    run["unjudged_query"] = {"d1": 99.0}  # not judged: not drawn
    path = tmp_path / "dist.png"
    drawn = plots.plot_score_distributions(run, qrels, str(path), bins=20)
    assert _is_png(path)
    assert list(drawn) == ["0", "1", "2", "unjudged"]
    for key, panel in drawn.items():
        expected = sorted(
            s
            for q, docs in run.items()
            if q in qrels
            for d, s in docs.items()
            if str(qrels[q].get(d, "unjudged")) == key
        )
        assert sorted(panel["scores"]) == expected
        widths = np.diff(panel["edges"])
        assert np.sum(panel["counts"] * widths) == pytest.approx(1.0)  # a density
    assert drawn["unjudged"]["scores"].size == 12 * 9 and 99.0 not in drawn["unjudged"]["scores"]
    # Relevant documents were pushed up by their grade: the medians rise with it.
    medians = [np.median(drawn[g]["scores"]) for g in ("0", "1", "2")]
    assert medians == sorted(medians)


def test_evaluate_cli_plot_and_errors(tmp_path, capsys):
    qrels, runs = _case()
    run_path, qrels_path = tmp_path / "run.txt", tmp_path / "qrels.txt"
    formats.write_trec_run(str(run_path), runs["other"])
    qrels_path.write_text(
        "".join(f"{q} 0 {d} {g}\n" for q, docs in qrels.items() for d, g in docs.items())
    )
    png = tmp_path / "eval.png"
    argv = ["evaluate", "--run", str(run_path), "--qrels", str(qrels_path), "--plot", str(png)]
    assert cli.main(argv) == 0 and _is_png(png)
    capsys.readouterr()
    other = tmp_path / "q.txt"
    other.write_text("zz 0 d1 1\n")
    with pytest.raises(ConfigError, match="shares no query"):
        plots.plot_score_distributions(runs["other"], formats.read_qrels(str(other)), str(png))


def test_missing_matplotlib_names_the_extra(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(ConfigError, match=r"rankt5_jax\[plots\]"):
        plots.plot_score_distributions({"q": {"d": 1.0}}, {"q": {"d": 1}}, "x.png")
