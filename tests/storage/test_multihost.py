"""Training with 2 processes (4 CPU devices each, joined on loopback as `--multihost` joins
them) into one model directory in a bucket (the loopback emulator), which this one process then
loads with `Ranker.load("gs://...")`. One run of 3 tiny steps (tests/multiprocess's `Job` and
`mp_worker`; its `cli` task runs `rankt5 train --multihost` itself, tested there)."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from rankt5_jax.data import paths

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "multiprocess"))

import mp_worker  # noqa: E402
from test_multiprocess import Job  # noqa: E402

pytestmark = pytest.mark.multiprocess


def test_two_processes_train_into_one_bucket_directory(tmp_path, bucket, smoke_lists_dir):
    from rankt5_jax import Ranker
    from rankt5_jax.checkpoints import model_dir

    remote = paths.join(bucket, "m")
    out = tmp_path / "out"
    out.mkdir()
    plan = {  # mp_worker's `train`: `train.train` of the tiny model, checkpoint at step 3
        "data_dir": smoke_lists_dir,
        "out": str(out),
        "tasks": [dict(name="t", kind="train", model_dir=remote, steps=3, mesh=[-1, 1, 1])],
    }
    job = Job(plan, 2, 4, str(tmp_path))
    try:
        job.wait()
    finally:
        job.close()
    for i in range(2):  # two processes of one 8-device job
        assert open(out / f"done.p{i}").read().strip() == f"{i} of 2: 8"
    fed = [np.load(out / f"t.fed.p{i}.npy") for i in range(2)]
    assert fed[0].shape[:2] == fed[1].shape[:2] == (3, mp_worker.BATCH_SIZE // 2)
    assert not np.array_equal(fed[0], fed[1])  # each process fed its own rows
    # one directory in the bucket: spec, vocabulary, step 3 with both data shards' positions
    assert {"rankt5.json", "spiece.model", "checkpoints"} <= set(paths.listdir(remote))
    assert paths.listdir(paths.join(remote, "checkpoints")) == ["3"]
    assert model_dir.recorded_data_shards(remote, 3) == 2
    assert not (tmp_path / "gs:").exists() and not os.path.exists(os.path.join(REPO, "gs:"))
    # read here by one process from the bucket: exactly the params the two processes held
    trained = dict(np.load(out / "t.npz"))
    loaded = mp_worker.flat_params(model_dir.load_model_dir(remote)[1])
    assert loaded.keys() == trained.keys()
    for key, value in trained.items():
        np.testing.assert_array_equal(loaded[key], value, err_msg=key)
    scores = Ranker.load(remote).score("a query", ["one document", "another one", "a third"])
    assert np.all(np.isfinite(scores)) and np.ptp(scores) > 0
