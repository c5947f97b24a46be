"""The benchmarks run (tiny sizes; speed is never asserted in tests)."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_bench(script, args, out):
    """Runs `bench/<script>` with `args` and `--output out`; -> the JSON it wrote."""
    proc = subprocess.run(
        [sys.executable, f"bench/{script}", *args, "--output", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_score_bench_runs(tmp_path):
    args = ["--sizes", "tiny", "--docs", "12", "--repeats", "1", "--batch_size", "4"]
    args += ["--batch_tokens", "256"]
    result = _run_bench("score_bench.py", args, tmp_path / "score.json")
    assert len(result["rows"]) == 5 and result["matmul_peak_gflops"] > 0
    assert result["batch_tokens"] == 256
    for row in result["rows"]:
        assert row["max_abs_score_diff"] < 1e-3
        assert row["ours_docs_per_s"] > 0 and row["hf_peer_docs_per_s"] > 0
    mix = [row for row in result["rows"] if row["inputs"] == "mix"]
    for row in mix:  # 12 pairs: at most 4 per call, fewer for long ones (256 tokens per call)
        assert row["ours_batches"] > 3 and row["hf_our_batches_docs_per_s"] > 0


def test_train_bench_runs(tmp_path):
    args = ["--size", "tiny", "--lists", "2", "--list_size", "4", "--length", "16"]
    args += ["--steps", "1", "--check_steps", "2", "--grad_accum", "2"]
    result = _run_bench("train_bench.py", args, tmp_path / "train.json")
    assert abs(result["first_loss_ours"] - result["first_loss_torch"]) < 1e-3
    check = result["check"]["summary"]["float32"]
    assert check["all_finite"] and check["param_dtypes"] == ["float32"]
    assert check["loss_dtype"] == "float32"


def test_prepare_bench_runs(tmp_path):
    args = ["--passages", "2000", "--queries", "50", "--candidates", "20"]
    args += ["--work_dir", str(tmp_path / "work")]
    result = _run_bench("prepare_bench.py", args, tmp_path / "prepare.json")
    assert result["prepare_peak_rss_mb"] > 0 and "wrote 50 queries" in result["summary"]
