"""`rankt5 train` with MODEL_DIR in a bucket (the loopback emulator): killed after its first
checkpoint, resumed from the bucket, and the model equals an uninterrupted run in a local folder.
Three `rankt5 train` processes (local reference, killed, resumed) of 4 tiny steps each."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

from rankt5_jax import Ranker
from rankt5_jax.data import paths

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _train(model_dir: str, data_dir: str) -> list[str]:
    return [
        sys.executable, "-m", "rankt5_jax", "train", f"--gin_file={REPO}/gin/experiments/smoke_cpu.gin",
        f"--gin.MODEL_DIR='{model_dir}'", f"--gin.DATA_DIR='{data_dir}'",
        "--gin.TRAIN_STEPS=4", "--gin.CHECKPOINT_PERIOD=2", "--gin.EVAL_PERIOD=None",
        "--gin.BATCH_SIZE=4", "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 1}",
        "--gin.trainer.train.log_period=1", "--gin.smoke.smoke_data.num_queries=16",
        "--gin.smoke.smoke_data.dev_queries=4",
    ]  # fmt: skip


def test_smoke_train_to_a_bucket_killed_and_resumed_equals_a_local_run(tmp_path, bucket):
    data, local, remote = str(tmp_path / "data"), str(tmp_path / "local"), paths.join(bucket, "m")
    subprocess.run(_train(local, data), cwd=tmp_path, check=True, capture_output=True, env=_env())
    proc = subprocess.Popen(
        _train(remote, data), cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, text=True
    )
    for line in proc.stdout:
        if line.startswith("step 3/4"):  # checkpoint 2 is in the bucket, 4 is not
            proc.kill()
            break
    proc.wait()
    assert proc.returncode != 0, "killed before it finished"
    assert paths.listdir(paths.join(remote, "checkpoints")) == ["2"]
    assert paths.listdir(paths.join(remote, "train"))  # TensorBoard events uploaded per flush
    resumed = subprocess.run(
        _train(remote, data), cwd=tmp_path, env=_env(), check=True, capture_output=True, text=True
    )
    assert f"resumed from step 2 of {remote}" in resumed.stdout
    assert paths.listdir(paths.join(remote, "checkpoints")) == ["2", "4"]
    assert not (tmp_path / "gs:").exists()  # nothing written to a local folder named gs:/...
    query, docs = "a query", ["one document", "another document", "a third"]
    np.testing.assert_allclose(
        Ranker.load(remote).score(query, docs), Ranker.load(local).score(query, docs), atol=1e-6
    )


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
