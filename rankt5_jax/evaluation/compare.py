"""Comparing runs as the papers do: per-query values, paired significance tests, tables.

Pure functions over `{qid: {docid: score}}` runs and `{qid: {docid: grade}}` qrels (no JAX):

  * `per_query_values`: per-query values of trec_eval-equal measures (`measures.py`) over every
    query the qrels judge, in one fixed order. A judged query the run does not rank is counted
    as missing and, by `missing`, counts 0 (`zero`, trec_eval's `-c`, the default here) or is
    left out (`skip`, trec_eval's default: its value is NaN, left out of the run's mean, and each
    test is over the queries both runs rank); a query the run ranks but the qrels do not judge
    is left out, and counted as unjudged. A run sharing no query with the qrels is an error.
  * `paired_ttest`: Student's paired two-sided t-test (`scipy.stats.ttest_rel`, as RankT5).
    Where it is undefined we define it: all differences zero gives p = 1 (the runs do not differ
    on any query), fewer than two queries gives p = 1 (no variance to test against).
  * `randomization_test`: the paired randomization (sign-flip permutation) test, two-sided, on the
    mean difference. Each of `permutations` draws flips the sign of every query's difference
    with probability 1/2 (numpy `Generator` seeded by `seed`); `b` draws reach the observed
    |mean| and p = (b + 1) / (permutations + 1), counting the observed assignment as one draw
    (Phipson and Smyth 2010: never 0, valid at any number of draws). All differences zero gives
    p = 1; one query gives p = 1 (its two sign assignments have the same |mean|).
  * `adjust`: Holm's step-down or Bonferroni's correction over one family: the runs compared
    with the baseline on one metric.
  * `compare_runs` -> `Comparison`, which renders Markdown, LaTeX and JSON (files are read by
    `rankt5 compare`, `cli/compare.py`: this stage is below `data`). `Comparison.table_json`
    adds the per-query values, the tie order, and the qrels and runs as ranx reads them.

Tied scores: every value here ranks a query's documents as trec_eval does, by score descending
and then docid descending (`TIE_ORDER`, `measures.rank_documents`). ranx 0.3.21 orders ties by
numba's unstable `argsort` of the scores (`ranx.utils.descending_sort`), so a run with ties can
get other values there; `tie_free_run` rescores each query's documents `n, n - 1, ..., 1` in
trec_eval's order, which ranx (and trec_eval) rank the same, and ranx then gives our per-query
values and p-values (`tests/evaluation/test_ranx_interop.py`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from rankt5_jax.errors import ConfigError
from rankt5_jax.evaluation import measures as measures_lib

TESTS = ("ttest", "randomization")
CORRECTIONS = ("holm", "bonferroni", "none")
DEFAULT_METRICS = ("RR@10", "nDCG@10", "AP")
_TEST_NAMES = {"ttest": "paired t-test", "randomization": "paired randomization test"}
_CORRECTION_NAMES = {"holm": "Holm", "bonferroni": "Bonferroni"}
TIE_ORDER = "score descending, then docid descending (trec_eval)"
_RANX_NAMES = {"RR": "mrr", "nDCG": "ndcg", "AP": "map", "R": "recall", "P": "precision"}


def ranx_metric(name: str, rel: int = 1) -> str | None:
    """ranx's name of one of our measures (`RR@10` -> `mrr@10`, `RR(rel=2)@10` -> `mrr@10-l2`,
    `AP` -> `map`), or None where ranx's differs from trec_eval's (AP with a cutoff, nDCG with
    a relevance level)."""
    measure = measures_lib.Measure.parse(name, default_rel=rel)
    if measure.kind == "AP" and measure.cutoff is not None:
        return None
    if measure.kind == "nDCG" and measure.rel != 1:
        return None
    text = _RANX_NAMES[measure.kind] + (f"@{measure.cutoff}" if measure.cutoff else "")
    return text + (f"-l{measure.rel}" if measure.rel != 1 and measure.kind != "nDCG" else "")


def tie_free_run(run: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """`run` with each query's documents scored `n, n - 1, ..., 1` in trec_eval's order (score
    descending, docid descending): no ties left, the same ranking for trec_eval and ranx."""
    out = {}
    for qid, docs in run.items():
        ranking = measures_lib.rank_documents(docs)
        out[qid] = {doc: float(len(ranking) - i) for i, doc in enumerate(ranking)}
    return out


@dataclass
class RunValues:
    """One run's per-query values over the qrels' queries (`Comparison.qids` order)."""

    name: str
    values: dict[str, np.ndarray]  # metric -> [num judged queries], float64
    missing: int  # judged queries the run does not rank: counted 0 (zero) or NaN (skip)
    unjudged: int  # queries the run ranks that the qrels do not judge: left out
    missing_mode: str = "zero"

    @property
    def means(self) -> dict[str, float]:
        """Means over the judged queries (`skip`: those the run ranks)."""
        return {m: float(np.nanmean(v)) for m, v in self.values.items()}

    @property
    def evaluated(self) -> int:
        """The queries each mean is over."""
        first = next(iter(self.values.values()))
        return int(np.count_nonzero(~np.isnan(first)))


@dataclass
class TestResult:
    baseline: str
    run: str
    metric: str
    mean_baseline: float
    mean_run: float
    p_value: float
    p_adjusted: float
    test: str
    significant: bool
    queries: int = 0  # the paired queries tested (and the two means above are over)

    @property
    def difference(self) -> float:
        return self.mean_run - self.mean_baseline

    def to_json(self) -> dict:
        return {
            "baseline": self.baseline,
            "run": self.run,
            "metric": self.metric,
            "mean_baseline": self.mean_baseline,
            "mean_run": self.mean_run,
            "difference": self.difference,
            "p_value": self.p_value,
            "p_adjusted": self.p_adjusted,
            "test": self.test,
            "significant": self.significant,
            "queries": self.queries,
        }


def per_query_values(
    run: Mapping[str, Mapping[str, float]],
    qrels: Mapping[str, Mapping[str, int]],
    metrics: Sequence[str] = DEFAULT_METRICS,
    rel: int = 1,
    name: str = "run",
    qids: Sequence[str] | None = None,
    missing: str = "zero",
) -> RunValues:
    """Per-query values of `metrics` over the judged queries `qids` (default: sorted qrels ids).

    Judged queries without results are counted in `missing` and count 0 (`missing="zero"`,
    trec_eval -c) or NaN (`"skip"`: left out of means and tests); queries the qrels do not judge
    are left out and counted in `unjudged`.
    """
    measures_lib.check_missing(missing)
    qids = sorted(q for q, judged in qrels.items() if judged) if qids is None else list(qids)
    names = [measures_lib.Measure.parse(m, default_rel=rel).name for m in metrics]
    judged = set(qids)
    ranked = {q for q, docs in run.items() if docs}
    if not ranked & judged:
        raise ConfigError(
            f"run {name} shares no query with the qrels ({len(ranked)} ranked queries, "
            f"{len(judged)} judged; e.g. run {sorted(ranked)[:1]}, qrels {qids[:1]})"
        )
    per_query = measures_lib.evaluate_per_query(
        {q: run[q] for q in ranked & judged}, qrels, metrics, rel=rel
    )
    absent = 0.0 if missing == "zero" else np.nan
    values = {
        m: np.array([per_query[q][m] if q in per_query else absent for q in qids], np.float64)
        for m in names
    }
    return RunValues(
        name=name,
        values=values,
        missing=len(judged - ranked),
        unjudged=len(ranked - judged),
        missing_mode=missing,
    )


def paired_ttest(run: np.ndarray, baseline: np.ndarray) -> float:
    """Two-sided p of Student's paired t-test (`scipy.stats.ttest_rel`); p = 1 where all
    differences are zero or there are fewer than two queries (the test is undefined there)."""
    from scipy import stats

    run, baseline = np.asarray(run, np.float64), np.asarray(baseline, np.float64)
    if run.shape != baseline.shape:
        raise ValueError(f"paired values differ in shape: {run.shape} vs {baseline.shape}")
    if run.size < 2 or not np.any(run - baseline):
        return 1.0
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(stats.ttest_rel(run, baseline).pvalue)
    return 1.0 if math.isnan(p) else p


def randomization_test(
    run: np.ndarray, baseline: np.ndarray, permutations: int = 10_000, seed: int = 0
) -> float:
    """Two-sided p of the paired randomization (sign-flip) test on the mean difference.

    p = (b + 1) / (permutations + 1), where b counts the random sign assignments whose |mean|
    reaches the observed |mean| (within 1e-10 relative, so float rounding of equal sums counts
    as equal). The draws depend only on `seed`, `permutations` and the number of queries.
    """
    if permutations < 1:
        raise ConfigError(f"permutations must be at least 1, got {permutations}")
    diff = np.asarray(run, np.float64) - np.asarray(baseline, np.float64)
    if diff.ndim != 1:
        raise ValueError(f"paired values must be 1-D, got shape {diff.shape}")
    n = diff.size
    if n == 0:
        raise ValueError("no paired values")
    observed = abs(diff.mean())
    threshold = observed - 1e-10 * float(np.abs(diff).mean())
    rng = np.random.default_rng(seed)
    chunk = max(1, min(permutations, 4_000_000 // n))  # bounded memory; fixed by (R, n)
    reached, done = 0, 0
    while done < permutations:
        size = min(chunk, permutations - done)
        signs = rng.integers(0, 2, size=(size, n), dtype=np.int8) * 2 - 1
        means = np.abs(signs @ diff) / n
        reached += int(np.count_nonzero(means >= threshold))
        done += size
    return (reached + 1) / (permutations + 1)


def adjust(p_values: Sequence[float], method: str) -> list[float]:
    """Family-wise corrected p-values: `holm` (step-down), `bonferroni`, or `none`."""
    p = [float(x) for x in p_values]
    m = len(p)
    if method == "none" or m == 0:
        return p
    if method == "bonferroni":
        return [min(1.0, m * x) for x in p]
    if method == "holm":
        order = sorted(range(m), key=lambda i: p[i])
        out = [0.0] * m
        running = 0.0
        for rank, i in enumerate(order):
            running = max(running, min(1.0, (m - rank) * p[i]))
            out[i] = running
        return out
    raise ConfigError(f"unknown correction {method!r}; use one of {', '.join(CORRECTIONS)}")


@dataclass
class Comparison:
    """Every run's per-query values and the tests of each run against the baseline."""

    qids: list[str]
    metrics: list[str]
    runs: dict[str, RunValues]  # baseline first
    baseline: str
    tests: list[TestResult]
    test: str
    alpha: float
    correction: str
    permutations: int
    seed: int
    sources: dict[str, str] = field(default_factory=dict)  # run name -> path
    missing: str = "zero"  # how judged queries a run does not rank count: zero or skip
    # The inputs (`table_json` writes them for ranx); not part of `to_json`.
    inputs: dict[str, Mapping] = field(default_factory=dict, repr=False)
    qrels: Mapping[str, Mapping[str, int]] = field(default_factory=dict, repr=False)

    def result(self, run: str, metric: str) -> TestResult:
        return next(t for t in self.tests if t.run == run and t.metric == metric)

    def to_json(self) -> dict:
        return {
            "metrics": {name: values.means for name, values in self.runs.items()},
            "tests": [t.to_json() for t in self.tests],
            "queries": {
                name: {
                    "judged": len(self.qids),
                    "evaluated": values.evaluated,
                    "missing": values.missing,
                    "unjudged": values.unjudged,
                }
                for name, values in self.runs.items()
            },
            "missing": self.missing,
            "baseline": self.baseline,
            "test": self.test,
            "alpha": self.alpha,
            "correction": self.correction,
            **(
                {"permutations": self.permutations, "seed": self.seed}
                if self.test == "randomization"
                else {}
            ),
        }

    def table_json(self) -> dict:
        """`to_json` plus what re-computing it elsewhere needs: each run's per-query values
        (`per_query[run][metric][qid]`, null where `--missing skip` leaves a query out), the
        tie order, and a `ranx` section: the qrels, each run with ties broken in trec_eval's
        order (`tie_free_run`), and ranx's metric names, so that

            ranx.compare(Qrels(t["ranx"]["qrels"]), [Run(r, name=n) for n, r in
                t["ranx"]["runs"].items()], metrics=list(t["ranx"]["metrics"].values()),
                stat_test="student", make_comparable=True)

        gives these values and t-test p-values (`--missing zero`; ranx has no `skip`)."""
        per_query = {
            name: {
                metric: {
                    qid: (None if math.isnan(v) else float(v))
                    for qid, v in zip(self.qids, values.values[metric])
                }
                for metric in self.metrics
            }
            for name, values in self.runs.items()
        }
        out = {**self.to_json(), "qids": list(self.qids), "per_query": per_query}
        out["tie_order"] = TIE_ORDER
        if self.inputs:
            out["ranx"] = {
                "metrics": {m: ranx_metric(m) for m in self.metrics if ranx_metric(m)},
                "qrels": {q: {d: int(g) for d, g in self.qrels[q].items()} for q in self.qids},
                "runs": {name: tie_free_run(self.inputs[name]) for name in self.runs},
            }
        return out

    def legend(self, better: str = "†", worse: str = "‡", at_most: str = "≤") -> str:
        how = _TEST_NAMES[self.test]
        if self.test == "randomization":
            how += f" ({self.permutations} permutations, seed {self.seed})"
        corrected = (
            f", {_CORRECTION_NAMES[self.correction]}-corrected per metric over "
            f"{len(self.runs) - 1} comparison{'s' if len(self.runs) > 2 else ''}"
            if self.correction != "none"
            else ", uncorrected"
        )
        return (
            f"significantly better ({better}) or worse ({worse}) than {self.baseline} at "
            f"p {at_most} {self.alpha:g}: "
            + (
                f"two-sided {how} over {len(self.qids)} judged queries{corrected}; judged "
                "queries a run does not rank count 0 (--missing zero)"
                if self.missing == "zero"
                else f"two-sided {how}{corrected}, each over the judged queries both runs rank; "
                "each mean is over the judged queries its run ranks (--missing skip)"
            )
        )

    def _marker(self, run: str, metric: str) -> str:
        if run == self.baseline:
            return ""
        t = self.result(run, metric)
        if not t.significant:
            return ""
        return "†" if t.difference > 0 else "‡"

    def markdown(self, digits: int = 4) -> str:
        lines = ["| run | " + " | ".join(self.metrics) + " |"]
        lines.append("|---|" + "---:|" * len(self.metrics))
        for name, values in self.runs.items():
            label = f"{name} (baseline)" if name == self.baseline else name
            cells = [f"{values.means[m]:.{digits}f}{self._marker(name, m)}" for m in self.metrics]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines += ["", self.legend() + ".", ""]
        adjusted = self.correction != "none"
        head = "| run | metric | baseline | run | difference | p |"
        head += f" p ({_CORRECTION_NAMES[self.correction]}) |" if adjusted else ""
        lines.append(head + " significant |")
        lines.append("|---|---|---:|---:|---:|---:|" + ("---:|" if adjusted else "") + "---|")
        for t in self.tests:
            row = (
                f"| {t.run} | {t.metric} | {t.mean_baseline:.{digits}f} | {t.mean_run:.{digits}f} "
                f"| {t.difference:+.{digits}f} | {_p(t.p_value)} |"
            )
            row += f" {_p(t.p_adjusted)} |" if adjusted else ""
            lines.append(row + f" {'yes' if t.significant else 'no'} |")
        how = "counted 0" if self.missing == "zero" else "left out"
        lines += [
            "",
            f"| run | judged queries | mean over | missing ({how}) | unjudged (left out) |",
        ]
        lines.append("|---|---:|---:|---:|---:|")
        for name, values in self.runs.items():
            lines.append(
                f"| {name} | {len(self.qids)} | {values.evaluated} | {values.missing} "
                f"| {values.unjudged} |"
            )
        return "\n".join(lines) + "\n"

    def latex(self, digits: int = 4) -> str:
        markers = {"†": r"$^\dagger$", "‡": r"$^\ddagger$"}
        lines = [
            r"\begin{tabular}{l" + "r" * len(self.metrics) + "}",
            r"\toprule",
            "Run & " + " & ".join(tex_escape(m) for m in self.metrics) + r" \\",
            r"\midrule",
        ]
        for name, values in self.runs.items():
            label = tex_escape(name) + (" (baseline)" if name == self.baseline else "")
            cells = []
            for m in self.metrics:
                marker = self._marker(name, m)
                cells.append(f"{values.means[m]:.{digits}f}{markers.get(marker, '')}")
            lines.append(label + " & " + " & ".join(cells) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}"]
        lines.append("% " + self.legend(better="dagger", worse="double dagger", at_most="<="))
        return "\n".join(lines) + "\n"


def _p(value: float) -> str:
    return f"{value:.2e}" if value < 1e-4 else f"{value:.4f}"


def tex_escape(text: str) -> str:
    """Escapes LaTeX's special characters in a run or metric name."""
    out = []
    for char in text:
        if char in "&%#_{}$":
            out.append("\\" + char)
        elif char == "\\":
            out.append(r"\textbackslash{}")
        elif char in "~^":
            out.append(r"\textasciitilde{}" if char == "~" else r"\textasciicircum{}")
        else:
            out.append(char)
    return "".join(out)


def compare_runs(
    runs: Mapping[str, Mapping[str, Mapping[str, float]]],
    qrels: Mapping[str, Mapping[str, int]],
    baseline: str | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    test: str = "ttest",
    alpha: float = 0.05,
    correction: str = "holm",
    permutations: int = 10_000,
    seed: int = 0,
    rel: int = 1,
    missing: str = "zero",
) -> Comparison:
    """Tests every run against `baseline` (default: the first run) on each metric.

    Args:
      runs: run name -> `{qid: {docid: score}}`, in table order.
      qrels: `{qid: {docid: grade}}`; its judged queries are the queries of every test.
      test: `ttest` (Student's paired t-test) or `randomization` (sign-flip, seeded).
      correction: `holm`, `bonferroni` or `none`, over the runs compared on one metric.
      missing: judged queries a run does not rank count 0 (`zero`, trec_eval -c: every test is
        over every judged query) or are left out (`skip`: each run's mean is over the queries it
        ranks, as `rankt5 evaluate`; each test is over the queries both runs rank).
    """
    if test not in TESTS:
        raise ConfigError(f"unknown test {test!r}; use one of {', '.join(TESTS)}")
    if correction not in CORRECTIONS:
        raise ConfigError(f"unknown correction {correction!r}; use one of {', '.join(CORRECTIONS)}")
    if not 0 < alpha < 1:
        raise ConfigError(f"alpha must be in (0, 1), got {alpha}")
    if not runs:
        raise ConfigError("no runs to compare")
    metrics = [measures_lib.Measure.parse(m, default_rel=rel).name for m in metrics]
    if not metrics:
        raise ConfigError("no metrics given")
    baseline = next(iter(runs)) if baseline is None else baseline
    if baseline not in runs:
        raise ConfigError(f"baseline {baseline!r} is not one of the runs: {', '.join(runs)}")
    qids = sorted(q for q, judged in qrels.items() if judged)
    if not qids:
        raise ConfigError("the qrels judge no query")
    order = [baseline] + [name for name in runs if name != baseline]
    values = {
        name: per_query_values(
            runs[name], qrels, metrics, rel=rel, name=name, qids=qids, missing=missing
        )
        for name in order
    }
    base = values[baseline]
    tests: list[TestResult] = []
    for metric in metrics:
        family = []
        for name in order[1:]:
            a, b = values[name].values[metric], base.values[metric]
            paired = ~(np.isnan(a) | np.isnan(b))  # every query with missing="zero"
            a, b = a[paired], b[paired]
            if not a.size:
                p = 1.0  # the two runs rank no judged query in common: nothing to test
            elif test == "ttest":
                p = paired_ttest(a, b)
            else:
                p = randomization_test(a, b, permutations=permutations, seed=seed)
            family.append((name, p, a, b))
        adjusted = adjust([p for _, p, _, _ in family], correction)
        for (name, p, a, b), p_adj in zip(family, adjusted):
            tests.append(
                TestResult(
                    baseline=baseline,
                    run=name,
                    metric=metric,
                    mean_baseline=float(b.mean()) if b.size else 0.0,
                    mean_run=float(a.mean()) if a.size else 0.0,
                    p_value=p,
                    p_adjusted=p_adj,
                    test=test,
                    significant=bool(a.size and p_adj <= alpha),
                    queries=int(a.size),
                )
            )
    return Comparison(
        qids=qids,
        metrics=metrics,
        runs=values,
        baseline=baseline,
        tests=tests,
        test=test,
        alpha=alpha,
        correction=correction,
        permutations=permutations,
        seed=seed,
        missing=missing,
        inputs={name: runs[name] for name in order},
        qrels=qrels,
    )
