"""Plots of comparisons and score distributions (matplotlib, the `plots` extra; Agg backend).

Each function returns the data it drew (so tests check the figure's content, not only its file)
and writes a PNG:

  * `plot_differences`: per-query differences (run - baseline) of each compared run on each
    metric, sorted, as bars (the view behind a significance mark: how many queries gained, lost).
  * `plot_score_distributions`: the distribution of a run's scores per relevance grade (FiT5's
    Figure 3 view), with unjudged documents as their own group.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from rankt5_jax.errors import ConfigError


def _pyplot():
    try:
        import matplotlib
    except ImportError as err:
        raise ConfigError(
            "plots need matplotlib: pip install 'rankt5_jax[plots]' (or matplotlib)"
        ) from err
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str) -> None:
    import os

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    try:
        fig.savefig(path, format="png", dpi=110, bbox_inches="tight")
    except OSError as err:
        raise ConfigError(f"cannot write the plot {path}: {err.strerror}") from err


def plot_differences(comparison, path: str) -> dict[tuple[str, str], dict]:
    """Bars of per-query differences (run - baseline), sorted descending, one panel per compared
    run (rows) and metric (columns). Returns `{(run, metric): {"qids": [...], "differences":
    array}}` in the drawn order; each panel's title carries the mean difference and p-value."""
    plt = _pyplot()
    others = [name for name in comparison.runs if name != comparison.baseline]
    base = comparison.runs[comparison.baseline]
    drawn: dict[tuple[str, str], dict] = {}
    rows, cols = max(len(others), 1), len(comparison.metrics)
    fig, axes = plt.subplots(
        rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False, sharey="col"
    )
    for r, name in enumerate(others):
        for c, metric in enumerate(comparison.metrics):
            diff = comparison.runs[name].values[metric] - base.values[metric]
            kept = np.flatnonzero(~np.isnan(diff))  # --missing skip: queries both runs rank
            order = kept[np.argsort(-diff[kept], kind="stable")]
            diff = diff[order]
            drawn[(name, metric)] = {
                "qids": [comparison.qids[i] for i in order],
                "differences": diff,
            }
            ax = axes[r][c]
            colors = np.where(diff > 0, "#2a7ab9", np.where(diff < 0, "#d1493f", "#999999"))
            ax.bar(np.arange(diff.size), diff, width=1.0, color=colors, linewidth=0)
            ax.axhline(0.0, color="black", linewidth=0.6)
            t = comparison.result(name, metric)
            mark = ", significant" if t.significant else ""
            ax.set_title(
                f"{name} - {comparison.baseline}: {metric}\n"
                f"mean {t.difference:+.4f}, p {t.p_value:.3g}{mark} "
                f"(+{int((diff > 0).sum())} / -{int((diff < 0).sum())} / ={int((diff == 0).sum())})",
                fontsize=8,
            )
            ax.set_xlabel("queries, sorted", fontsize=8)
            ax.set_xlim(-0.5, max(diff.size, 1) - 0.5)
            ax.tick_params(labelsize=7)
            if c == 0:
                ax.set_ylabel("difference", fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return drawn


def score_distributions(
    run: Mapping[str, Mapping[str, float]],
    qrels: Mapping[str, Mapping[str, int]],
) -> dict[str, np.ndarray]:
    """Scores of the run's documents grouped by grade: `{"0": ..., "1": ..., "unjudged": ...}`
    (grades as strings, ascending; only queries the qrels judge)."""
    groups: dict[str, list[float]] = {}
    for qid, docs in run.items():
        judged = qrels.get(qid)
        if not judged:
            continue
        for docid, score in docs.items():
            grade = judged.get(docid)
            groups.setdefault("unjudged" if grade is None else str(grade), []).append(score)
    keys = sorted((k for k in groups if k != "unjudged"), key=int)
    if "unjudged" in groups:
        keys.append("unjudged")
    return {k: np.asarray(groups[k], np.float64) for k in keys}


def plot_score_distributions(
    run: Mapping[str, Mapping[str, float]],
    qrels: Mapping[str, Mapping[str, int]],
    path: str,
    bins: int = 40,
    title: str = "",
) -> dict[str, dict]:
    """Histograms (density, shared bins) of the run's scores per relevance grade. Returns
    `{group: {"scores": array, "counts": density per bin, "edges": bin edges}}` as drawn."""
    plt = _pyplot()
    groups = score_distributions(run, qrels)
    if not groups:
        raise ConfigError("the run shares no query with the qrels: no scores to plot")
    every = np.concatenate(list(groups.values()))
    low, high = float(every.min()), float(every.max())
    if high <= low:
        low, high = low - 0.5, high + 0.5
    edges = np.linspace(low, high, bins + 1)
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    cmap = plt.get_cmap("viridis")
    graded = [k for k in groups if k != "unjudged"]
    drawn: dict[str, dict] = {}
    for i, (key, scores) in enumerate(groups.items()):
        counts, _ = np.histogram(scores, bins=edges, density=True)
        if key == "unjudged":
            color, label = "#999999", f"unjudged (n={scores.size})"
        else:
            color = cmap(0.15 + 0.7 * i / max(len(graded) - 1, 1))
            label = f"grade {key} (n={scores.size}, median {np.median(scores):.3g})"
        ax.stairs(counts, edges, label=label, color=color, linewidth=1.6)
        drawn[key] = {"scores": scores, "counts": counts, "edges": edges}
    ax.set_xlabel("score")
    ax.set_ylabel("density")
    ax.set_title(title or "score distribution per relevance grade", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return drawn
