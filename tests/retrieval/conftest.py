"""Shared by the retrieval tests: one tiny UR2N model trained once per session on the smoke data
(`smoke_cpu_ur2n.gin`)."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN_STEPS = 40


@pytest.fixture(scope="session")
def trained_ur2n(tmp_path_factory):
    """{"folder", "model", "dev"}: `rankt5 train` with smoke_cpu_ur2n.gin for TRAIN_STEPS steps
    (a subprocess on one CPU device), the smoke data's paths under "dev"."""
    folder = tmp_path_factory.mktemp("ur2n")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    out = subprocess.run(
        [
            sys.executable, "-m", "rankt5_jax", "train",
            "--gin_file=experiments/smoke_cpu_ur2n.gin",
            f"--gin.MODEL_DIR='{folder / 'model'}'",
            f"--gin.DATA_DIR='{folder / 'data'}'",
            f"--gin.TRAIN_STEPS={TRAIN_STEPS}",
        ],
        capture_output=True, text=True, cwd=REPO, timeout=600, env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    with open(folder / "model" / "rankt5.json") as handle:
        assert json.load(handle)["t5"]["xtr_dim"] > 0
    with open(folder / "data" / "smoke_data.json") as handle:
        info = json.load(handle)
    return {"folder": folder, "model": str(folder / "model"), "dev": info["dev"]}
