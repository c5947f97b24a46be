"""`make demo` at a tiny size: every stage runs through the `rankt5` commands the README shows,
and the table it prints is the evaluation of the run files it wrote."""

import json
import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = ["retrieve", "train", "rerank", "rerank", "train", "index", "search", "rerank"]


def test_the_demo_runs_the_readme_commands_and_reports_their_runs(tmp_path):
    from rankt5_jax.data import formats
    from rankt5_jax.evaluation import measures

    out = tmp_path / "demo"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    flags = ["--num_queries", "60", "--dev_queries", "12", "--train_steps", "40"]
    proc = subprocess.run(
        [sys.executable, "-m", "rankt5_jax.demo", "--output_dir", str(out), *flags,
         "--xtr_steps", "20"],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=900,
    )  # fmt: skip
    summary = json.loads((out / "demo_metrics.json").read_text())
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
        assert len(run) == 12
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
