"""`make demo` as shipped: every stage runs through the `rankt5` commands the README shows, the
table it prints is the evaluation of the run files it wrote, and the papers' claims it shows
hold with the margins measured over 3 seeds (bench/RESULTS.md "The demo over seeds")."""

import json
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Measured over seeds 0-2 (bench/RESULTS.md "The demo over seeds"): UR2N's re-rank over its own
# retrieval +0.023 / +0.020 / +0.038, over the better BM25 + RankT5 row +0.030 / +0.034 / +0.022;
# asserted at about half the smallest (the test runs seed 0; XLA's float rounding differs by CPU).
MARGIN_OVER_RETRIEVAL = 0.01
MARGIN_OVER_BM25_RANKT5 = 0.01
COMMANDS = ["retrieve", "train", "rerank", "rerank", "train", "index", "search", "rerank"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """`python -m rankt5_jax.demo` with its defaults (what `make demo` runs), once."""
    out = tmp_path_factory.mktemp("demo") / "demo_output"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    proc = subprocess.run(
        [sys.executable, "-m", "rankt5_jax.demo", "--output_dir", str(out)],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=1200,
    )  # fmt: skip
    assert (out / "demo_metrics.json").is_file(), proc.stderr[-3000:]
    return out, proc, json.loads((out / "demo_metrics.json").read_text())


def test_the_demo_runs_the_readme_commands_and_reports_their_runs(demo):
    from rankt5_jax.data import formats
    from rankt5_jax.evaluation import measures

    out, proc, summary = demo
    rows = summary["rows"]
    assert proc.returncode == (0 if rows["BM25 top 30 + RankT5"]["RR@10"] > rows["BM25"]["RR@10"]
                               else 1), proc.stderr[-3000:]  # fmt: skip
    # The stages, as the commands a user types (printed `$ rankt5 <command> ...`).
    assert re.findall(r"^  \$ rankt5 (\w+)", proc.stdout, re.M) == COMMANDS
    assert list(rows)[:3] == ["BM25", "BM25 top 30 + RankT5", "BM25 top 100 + RankT5"]
    assert any(r.startswith("UR2N retrieval (ivfsq8, ") for r in rows)
    assert list(rows)[-1] == "UR2N top 10 + re-rank (same checkpoint)"
    qrels = formats.read_qrels(str(out / "data" / "dev_qrels.txt"))
    for row, path in summary["runs"].items():
        run = formats.read_run(path)
        assert len(run) == 200
        assert rows[row] == measures.evaluate_run(run, qrels, list(rows[row]))
        printed = re.search(rf"^{re.escape(row)}\s+([\d.]+)", proc.stdout, re.M)
        assert printed and abs(float(printed.group(1)) - rows[row]["RR@10"]) < 5e-5
    assert (
        max(
            map(
                len,
                formats.read_run(
                    summary["runs"]["UR2N top 10 + re-rank (same checkpoint)"]
                ).values(),
            )
        )
        == 10
    )
    # The README's demo paragraph names these commands in this order.
    readme = open(os.path.join(REPO, "README.md")).read()
    paragraph = readme[readme.index("`make demo` runs the whole pipeline") :]
    paragraph = paragraph[: paragraph.index("```")]
    named = re.findall(r"`rankt5\s+(\w+)", paragraph)
    assert [c for c in named if c in COMMANDS] == [
        "retrieve",
        "train",
        "rerank",
        "train",
        "index",
        "search",
        "rerank",
    ]


def test_the_demo_shows_the_papers_claims(demo):
    """Issue 27: RankT5 fine-tuned from the pretrained weights holds its RR@10 from BM25's top
    30 to its top 100 (at least top 30 - 0.05) and stays far above BM25. Issue 23: re-ranking
    the same checkpoint's UR2N retrieval (top 10) beats that retrieval and BM25 + the same
    ranker. Seeds 0-2 (RESULTS.md): top 30 / 100 0.922 / 0.912 on average (the largest drop
    0.014), BM25 0.154; the UR2N margins above."""
    _, proc, summary = demo
    rr = {row: values["RR@10"] for row, values in summary["rows"].items()}
    top30, top100, bm25 = rr["BM25 top 30 + RankT5"], rr["BM25 top 100 + RankT5"], rr["BM25"]
    retrieval = next(v for row, v in rr.items() if row.startswith("UR2N retrieval"))
    reranked = rr["UR2N top 10 + re-rank (same checkpoint)"]
    assert summary["init_checkpoint"].endswith("tiny_pseudo_query")
    assert "$ rankt5 train --gin_file=experiments/smoke_cpu_pretrained.gin " in proc.stdout
    assert top100 >= top30 - 0.05, rr
    assert top100 >= bm25 + 0.6, rr
    assert reranked >= retrieval + MARGIN_OVER_RETRIEVAL, rr
    assert reranked >= max(top30, top100) + MARGIN_OVER_BM25_RANKT5, rr
    assert re.search(r"RankT5 holds its depth .*: yes$", proc.stdout, re.M), proc.stdout[-2000:]
    assert re.search(r"^UR2N: .*: yes$", proc.stdout, re.M), proc.stdout[-2000:]
