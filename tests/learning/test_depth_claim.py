"""RankT5 at re-ranking depth (issue 27, claim c), on the *depth* collection: a RankT5-EncDec
trained with the paper's sampling (the negatives of each list drawn from the first stage's top
1,000) never falls below the first stage when it re-ranks the top 30, 100 or 1,000, while the
same model trained on lists from the top 30 only (lexical matches) collapses at the top 1,000.

Both train 1,500 steps on the same positives from the same initialisation, on 3,000 training
queries (each met about 4 times) with a vocabulary in which every generated word is one piece;
with 360 training queries and 200 steps, or with topic words split into syllables, the paper's
side did not hold (docs/learning.md has what was measured).

Margins: measured by bench/learning_bench.py over 3 seeds (bench/RESULTS.md, "learning";
bench/learning_depth.json); each assertion below holds on every seed with room to spare. Seed 1
is tested (the margins are smallest on seed 0: 0.055 above the first stage at the top 1,000)."""

import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)  # `bench.learning_bench`: the comparisons the benchmark measures

from bench import learning_bench as lb  # noqa: E402

DEPTHS = (30, 100, 1000)


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    data = lb.Data("depth", 1, str(tmp_path_factory.mktemp("depth")))
    return lb.claim_depth(data, 1, depths=DEPTHS, negatives=(1000, 30))


def _rr(result, name, depth):
    return result[name][depth]["RR@10"]


def test_paper_sampling_never_falls_below_the_first_stage(result):
    """RankT5's recipe: negatives drawn from the top 1,000 teach the ranker passages sharing one
    or no query word, so it stays above the first stage at every depth it re-ranks."""
    first_stage = result["first_stage"][30]["RR@10"]  # the same at any depth (RR@10 of its top 10)
    # 3 seeds: first stage 0.126 (0.116-0.135); top 30 / 100 / 1,000: 0.610 (0.506-0.723) /
    # 0.319 (0.239-0.444) / 0.238 (0.190-0.329): at least 0.055 above the first stage everywhere.
    for depth in DEPTHS:
        assert _rr(result, "rankt5_top1000", depth) >= first_stage + 0.04, (depth, result)


def test_ranker_trained_on_the_top_30_collapses_at_depth(result):
    """The failure RankT5's recipe avoids: trained on the top 30 only, the ranker orders the top 30
    best of all but, given the top 1,000, ranks passages it never met above the relevant one."""
    first_stage = result["first_stage"][30]["RR@10"]
    # 3 seeds: top 30 0.706 (0.676-0.737), 0.55 to 0.62 above the first stage; top 1,000 0.003
    # (0.0-0.006), 0.11 to 0.13 below it and 0.19 to 0.32 below the paper's sampling there.
    assert _rr(result, "rankt5_top30", 30) >= first_stage + 0.4, result
    assert _rr(result, "rankt5_top30", 1000) <= first_stage - 0.08, result
    paper = _rr(result, "rankt5_top1000", 1000)
    assert paper >= _rr(result, "rankt5_top30", 1000) + 0.15, result
