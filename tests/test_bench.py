"""The benchmarks run (tiny sizes; speed is never asserted in tests)."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_score_bench_runs(tmp_path):
    out = tmp_path / "score.json"
    proc = subprocess.run(
        [
            sys.executable,
            "bench/score_bench.py",
            "--sizes",
            "tiny",
            "--docs",
            "12",
            "--repeats",
            "1",
            "--batch_size",
            "4",
            "--output",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert len(result["rows"]) == 5 and result["matmul_peak_gflops"] > 0
    for row in result["rows"]:
        assert row["max_abs_score_diff"] < 1e-3
        assert row["ours_docs_per_s"] > 0 and row["hf_peer_docs_per_s"] > 0


def test_train_bench_runs(tmp_path):
    out = tmp_path / "train.json"
    proc = subprocess.run(
        [
            sys.executable,
            "bench/train_bench.py",
            "--size",
            "tiny",
            "--lists",
            "2",
            "--list_size",
            "4",
            "--length",
            "16",
            "--steps",
            "1",
            "--check_steps",
            "2",
            "--output",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert abs(result["first_loss_ours"] - result["first_loss_torch"]) < 1e-3
    check = result["check"]["summary"]["float32"]
    assert check["all_finite"] and check["param_dtypes"] == ["float32"]
    assert check["loss_dtype"] == "float32"


def test_prepare_bench_runs(tmp_path):
    out = tmp_path / "prepare.json"
    proc = subprocess.run(
        [
            sys.executable,
            "bench/prepare_bench.py",
            "--passages",
            "2000",
            "--queries",
            "50",
            "--candidates",
            "20",
            "--work_dir",
            str(tmp_path / "work"),
            "--output",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["prepare_peak_rss_mb"] > 0 and "wrote 50 queries" in result["summary"]
