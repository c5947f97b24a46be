"""Engine through the CLI: the smoke gin learns, re-ranking and evaluation, one-line errors,
init checkpoints, run_tpu.sh."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from engine_helpers import REPO, assert_params_close, cli, train

from rankt5_jax.data import formats
from rankt5_jax.evaluation import measures


@pytest.fixture(scope="module")
def data(smoke_lists):
    return smoke_lists  # 48 queries, lists of 6 from a BM25 top 12 (tests/conftest.py)


def _random_rr(run, qrels, seeds=20):
    rng = np.random.default_rng(0)
    values = []
    for _ in range(seeds):
        shuffled = {q: {d: float(rng.random()) for d in docs} for q, docs in run.items()}
        values.append(measures.evaluate_run(shuffled, qrels, ["RR@10"])["RR@10"])
    return float(np.mean(values))


def test_smoke_cpu_gin_learns(tmp_path):
    data_dir = tmp_path / "data"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "rankt5_jax",
            "train",
            "--gin_file=experiments/smoke_cpu.gin",
            f"--gin.MODEL_DIR='{tmp_path / 'model'}'",
            f"--gin.DATA_DIR='{data_dir}'",
            "--gin.TRAIN_STEPS=300",
            "--gin.smoke.smoke_data.num_queries=400",
            "--gin.smoke.smoke_data.dev_queries=60",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    # It says what it is doing before the first step: model, output dir, data, mesh, compiling.
    announce = out.stdout.index("compiling the step")
    assert out.stdout.index("step 20/") > announce
    assert "train: encdec model -> " in out.stdout and "task smoke_train" in out.stdout
    losses = [float(x) for x in re.findall(r"loss (\d+\.\d+)", out.stdout)]
    assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:2])
    evals = re.findall(r"eval step \d+: (\{.*\})", out.stdout)
    result = json.loads(evals[-1])
    info = json.load(open(data_dir / "smoke_data.json"))
    random_rr = _random_rr(
        formats.read_run(info["dev"]["run"]), formats.read_qrels(info["dev"]["qrels"])
    )
    assert result["RR@10"] > random_rr + 0.2, (result, random_rr)
    assert os.path.isfile(tmp_path / "model" / "eval_runs" / "step_300.run")


@pytest.fixture(scope="module")
def encdec_trained(data, tmp_path_factory):
    """(model_dir, TrainResult): an EncDec model trained 4 steps, for the tests that need some
    trained model (trained once for the module)."""
    model_dir = tmp_path_factory.mktemp("encdec") / "model"
    return model_dir, train(data, model_dir, "encdec", 4)


def test_rerank_and_evaluate_cli(data, encdec_trained, tmp_path):
    model_dir, _ = encdec_trained
    dev = data["dev"]
    output = tmp_path / "reranked.run"
    out = cli(
        "rerank",
        "--checkpoint",
        str(model_dir),
        "--queries",
        dev["queries"],
        "--corpus",
        dev["corpus"],
        "--run",
        dev["run"],
        "--output",
        str(output),
        "--qrels",
        dev["qrels"],
        "--max_length",
        "32",
        "--batch_size",
        "16",
        "--batch_tokens",
        "256",
        "--json",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    printed = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(printed) == {"input", "reranked"} and "RR@10" in printed["reranked"]
    source = formats.read_run(dev["run"])
    lines = [line.split() for line in open(output)]
    by_query = {}
    for qid, _, docid, rank, score, _ in lines:
        by_query.setdefault(qid, []).append((docid, int(rank), float(score)))
    assert by_query.keys() == source.keys()
    for qid, rows in by_query.items():
        assert sorted(d for d, _, _ in rows) == sorted(source[qid])  # each candidate once
        assert [r for _, r, _ in rows] == list(range(1, len(rows) + 1))
        scores = [s for _, _, s in rows]
        assert scores == sorted(scores, reverse=True)
    ev = cli("evaluate", "--run", str(output), "--qrels", dev["qrels"], "--json")
    assert ev.returncode == 0
    assert json.loads(ev.stdout.strip().splitlines()[-1]) == pytest.approx(printed["reranked"])


def test_cli_errors_are_one_line(data, tmp_path):
    bad_run = tmp_path / "bad.run"
    bad_run.write_text("q0 Q0 d0 1 1.0 t\nq0 Q0 d1 oops\n")
    cases = [
        ("evaluate", "--run", str(tmp_path / "missing.run"), "--qrels", data["dev"]["qrels"]),
        ("evaluate", "--run", str(bad_run), "--qrels", data["dev"]["qrels"]),
        (
            "rerank",
            "--checkpoint",
            str(tmp_path / "nomodel"),
            "--queries",
            data["dev"]["queries"],
            "--corpus",
            data["dev"]["corpus"],
            "--run",
            data["dev"]["run"],
            "--output",
            str(tmp_path / "o.run"),
        ),
        ("train", "--gin_file=experiments/smoke_cpu.gin", "--gin.MODEL_DIRR='x'"),
        ("train", "--gin_file=no_such_file.gin"),
    ]
    messages = []
    for args in cases:
        out = cli(*args, timeout=300)
        assert out.returncode == 2, (args, out.stderr[-2000:])
        ours = [line for line in out.stderr.splitlines() if line.startswith("rankt5:")]
        assert len(ours) == 1 and ours[0].startswith("rankt5: error:"), out.stderr[-2000:]
        assert out.stderr.rstrip().endswith(ours[0]) and "Traceback" not in out.stderr
        messages.append(ours[0])
    assert "MODEL_DIR" in messages[3] and "no_such_file.gin" in messages[4]


def test_init_checkpoint_loads_weights_without_optimizer_state(data, encdec_trained, tmp_path):
    source_dir, source = encdec_trained
    model_dir = tmp_path / "finetune"
    result = train(data, model_dir, "encdec", 0, init_checkpoint=str(source_dir))
    assert_params_close(source.params, result.params, atol=0)
    # An Enc model starts its encoder from an EncDec checkpoint; its head starts fresh.
    enc = train(data, tmp_path / "enc_ft", "enc", 0, init_checkpoint=str(source_dir))
    np.testing.assert_array_equal(
        np.asarray(enc.params["encoder"]["encoder_norm"]["scale"]),
        np.asarray(source.params["encoder"]["encoder_norm"]["scale"]),
    )


def test_init_checkpoint_with_another_vocabulary_is_refused_before_writing(
    data, encdec_trained, tmp_path
):
    import shutil

    from rankt5_jax.data import synthetic
    from rankt5_jax.errors import CheckpointError

    source_dir, _ = encdec_trained
    other = tmp_path / "other"
    shutil.copytree(source_dir, other)
    words = synthetic.make_collection(num_queries=30, seed=5)
    vocab = synthetic.train_sentencepiece(str(tmp_path / "sp"), 200, words)
    shutil.copy(vocab, other / "spiece.model")
    model_dir = tmp_path / "finetune"
    with pytest.raises(CheckpointError, match=r"other.*vocabulary.*not the training data's"):
        train(data, model_dir, "encdec", 0, init_checkpoint=str(other))
    assert not model_dir.exists()


def test_run_tpu_dry_run_prints_the_launch_commands():
    out = subprocess.run(
        [
            "bash",
            "run_tpu.sh",
            "--tpu",
            "pod",
            "--zone",
            "z1",
            "--dry_run",
            "--",
            "--gin_file=experiments/msmarco_encdec_softmax.gin",
            "--gin.MODEL_DIR='gs://b/m'",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "tpu-vm ssh pod --zone=z1 --worker=all" in out.stdout
    assert (
        "rankt5_jax\\ train\\ --multihost" in out.stdout
        and "msmarco_encdec_softmax.gin" in out.stdout
    )
    gpu = subprocess.run(
        ["bash", "run_tpu.sh", "--gpu", "--dry_run", "--", "--gin_file=x.gin"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert gpu.stdout.strip() == "python3 -m rankt5_jax train --gin_file=x.gin"
    bad = subprocess.run(
        ["bash", "run_tpu.sh", "--tpu", "pod", "--", "--gin_file=x.gin"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "--zone" in bad.stderr


def test_gin_typo_in_a_configurable_is_one_line(tmp_path):
    out = cli(
        "train",
        "--gin_file=experiments/smoke_cpu.gin",
        f"--gin.MODEL_DIR='{tmp_path}'",
        "--gin.trainer.train.batch_szie=4",
        timeout=300,
    )
    ours = [line for line in out.stderr.splitlines() if line.startswith("rankt5:")]
    assert out.returncode == 2 and len(ours) == 1 and "batch_szie" in ours[0]
