"""Dev evaluation during training: re-rank the dev candidates with the current params."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from rankt5_jax.data import formats, paths
from rankt5_jax.data.vocab import Vocabulary
from rankt5_jax.evaluation import measures as measures_lib
from rankt5_jax.inference.ranker import Ranker
from rankt5_jax.modeling import registry
from rankt5_jax.training import setup


def evaluate_lists(
    ranker: Ranker,
    lists,
    qrels: Mapping[str, Mapping[str, int]] | None,
    measures=measures_lib.DEFAULT_MEASURES,
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Scores per-query candidate lists and evaluates the run over the whole set (per query,
    then mean). `lists` yields (qid, docids, tokens [n, T], grades [n]); without `qrels` the
    grades of the candidates are the judgments."""
    run: dict[str, dict[str, float]] = {}
    derived: dict[str, dict[str, int]] = {}
    pending: list[tuple[str, list[str], list[np.ndarray]]] = []

    def flush():
        # Whole lists per call: pairwise models batch their pairs across the lists, list-aware
        # (FiT5) models score each list together.
        scores = ranker.score_token_lists([rows for _, _, rows in pending])
        for (qid, docids, _), values in zip(pending, scores):
            run[qid].update(zip(docids, map(float, values)))
        pending.clear()

    for qid, docids, tokens, grades in lists:
        derived[qid] = {d: int(g) for d, g in zip(docids, grades) if g != 0}
        run.setdefault(qid, {})
        rows = [row[: int(np.count_nonzero(row))] for row in tokens]
        pending.append((qid, list(docids), rows))
        if sum(len(item[1]) for item in pending) >= 8 * ranker.batch_size:
            flush()
    if pending:
        flush()
    result = measures_lib.evaluate_run(run, qrels if qrels is not None else derived, measures)
    return result, run


class DevEvaluator:
    """Dev re-ranking during training: the scorer (compiled once) and the qrels (read once) are
    kept across evaluations; each call scores the current params and writes the TREC run."""

    def __init__(
        self,
        model,
        partitioner,
        model_dir,
        eval_task,
        eval_split,
        feature_lengths,
        batch_size,
        qrels_path,
        measures,
        vocab_path,
    ):
        scorer_model = registry.build_model(
            dict(model.spec(), t5=model.config.replace(dropout_rate=0.0))
        )
        self.ranker = None
        self._make_ranker = lambda params: Ranker(
            scorer_model,
            params,
            Vocabulary(vocab_path),
            max_length=int(feature_lengths["inputs"]),
            batch_size=batch_size,
            partitioner=partitioner,
        )
        self.qrels = formats.read_qrels(qrels_path) if qrels_path else None
        self.task, self.split, self.lengths = eval_task, eval_split, feature_lengths
        self.measures = measures
        self.runs_dir = paths.join(model_dir, "eval_runs")

    def __call__(self, params, step: int) -> dict[str, float]:
        if self.ranker is None:
            self.ranker = self._make_ranker(params)
        else:
            self.ranker.set_params(params)
        lists = setup.eval_lists(self.task, self.lengths, self.split)
        result, run = evaluate_lists(self.ranker, lists, self.qrels, self.measures)
        paths.makedirs(self.runs_dir)
        formats.write_trec_run(
            paths.join(self.runs_dir, f"step_{step}.run"), run, tag=f"rankt5_step{step}"
        )
        return result
