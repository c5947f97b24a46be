"""Zero-shot sweeps (`rankt5 sweep`): first stage, re-rank, evaluate over BEIR-layout folders,
one table across the datasets with their average (RankT5's Table 2).

Each dataset folder holds `corpus.jsonl`, `queries.jsonl` and `qrels/<split>.tsv` (BEIR's
layout; TREC qrels also read). Per dataset, in `OUT/<folder name>/`:

  sweep.json        the settings (checkpoint, first stage, split, top-k, re-rank options); a
                    later call with other settings for the same folder is refused
  queries.jsonl     the split's judged queries (the first stage and the re-ranker see only them)
  first_stage.run   BM25's top-k (`retrieval.bm25.retrieve_files`) or the given run, cut to
                    those queries
  reranked.run      `inference.rerank.rerank_files` over the first stage's top-k (the checkpoint
                    is loaded once for every dataset; finished chunks are journaled in
                    `reranked.run.journal`, so a sweep stopped inside a dataset continues it)
  done.json         written last: a dataset with it is skipped by the next call (resume)
  metrics.json      both runs' means over every judged query (a judged query without candidates
                    counts 0, trec_eval -c; `missing="skip"`: left out) and the paired t-test of
                    re-ranked against first stage

The table (`OUT/table.md`, `OUT/table.tex`, `OUT/results.json`, each written atomically) is
rebuilt from the runs on disk at every call: it covers every finished dataset of the call,
skipped or not, and the datasets earlier calls finished in OUT with the same settings
(checkpoint, split, top-k, re-rank options, kind of first stage), evaluated again from their
runs and qrels; the average is over every dataset of the table, which the table names.

Dataset folders, the first stage's runs, the checkpoint and OUT may be in a bucket (`gs://`,
through `data.paths`); a re-ranking journal of a bucket OUT is kept on this host
(`inference.journal.local_folder`).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from rankt5_jax.data import atomic, formats
from rankt5_jax.data import paths as storage
from rankt5_jax.errors import ConfigError
from rankt5_jax.evaluation import compare

DEFAULT_METRICS = ("nDCG@10",)
FIRST_STAGE = "first_stage.run"
RERANKED = "reranked.run"
DONE = "done.json"


@dataclass
class DatasetResult:
    name: str
    queries: int  # judged queries of the split
    means: dict[str, dict[str, float]]  # "first_stage" / "reranked" -> metric -> mean
    missing: dict[str, int]  # run -> judged queries without candidates (0 or left out)
    tests: list[dict]  # re-ranked against first stage, per metric
    skipped: bool  # finished by an earlier call
    evaluated: dict[str, int] = field(default_factory=dict)  # run -> queries its mean is over
    earlier: bool = False  # not named by this call: a dataset an earlier call finished in OUT


@dataclass
class SweepResult:
    metrics: list[str]
    first_stage: str
    datasets: list[DatasetResult] = field(default_factory=list)
    missing: str = "zero"  # judged queries a run lacks: counted 0 (zero) or left out (skip)

    def average(self) -> dict[str, dict[str, float]]:
        return {
            run: {
                m: sum(d.means[run][m] for d in self.datasets) / len(self.datasets)
                for m in self.metrics
            }
            for run in ("first_stage", "reranked")
        }

    def _marker(self, result: DatasetResult, metric: str) -> str:
        test = next(t for t in result.tests if t["metric"] == metric)
        if not test["significant"]:
            return ""
        return "†" if test["mean_run"] > test["mean_baseline"] else "‡"

    def _columns(self) -> list[str]:
        label = "BM25" if self.first_stage == "bm25" else "first stage"
        return [f"{m} {run}" for m in self.metrics for run in (label, "re-ranked")]

    def markdown(self) -> str:
        lines = ["| dataset | queries | " + " | ".join(self._columns()) + " |"]
        lines.append("|---|---:|" + "---:|" * len(self._columns()))
        for d in self.datasets:
            cells = []
            for m in self.metrics:
                cells.append(f"{d.means['first_stage'][m]:.4f}")
                cells.append(f"{d.means['reranked'][m]:.4f}{self._marker(d, m)}")
            lines.append(f"| {d.name} | {d.queries} | " + " | ".join(cells) + " |")
        average = self.average()
        cells = [f"{average[run][m]:.4f}" for m in self.metrics for run in average]
        lines.append("| Average | | " + " | ".join(cells) + " |")
        lines += ["", self.average_note() + ".", "", self.legend() + "."]
        return "\n".join(lines) + "\n"

    def average_note(self) -> str:
        """Which datasets the average is over (and which an earlier call finished)."""
        names = [d.name for d in self.datasets]
        count = f"{len(names)} datasets" if len(names) != 1 else "1 dataset"
        note = f"Average over the {count} of the table: {', '.join(names)}"
        earlier = [d.name for d in self.datasets if d.earlier]
        if earlier:
            note += f" ({', '.join(earlier)} finished by an earlier call into this folder)"
        return note

    def legend(self, better: str = "†", worse: str = "‡", at_most: str = "≤") -> str:
        return (
            f"re-ranked significantly better ({better}) or worse ({worse}) than the first stage "
            f"on that dataset at p {at_most} 0.05 (two-sided paired t-test, uncorrected); "
            + (
                "means over every judged query of the split, judged queries without candidates "
                "count 0 (--missing zero)"
                if self.missing == "zero"
                else "each mean over the judged queries its run ranks, tests over those both "
                "rank (--missing skip)"
            )
        )

    def latex(self) -> str:
        markers = {"†": r"$^\dagger$", "‡": r"$^\ddagger$"}
        columns = [compare.tex_escape(c) for c in self._columns()]
        lines = [
            r"\begin{tabular}{l" + "r" * len(columns) + "}",
            r"\toprule",
            "Dataset & " + " & ".join(columns) + r" \\",
            r"\midrule",
        ]
        for d in self.datasets:
            cells = []
            for m in self.metrics:
                cells.append(f"{d.means['first_stage'][m]:.4f}")
                marker = markers.get(self._marker(d, m), "")
                cells.append(f"{d.means['reranked'][m]:.4f}{marker}")
            lines.append(compare.tex_escape(d.name) + " & " + " & ".join(cells) + r" \\")
        average = self.average()
        cells = [f"{average[run][m]:.4f}" for m in self.metrics for run in average]
        lines += [r"\midrule", "Average & " + " & ".join(cells) + r" \\"]
        lines += [r"\bottomrule", r"\end{tabular}"]
        lines.append("% " + self.average_note())
        lines.append("% " + self.legend(better="dagger", worse="double dagger", at_most="<="))
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict:
        return {
            "metrics": self.metrics,
            "first_stage": self.first_stage,
            "datasets": {
                d.name: {
                    "queries": d.queries,
                    "first_stage": d.means["first_stage"],
                    "reranked": d.means["reranked"],
                    "missing": d.missing,
                    "evaluated": d.evaluated,
                    "tests": d.tests,
                    "skipped": d.skipped,
                    "earlier": d.earlier,
                }
                for d in self.datasets
            },
            "missing_mode": self.missing,
            "average": self.average(),
            "average_over": [d.name for d in self.datasets],
        }


def _dataset_files(folder: str, split: str) -> dict[str, str]:
    relative = {
        "corpus": "corpus.jsonl",
        "queries": "queries.jsonl",
        "qrels": f"qrels/{split}.tsv",
    }
    files = {key: storage.join(folder, *rel.split("/")) for key, rel in relative.items()}
    if not storage.isdir(folder):
        raise ConfigError(f"dataset folder {folder} does not exist")
    missing = [relative[key] for key, path in files.items() if not storage.isfile(path)]
    if missing:
        raise ConfigError(
            f"{folder} is not a BEIR-layout folder for split {split!r}: missing "
            f"{', '.join(missing)}"
        )
    return files


def _first_stage_path(spec: str, folder: str, name: str) -> str:
    """A run file for this dataset: `spec` with `{dataset}` replaced, inside the folder if there
    is such a file there, else as given."""
    path = spec.replace("{dataset}", name)
    inside = storage.join(folder, path)
    given = storage.is_remote(path) or os.path.isabs(path)
    if not given and storage.isfile(inside):
        return storage.abspath(inside)
    if storage.isfile(path):
        return storage.abspath(path)
    raise ConfigError(
        f"--first_stage {spec}: no run file {inside}"
        + (f" or {path}" if storage.abspath(path) != storage.abspath(inside) else "")
        + " (give 'bm25', a run file inside each dataset folder, or a path with {dataset})"
    )


def _write_json(path: str, value) -> None:
    atomic.write_json(path, value, indent=1, sort_keys=True, end="\n")


def _check_settings(out: str, settings: dict) -> None:
    path = storage.join(out, "sweep.json")
    if storage.isfile(path):
        with storage.open(path) as handle:
            old = json.load(handle)
        changed = [
            f"{key}: {old.get(key)!r} -> {settings.get(key)!r}"
            for key in sorted(set(old) | set(settings))
            if old.get(key) != settings.get(key)
        ]
        if changed:
            raise ConfigError(
                f"{out} holds a sweep with other settings ({'; '.join(changed)}); give another "
                "--output_dir or remove that folder"
            )
    else:
        _write_json(path, settings)


def _log(message: str) -> None:
    print(f"rankt5 sweep: {message}", file=sys.stderr, flush=True)


def _evaluate(
    name: str, out: str, qrels: Mapping, metrics: Sequence[str], skipped: bool, missing: str
) -> DatasetResult:
    runs = {
        "first_stage": formats.read_run(storage.join(out, FIRST_STAGE)),
        "reranked": formats.read_run(storage.join(out, RERANKED)),
    }
    comparison = compare.compare_runs(
        runs, qrels, baseline="first_stage", metrics=metrics, correction="none", missing=missing
    )
    judged = len(comparison.qids)
    result = DatasetResult(
        name=name,
        queries=len(comparison.qids),
        means={run: values.means for run, values in comparison.runs.items()},
        missing={run: values.missing for run, values in comparison.runs.items()},
        tests=[t.to_json() for t in comparison.tests],
        skipped=skipped,
        evaluated={
            run: judged - values.missing if missing == "skip" else judged
            for run, values in comparison.runs.items()
        },
    )
    how = "counted 0" if missing == "zero" else "left out"
    _log(
        f"{name}: means over {result.evaluated['first_stage']} (first stage) and "
        f"{result.evaluated['reranked']} (re-ranked) of {judged} judged queries "
        f"(--missing {missing}); the runs lack {result.missing['first_stage']} and "
        f"{result.missing['reranked']} ({how})"
    )
    _write_json(
        storage.join(out, "metrics.json"),
        {
            "dataset": name,
            "queries": result.queries,
            "means": result.means,
            "missing": result.missing,
            "evaluated": result.evaluated,
            "missing_mode": missing,
            "tests": result.tests,
        },
    )
    return result


def _rerank(checkpoint, ranker, out: str, corpus: str, top_k, progress, rerank_options):
    """Re-ranks one dataset's first stage into `reranked.run` (journaled in
    `reranked.run.journal`: a sweep stopped inside a dataset continues it). The checkpoint is
    loaded (and compiled) once, by the first dataset that needs it; -> the `Ranker`."""
    from rankt5_jax.inference import rerank

    load, _, options = rerank.split_options(
        top_k=top_k, progress=progress, **{k: v for k, v in rerank_options.items() if v is not None}
    )
    from rankt5_jax.inference import journal

    reranked_path = storage.join(out, RERANKED)
    journal_dir = journal.local_folder(f"{reranked_path}.journal")
    if storage.isfile(reranked_path) and not os.path.isdir(journal_dir):
        # Written (atomically) by a call stopped before done.json: evaluated, not re-ranked.
        _log(f"{storage.basename(out)}: {reranked_path} was written earlier")
        return ranker
    ranker = ranker if ranker is not None else load.load(checkpoint)
    rerank.rerank_files(
        checkpoint,
        storage.join(out, "queries.jsonl"),
        corpus,
        storage.join(out, FIRST_STAGE),
        reranked_path,
        ranker=ranker,
        options=options,
    )
    return ranker


def _first_stage(name, paths, out: str, qrels, run_path, top_k: int, progress: bool) -> None:
    """Writes the dataset's judged queries (`queries.jsonl`) and its first stage (BM25's top k,
    or the given run `run_path` cut to those queries), unless an earlier call wrote them."""
    queries_path = storage.join(out, "queries.jsonl")
    if not storage.isfile(queries_path):
        queries = formats.read_queries(paths["queries"])
        unknown = [q for q in qrels if q not in queries]
        if unknown:
            _log(
                f"warning: {name}: {len(unknown)} judged queries are not in "
                f"{paths['queries']} (they count 0), e.g. {unknown[0]!r}"
            )
        with atomic.atomic_open(queries_path, "w") as handle:
            for qid in qrels:
                if qid in queries:
                    handle.write(json.dumps({"_id": qid, "text": queries[qid]}) + "\n")
    first_stage_path = storage.join(out, FIRST_STAGE)
    if not storage.isfile(first_stage_path):
        if run_path is None:
            from rankt5_jax.retrieval import bm25

            bm25.retrieve_files(
                paths["corpus"], queries_path, first_stage_path, top_k=top_k, verbose=progress
            )
        else:
            given = formats.read_run(run_path)
            kept = formats.read_queries(queries_path)
            cut = {q: docs for q, docs in given.items() if q in kept}
            if not cut:
                raise ConfigError(f"{run_path} ranks no query of {name}'s judged queries")
            formats.write_trec_run(first_stage_path, cut, tag="first_stage")


def sweep(
    checkpoint: str,
    datasets: Sequence[str],
    output_dir: str,
    first_stage: str = "bm25",
    split: str = "test",
    top_k: int = 1000,
    metrics: Sequence[str] = DEFAULT_METRICS,
    rerank_options: Mapping | None = None,
    progress: bool = True,
    missing: str = "zero",
) -> SweepResult:
    """Runs (or resumes) the sweep and writes its table; returns the results.

    Args:
      checkpoint: any checkpoint `Ranker.load` reads.
      datasets: BEIR-layout folders; named by their folder names (which must differ).
      first_stage: `bm25`, or a run file: inside each folder, or a path with `{dataset}`
        (a path shared by several datasets is refused: query ids repeat across BEIR sets).
      top_k: documents retrieved by BM25 and re-ranked per query.
      missing: judged queries a run lacks count 0 (`zero`, trec_eval -c, as `rankt5 compare`)
        or are left out of its mean and of the tests (`skip`).
      rerank_options: more `rerank_files` keywords (batch_size, max_length, vocab, dtype,
        chunk_pairs, ...).
    """
    from rankt5_jax.evaluation import measures

    metrics = [measures.Measure.parse(m).name for m in metrics]
    if not metrics:
        raise ConfigError("no metrics given")
    if top_k < 1:
        raise ConfigError(f"--top_k must be at least 1, got {top_k}")
    measures.check_missing(missing)
    if not datasets:
        raise ConfigError("no datasets given")
    rerank_options = dict(rerank_options or {})
    names = [
        storage.basename(folder)
        if storage.is_remote(folder)
        else os.path.basename(os.path.normpath(folder))
        for folder in datasets
    ]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"dataset folders share a name ({', '.join(repeated)}): rename one")
    files = {name: _dataset_files(folder, split) for name, folder in zip(names, datasets)}
    runs = {}
    if first_stage != "bm25":
        runs = {
            name: _first_stage_path(first_stage, folder, name)
            for name, folder in zip(names, datasets)
        }
        shared = sorted({p for p in runs.values() if list(runs.values()).count(p) > 1})
        if shared:
            raise ConfigError(
                f"--first_stage {first_stage} is the same file ({shared[0]}) for several "
                "datasets; give one run per dataset (inside each folder, or with {dataset})"
            )
    storage.makedirs(output_dir)
    formats.check_output_path(storage.join(output_dir, "table.md"))
    checkpoint_id = storage.abspath(checkpoint) if storage.exists(checkpoint) else checkpoint
    result = SweepResult(metrics=metrics, first_stage=first_stage, missing=missing)
    ranker = None
    for number, (name, folder) in enumerate(zip(names, datasets), start=1):
        paths = files[name]
        out = storage.join(output_dir, name)
        storage.makedirs(out)
        _check_settings(
            out,
            {
                "checkpoint": checkpoint_id,
                "dataset": storage.abspath(folder),
                "split": split,
                "first_stage": runs.get(name, "bm25"),
                "top_k": top_k,
                "rerank": {k: v for k, v in sorted(rerank_options.items()) if v is not None},
            },
        )
        qrels = formats.read_qrels(paths["qrels"])
        if storage.isfile(storage.join(out, DONE)):
            _log(f"{name}: finished earlier ({storage.join(out, DONE)}), skipped")
            result.datasets.append(_evaluate(name, out, qrels, metrics, True, missing))
            continue
        _log(f"{name} (dataset {number} of {len(names)}): {len(qrels)} judged queries ({split})")
        _first_stage(name, paths, out, qrels, runs.get(name), top_k, progress)
        ranker = _rerank(checkpoint, ranker, out, paths["corpus"], top_k, progress, rerank_options)
        dataset = _evaluate(name, out, qrels, metrics, False, missing)
        _write_json(storage.join(out, DONE), {"dataset": name, "means": dataset.means})
        result.datasets.append(dataset)
    shared = {
        "checkpoint": checkpoint_id,
        "split": split,
        "top_k": top_k,
        "rerank": {k: v for k, v in sorted(rerank_options.items()) if v is not None},
        "first_stage": "bm25" if first_stage == "bm25" else "a run file",
    }
    result.datasets += _earlier_datasets(output_dir, set(names), shared, metrics, missing)
    if any(d.earlier for d in result.datasets):
        _log(result.average_note())
    for name, text in (("table.md", result.markdown()), ("table.tex", result.latex())):
        with atomic.atomic_open(storage.join(output_dir, name), "w") as handle:
            handle.write(text)
    _write_json(storage.join(output_dir, "results.json"), result.to_json())
    return result


def _earlier_datasets(
    output_dir: str, named: set[str], shared: dict, metrics: Sequence[str], missing: str
) -> list[DatasetResult]:
    """The datasets an earlier call finished in `output_dir` that this call does not name, with
    the settings `shared` (checkpoint, split, top-k, re-rank options, kind of first stage),
    evaluated again from their runs on disk (these metrics, this `missing`); in the order of
    the earlier table (`results.json`), then by name. One with other settings, or whose qrels
    are gone, is left out, saying why."""
    order: list[str] = []
    previous = storage.join(output_dir, "results.json")
    if storage.isfile(previous):
        try:
            with storage.open(previous) as handle:
                order = list(json.load(handle).get("datasets", {}))
        except (OSError, ValueError, AttributeError):
            order = []
    candidates = [
        name
        for name in sorted(storage.listdir(output_dir))
        if name not in named
        and storage.isfile(storage.join(output_dir, name, DONE))
        and storage.isfile(storage.join(output_dir, name, "sweep.json"))
    ]
    candidates.sort(key=lambda n: (order.index(n) if n in order else len(order), n))
    found = []
    for name in candidates:
        out = storage.join(output_dir, name)
        with storage.open(storage.join(out, "sweep.json")) as handle:
            settings = json.load(handle)
        kind = "bm25" if settings.get("first_stage") == "bm25" else "a run file"
        theirs = {**{key: settings.get(key) for key in shared}, "first_stage": kind}
        changed = [
            f"{key}: {theirs[key]!r} -> {shared[key]!r}"
            for key in sorted(shared)
            if theirs[key] != shared[key]
        ]
        if changed:
            _log(
                f"{name}: finished earlier in {output_dir} with other settings "
                f"({'; '.join(changed)}): left out of the table"
            )
            continue
        qrels_path = storage.join(str(settings.get("dataset")), "qrels", f"{shared['split']}.tsv")
        if not storage.isfile(qrels_path):
            _log(f"{name}: finished earlier, but {qrels_path} is gone: left out of the table")
            continue
        _log(f"{name}: finished by an earlier call into {output_dir}, kept in the table")
        qrels = formats.read_qrels(qrels_path)
        dataset = _evaluate(name, out, qrels, metrics, True, missing)
        dataset.earlier = True
        found.append(dataset)
    return found
