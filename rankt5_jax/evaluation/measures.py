"""trec_eval-equal run evaluation: per-query measures over `{qid: {docid: score}}` runs.

Run evaluation (`evaluate_run`) reproduces trec_eval (and so pytrec_eval / ir-measures):
  * ordering: score descending, ties broken by docid descending (trec_eval's rule);
  * graded relevance: nDCG gain = grade (negative grades count 0), ideal ranking from all judged
    documents of the query; binary measures count a document relevant when grade >= `rel`
    (default 1; TREC DL uses `rel=2` for RR, AP, R and P);
  * per query, then the mean over queries that have both results and judgments (`missing="skip"`,
    trec_eval's default), or over every judged query with those the run lacks counted 0
    (`missing="zero"`, trec_eval -c); `query_counts` says which, for every command that prints
    a mean.
Measures are named as ir-measures names them: `RR@10`, `nDCG@5`, `nDCG@10`, `AP`, `R@1000`, `P@10`,
optionally with a relevance level: `RR(rel=2)@10`, `AP(rel=2)`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from rankt5_jax.errors import ConfigError

DEFAULT_MEASURES = ("RR@10", "nDCG@5", "nDCG@10", "AP")

# ----------------------------------------------------------------------------------------------
# Run evaluation (trec_eval semantics)
# ----------------------------------------------------------------------------------------------

_MEASURE = re.compile(r"^(RR|nDCG|AP|R|P)(?:\(rel=(\d+)\))?(?:@(\d+))?$")


@dataclass(frozen=True)
class Measure:
    name: str
    kind: str
    cutoff: int | None
    rel: int

    @classmethod
    def parse(cls, text: str, default_rel: int = 1) -> Measure:
        match = _MEASURE.match(text.strip())
        if not match:
            raise ConfigError(
                f"unknown measure {text!r}; use RR@k, nDCG@k, AP, R@k, P@k "
                "(optionally with (rel=N), e.g. RR(rel=2)@10)"
            )
        kind, rel, cutoff = match.group(1), match.group(2), match.group(3)
        if kind in ("R", "P") and cutoff is None:
            raise ConfigError(f"{text!r} needs a cutoff, e.g. {kind}@10")
        return cls(
            name=text.strip(),
            kind=kind,
            cutoff=int(cutoff) if cutoff else None,
            rel=int(rel) if rel else default_rel,
        )


def rank_documents(doc_scores: Mapping[str, float]) -> list[str]:
    """Docids in trec_eval order: score descending, then docid descending."""
    return sorted(doc_scores, key=lambda d: (-doc_scores[d], _Reverse(d)))


class _Reverse:
    """Sort key inverting string order (docid descending inside an ascending sort)."""

    __slots__ = ("value",)

    def __init__(self, value: str):
        self.value = value

    def __lt__(self, other: _Reverse) -> bool:
        return self.value > other.value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Reverse) and self.value == other.value


def _query_value(measure: Measure, ranking: list[str], judged: Mapping[str, int]) -> float:
    ranked = ranking if measure.cutoff is None else ranking[: measure.cutoff]
    if measure.kind == "nDCG":
        dcg = sum(
            max(judged.get(doc, 0), 0) / math.log2(rank + 2) for rank, doc in enumerate(ranked)
        )
        gains = sorted((max(g, 0) for g in judged.values()), reverse=True)
        if measure.cutoff is not None:
            gains = gains[: measure.cutoff]
        ideal = sum(g / math.log2(rank + 2) for rank, g in enumerate(gains))
        return dcg / ideal if ideal > 0 else 0.0
    relevant = [judged.get(doc, 0) >= measure.rel for doc in ranked]
    num_relevant = sum(1 for g in judged.values() if g >= measure.rel)
    if measure.kind == "RR":
        for rank, is_rel in enumerate(relevant):
            if is_rel:
                return 1.0 / (rank + 1)
        return 0.0
    if measure.kind == "AP":
        if num_relevant == 0:
            return 0.0
        hits, total = 0, 0.0
        for rank, is_rel in enumerate(relevant):
            if is_rel:
                hits += 1
                total += hits / (rank + 1)
        return total / num_relevant
    if measure.kind == "R":
        return sum(relevant) / num_relevant if num_relevant else 0.0
    if measure.kind == "P":
        return sum(relevant) / measure.cutoff
    raise AssertionError(measure.kind)


def evaluate_per_query(
    run: Mapping[str, Mapping[str, float]],
    qrels: Mapping[str, Mapping[str, int]],
    measures: Iterable[str] = DEFAULT_MEASURES,
    rel: int = 1,
) -> dict[str, dict[str, float]]:
    """Per-query values: `{qid: {measure: value}}` for queries with results and judgments."""
    parsed = [Measure.parse(m, default_rel=rel) for m in measures]
    out: dict[str, dict[str, float]] = {}
    for qid, doc_scores in run.items():
        judged = qrels.get(qid)
        if not judged or not doc_scores:
            continue
        ranking = rank_documents(doc_scores)
        out[qid] = {m.name: _query_value(m, ranking, judged) for m in parsed}
    return out


def evaluate_run(
    run: Mapping[str, Mapping[str, float]],
    qrels: Mapping[str, Mapping[str, int]],
    measures: Iterable[str] = DEFAULT_MEASURES,
    rel: int = 1,
    missing: str = "skip",
) -> dict[str, float]:
    """Mean over queries of each measure, as trec_eval reports it.

    Args:
      run: `{qid: {docid: score}}`.
      qrels: `{qid: {docid: grade}}`.
      measures: ir-measures style names.
      rel: default minimum grade for binary measures (overridden by `(rel=N)` in a name).
      missing: `skip` (trec_eval's default): the mean over the queries with both results and
        judgments; `zero` (trec_eval -c): over every judged query, one without results counting 0.
    """
    check_missing(missing)
    measures = list(measures)
    per_query = evaluate_per_query(run, qrels, measures, rel)
    names = [Measure.parse(m, default_rel=rel).name for m in measures]
    count = len(per_query) if missing == "skip" else sum(1 for judged in qrels.values() if judged)
    if not count:
        return {name: 0.0 for name in names}
    return {name: sum(v[name] for v in per_query.values()) / count for name in names}


# ----------------------------------------------------------------------------------------------
# Which queries a mean is over (one convention for evaluate, rerank --qrels, compare and sweep)
# ----------------------------------------------------------------------------------------------

MISSING = ("skip", "zero")
# What `--missing` means, word for word in every command's help and in docs/cli.md.
MISSING_HELP = (
    "judged queries the run does not rank: 'skip' leaves them out of the mean (trec_eval's "
    "default), 'zero' counts them 0 (trec_eval -c)"
)


def check_missing(missing: str) -> str:
    if missing not in MISSING:
        raise ConfigError(f"--missing {missing!r}: use one of {', '.join(MISSING)}")
    return missing


@dataclass(frozen=True)
class QueryCounts:
    """Over how many queries a mean is taken, and which queries a run lacks or adds.

    judged: queries the qrels judge (at least one judgment, any grade); ranked: queries the run
    ranks (at least one document); evaluated: the queries the mean is over (`skip`: judged and
    ranked; `zero`: every judged query); missing: judged queries the run does not rank;
    unjudged: ranked queries the qrels do not judge (always left out, as trec_eval).
    """

    judged: int
    ranked: int
    evaluated: int
    missing: int
    unjudged: int
    mode: str

    @property
    def missing_fraction(self) -> float:
        return self.missing / self.judged if self.judged else 0.0

    def describe(self, run: str = "the run") -> str:
        """One line: `mean over 30 queries (--missing skip); the run lacks 270 of the 300
        judged queries (left out); 2 ranked queries are not judged (left out)`."""
        how = "left out" if self.mode == "skip" else "counted 0"
        text = (
            f"mean over {self.evaluated} quer{'y' if self.evaluated == 1 else 'ies'} "
            f"(--missing {self.mode}); {run} lacks {self.missing} of the {self.judged} judged "
            f"queries ({how})"
        )
        if self.unjudged:
            text += f"; {self.unjudged} ranked quer{'y is' if self.unjudged == 1 else 'ies are'}"
            text += " not judged (left out)"
        return text

    def to_json(self) -> dict:
        return {
            "evaluated": self.evaluated,
            "judged": self.judged,
            "missing": self.missing,
            "unjudged": self.unjudged,
            "missing_mode": self.mode,
        }


def query_counts(
    run: Mapping[str, Mapping[str, float]],
    qrels: Mapping[str, Mapping[str, int]],
    missing: str = "skip",
) -> QueryCounts:
    """The `QueryCounts` of `evaluate_run(run, qrels, missing=missing)`."""
    check_missing(missing)
    judged = {q for q, docs in qrels.items() if docs}
    ranked = {q for q, docs in run.items() if docs}
    both = len(judged & ranked)
    return QueryCounts(
        judged=len(judged),
        ranked=len(ranked),
        evaluated=both if missing == "skip" else len(judged),
        missing=len(judged - ranked),
        unjudged=len(ranked - judged),
        mode=missing,
    )
