"""T5X integration: t5x's own train.py / infer.py / eval.py with rankt5_jax's models.

Skipped where t5x is not installed (it is not on PyPI; docs/t5x.md says how to install it).
"""

import json
import os

import numpy as np
import pytest

t5x = pytest.importorskip("t5x")
pytest.importorskip("t5x.train")

from t5x_run import run_t5x as _t5x  # noqa: E402 (after the skip)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("t5x")
    data = root / "data"
    log = _t5x(
        "train",
        "--gin_file=gin/t5x/smoke_cpu.gin",
        f"--gin.MODEL_DIR='{root / 'orbax'}'",
        f"--gin.DATA_DIR='{data}'",
    )
    return root, data, log


def test_train_evaluates_and_checkpoints(trained):
    root, _, log = trained
    assert os.path.isdir(root / "orbax" / "checkpoint_20" / "state")
    assert "smoke_dev/RR@10 at step 20" in log and "smoke_dev/AP at step 20" in log
    assert "ranking/mrr@10" in log


def _eval_lists(data):
    """The dev task's (tokens, mask) per query, as t5x feeds them."""
    from rankt5_jax.training import smoke

    info = smoke.smoke_data(str(data))
    import seqio

    task = seqio.get_mixture_or_task(info["eval_task"])
    dataset = task.get_dataset({"inputs": 64, "targets": 1}, split="validation", shuffle=False)
    return info, list(dataset.as_numpy_iterator())


def _assert_ranker_matches_t5x_scores(checkpoint, data, out_dir):
    """t5x infer.py (score mode: the T5X model's score_batch) vs Ranker.load on `checkpoint`."""
    from rankt5_jax import Ranker

    _t5x(
        "infer",
        "--gin_file=gin/t5x/smoke_infer.gin",
        f"--gin.CHECKPOINT_PATH='{checkpoint}'",
        f"--gin.INFER_OUTPUT_DIR='{out_dir}'",
        f"--gin.DATA_DIR='{data}'",
    )
    files = [
        f
        for f in os.listdir(out_dir)
        if f.startswith("smoke_dev-score.jsonl") and not f.endswith("COMPLETED")
    ]
    rows = [json.loads(line) for line in open(os.path.join(out_dir, files[0]))]
    info, lists = _eval_lists(data)
    assert len(rows) == len(lists)
    ranker = Ranker.load(checkpoint, vocab=info["vocab"], dtype="float32", max_length=64)
    for row, example in zip(rows, lists):
        mask = example["mask"]
        assert len(row["score"]) == len(mask)  # one score per list item
        tokens = [r[r > 0] for r in example["inputs"][mask]]
        np.testing.assert_allclose(
            ranker.score_tokens(tokens), np.asarray(row["score"])[mask], atol=1e-5
        )


def test_infer_score_mode_and_ranker_equal_scores(trained):
    root, data, _ = trained
    _assert_ranker_matches_t5x_scores(root / "orbax" / "checkpoint_20", data, root / "infer")


def test_eval_reports_ranking_metrics(trained):
    root, data, _ = trained
    log = _t5x(
        "eval",
        "--gin_file=gin/t5x/smoke_eval.gin",
        f"--gin.CHECKPOINT_PATH='{root / 'orbax' / 'checkpoint_20'}'",
        f"--gin.EVAL_OUTPUT_DIR='{root / 'eval'}'",
        f"--gin.DATA_DIR='{data}'",
    )
    for name in ("RR@10", "nDCG@5", "nDCG@10", "AP"):
        assert f"smoke_dev/{name} at step 20" in log


def test_legacy_checkpoint_scores_like_t5x(trained):
    root, data, _ = trained
    _t5x(
        "train",
        "--gin_file=gin/t5x/smoke_cpu.gin",
        f"--gin.MODEL_DIR='{root / 'legacy'}'",
        f"--gin.DATA_DIR='{data}'",
        "--gin.train.use_orbax=False",
        "--gin.TRAIN_STEPS=10",
        "--gin.EVAL_PERIOD=10",
    )
    legacy = root / "legacy" / "checkpoint_10"
    assert os.path.isfile(legacy / "checkpoint")  # msgpack + one zarr directory per array
    _assert_ranker_matches_t5x_scores(legacy, data, root / "infer_legacy")


def test_enc_variant_trains_under_t5x(trained, tmp_path):
    """From the EncDec checkpoint (its decoder unread, the score head new), as the paper's Enc
    models start from T5."""
    root, data, _ = trained
    log = _t5x(
        "train",
        "--gin_file=gin/t5x/smoke_cpu.gin",
        "--gin_file=gin/t5x/enc.gin",
        f"--gin.MODEL_DIR='{tmp_path / 'enc'}'",
        f"--gin.DATA_DIR='{data}'",
        f"--gin.INITIAL_CHECKPOINT_PATH='{root / 'orbax' / 'checkpoint_20'}'",
        "--gin.TRAIN_STEPS=30",  # t5x continues the checkpoint's step count (20)
        "--gin.EVAL_PERIOD=10",
    )
    assert "smoke_dev/RR@10 at step 30" in log
    from rankt5_jax.checkpoints import t5x_checkpoints

    params = t5x_checkpoints.load_t5x_orbax(str(tmp_path / "enc" / "checkpoint_30"))
    assert "score_head" in params and "decoder" not in params
