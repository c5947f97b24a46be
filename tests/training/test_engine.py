"""Engine: sharded training on 8 fake CPU devices, resume, CLI re-ranking and evaluation."""

import itertools
import json
import os
import re
import subprocess
import sys

import flax
import jax
import numpy as np
import pytest

from rankt5_jax.data import formats
from rankt5_jax.evaluation import measures
from rankt5_jax.modeling.partitioning import Partitioner
from rankt5_jax.training import optimizers, setup, train_state, train_step
from rankt5_jax.training import train as train_lib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LENGTHS = {"inputs": 32, "targets": 1}


@pytest.fixture(scope="module")
def data(smoke_lists):
    return smoke_lists  # 48 queries, lists of 6 from a BM25 top 12 (tests/conftest.py)


def _train(
    data,
    model_dir,
    variant,
    steps,
    partitioner=None,
    stop_after=None,
    lr=1e-3,
    optimizer="adafactor",
    checkpoint_period=2,
    **kwargs,
):
    model = setup.make_model(
        variant=variant,
        size="tiny",
        vocab_path=data["vocab"],
        dropout_rate=0.0,
        dtype="float32",
        loss="softmax",
    )
    # One device unless the test gives a mesh: quicker to compile and step on a small machine.
    partitioner = partitioner or Partitioner(devices=jax.devices()[:1])
    return train_lib.train(
        model_dir=str(model_dir),
        model=model,
        vocab_path=data["vocab"],
        train_task=data["train_task"],
        train_steps=steps,
        task_feature_lengths=LENGTHS,
        batch_size=8,
        partitioner=partitioner,
        optimizer=optimizers.make_optimizer(optimizer, learning_rate=lr),
        checkpoint_period=checkpoint_period,
        log_period=1,
        stop_after_steps=stop_after,
        progress=False,
        **kwargs,
    )


def _assert_params_close(a, b, atol):
    flat_a = flax.traverse_util.flatten_dict(a)
    flat_b = flax.traverse_util.flatten_dict(b)
    assert flat_a.keys() == flat_b.keys()
    for key in flat_a:
        np.testing.assert_allclose(
            np.asarray(flat_a[key]), np.asarray(flat_b[key]), atol=atol, err_msg="/".join(key)
        )


def test_eight_fake_devices():
    assert len(jax.devices()) == 8


def test_prefetch_keeps_order_runs_ahead_and_reraises():
    import threading

    from rankt5_jax.data.formats import prefetch

    produced = []
    ready = threading.Event()

    def items():
        for i in range(5):
            produced.append(i)
            if i == 2:
                ready.set()
            yield i
        raise ValueError("bad line 7")

    stream = prefetch(items(), depth=1)
    assert next(stream) == 0
    # While the consumer holds item 0, the producer moves on (one item queued, one in hand).
    assert ready.wait(timeout=30) and produced[:3] == [0, 1, 2]
    assert list(itertools.islice(stream, 4)) == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="bad line 7"):
        next(stream)


@pytest.mark.parametrize(
    "mesh", [(1, 1, 1), (8, 1, 1), (2, 4, 2)], ids=["one-device", "data8", "2x4-2d"]
)
def test_train_step_compiles_once(data, mesh):
    # The initial state must carry the shardings the step returns: otherwise the second step's
    # inputs differ from the first's and the step (tens of seconds for base on a GPU) compiles
    # twice. Adafactor: factored second moments and counts are the leaves that went astray.
    data_axis, model_axis, dims = mesh
    devices = jax.devices()[: data_axis * model_axis]
    partitioner = Partitioner(data_axis, model_axis, dims, devices=devices)
    model = setup.make_model(variant="encdec", size="tiny", vocab_path=data["vocab"])
    tx, lr = optimizers.make_optimizer("adafactor", 1e-3)
    state = train_state.init_train_state(model, tx, partitioner, LENGTHS["inputs"])
    # What a resumed run restores into: the same layout, nothing computed.
    abstract = train_state.abstract_train_state(model, tx, partitioner, LENGTHS["inputs"])
    flat, tree = jax.tree_util.tree_flatten(state)
    flat_abstract, tree_abstract = jax.tree_util.tree_flatten(abstract)
    assert tree == tree_abstract
    for leaf, struct in zip(flat, flat_abstract):
        assert isinstance(struct, jax.ShapeDtypeStruct)
        assert (struct.shape, struct.dtype) == (leaf.shape, leaf.dtype)
        assert struct.sharding.is_equivalent_to(leaf.sharding, leaf.ndim)
    step_fn, shardings = train_step.make_train_step(model, tx, lr, partitioner, state)
    rng = np.random.default_rng(0)
    batch = {
        "encoder_input_tokens": rng.integers(3, 200, (8, 6, 32)).astype(np.int32),
        "decoder_input_tokens": np.zeros((8, 6, 1), np.int32),
        "decoder_target_tokens": np.zeros((8, 6, 1), np.int32),
        "label": np.eye(6, dtype=np.float32)[rng.integers(0, 6, 8)],
        "mask": np.ones((8, 6), bool),
    }
    batch = {key: jax.device_put(value, shardings[key]) for key, value in batch.items()}
    losses = []
    with partitioner.context():
        for _ in range(3):
            state, metrics = step_fn(state, batch)
            losses.append(float(metrics["loss"]))
    assert int(state["step"]) == 3 and all(np.isfinite(losses))
    assert step_fn._cache_size() == 1


@pytest.mark.parametrize("variant", ["encdec", "enc"])
def test_sharded_training_equals_single_device(data, tmp_path, variant):
    # SGD: an adaptive optimizer turns float reassociation noise in near-zero gradients into
    # full-size updates of random sign, which says nothing about the partitioning.
    # One checkpoint per run (the last step's): what is compared is the params trained.
    sgd = dict(optimizer="sgd", lr=0.05, checkpoint_period=3)
    single = _train(
        data, tmp_path / "single", variant, 3, Partitioner(devices=jax.devices()[:1]), **sgd
    )
    initial = _train(data, tmp_path / "init", variant, 0, Partitioner(devices=jax.devices()[:1]))
    moved = max(
        float(np.abs(np.asarray(a) - np.asarray(b)).max())
        for a, b in zip(
            jax.tree_util.tree_leaves(single.params), jax.tree_util.tree_leaves(initial.params)
        )
    )
    assert single.step == 3 and moved > 1e-3  # training changed the params
    for data_axis, model_axis, dims in [(4, 2, 1), (2, 4, 1), (4, 2, 2), (2, 4, 2)]:
        partitioner = Partitioner(data_axis, model_axis, parameter_partitioning_dims=dims)
        out = _train(
            data, tmp_path / f"m{data_axis}x{model_axis}_{dims}", variant, 3, partitioner, **sgd
        )
        _assert_params_close(single.params, out.params, atol=1e-5)
    # Parameters really are split over the mesh (not silently replicated).
    part = Partitioner(2, 4, parameter_partitioning_dims=2)
    model = setup.make_model(variant=variant, size="tiny", vocab_path=data["vocab"])
    abstract = jax.eval_shape(
        lambda: model.get_initial_variables(
            jax.random.PRNGKey(0), {"encoder_input_tokens": (1, 1, 8)}
        )
    )
    shardings = part.params_shardings(abstract["params"], abstract["params_axes"])
    spec = shardings["encoder"]["layers_0"]["attention"]["query"]["kernel"].spec
    assert tuple(spec) == ("data", "model")


def test_resume_equals_uninterrupted(data, tmp_path, monkeypatch):
    straight = _train(data, tmp_path / "straight", "encdec", 6)
    first = _train(data, tmp_path / "resumed", "encdec", 6, stop_after=3)
    assert first.step == 3

    def no_fresh_state(*args, **kwargs):
        raise AssertionError("a resumed run initialised a fresh training state")

    # Resuming restores into abstract shapes: no fresh params and optimizer state beside it.
    monkeypatch.setattr(train_lib, "init_train_state", no_fresh_state)
    second = _train(data, tmp_path / "resumed", "encdec", 6)
    assert second.step == 6
    _assert_params_close(straight.params, second.params, atol=1e-6)
    losses_a = [h["loss"] for h in straight.history]
    losses_b = [h["loss"] for h in first.history + second.history]
    np.testing.assert_allclose(losses_a, losses_b, rtol=1e-5)  # same data order after resume


def test_checkpoint_retention_and_ranker_load(data, tmp_path):
    from rankt5_jax import Ranker

    result = _train(data, tmp_path / "keep", "enc", 8, keep_checkpoints=2)
    steps = sorted(int(s) for s in os.listdir(tmp_path / "keep" / "checkpoints") if s.isdigit())
    assert steps == [6, 8]
    ranker = Ranker.load(tmp_path / "keep")
    assert ranker.model.variant == "enc"
    from rankt5_jax.inference.ranker import Ranker as R

    direct = R(ranker.model, result.params, ranker.vocab, max_length=32)
    np.testing.assert_allclose(
        ranker.score("q", ["a b", "c"]), direct.score("q", ["a b", "c"]), atol=1e-6
    )


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


def _cli(*args, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "rankt5_jax", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        **kwargs,
    )


@pytest.fixture(scope="module")
def encdec_trained(data, tmp_path_factory):
    """(model_dir, TrainResult): an EncDec model trained 4 steps, for the tests that need some
    trained model (trained once for the module)."""
    model_dir = tmp_path_factory.mktemp("encdec") / "model"
    return model_dir, _train(data, model_dir, "encdec", 4)


def test_rerank_and_evaluate_cli(data, encdec_trained, tmp_path):
    model_dir, _ = encdec_trained
    dev = data["dev"]
    output = tmp_path / "reranked.run"
    out = _cli(
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
    ev = _cli("evaluate", "--run", str(output), "--qrels", dev["qrels"], "--json")
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
        out = _cli(*args, timeout=300)
        assert out.returncode == 2, (args, out.stderr[-2000:])
        ours = [line for line in out.stderr.splitlines() if line.startswith("rankt5:")]
        assert len(ours) == 1 and ours[0].startswith("rankt5: error:"), out.stderr[-2000:]
        assert out.stderr.rstrip().endswith(ours[0]) and "Traceback" not in out.stderr
        messages.append(ours[0])
    assert "MODEL_DIR" in messages[3] and "no_such_file.gin" in messages[4]


def test_gradient_accumulation_matches_one_big_batch(data, tmp_path):
    sgd = dict(optimizer="sgd", lr=0.05)
    one = _train(data, tmp_path / "acc1", "enc", 2, Partitioner(devices=jax.devices()[:1]), **sgd)
    two = _train(
        data,
        tmp_path / "acc2",
        "enc",
        2,
        Partitioner(devices=jax.devices()[:1]),
        grad_accum_steps=2,
        **sgd,
    )
    _assert_params_close(one.params, two.params, atol=1e-5)


def test_init_checkpoint_loads_weights_without_optimizer_state(data, encdec_trained, tmp_path):
    source_dir, source = encdec_trained
    model_dir = tmp_path / "finetune"
    result = _train(data, model_dir, "encdec", 0, init_checkpoint=str(source_dir))
    _assert_params_close(source.params, result.params, atol=0)
    # An Enc model starts its encoder from an EncDec checkpoint; its head starts fresh.
    enc = _train(data, tmp_path / "enc_ft", "enc", 0, init_checkpoint=str(source_dir))
    np.testing.assert_array_equal(
        np.asarray(enc.params["encoder"]["encoder_norm"]["scale"]),
        np.asarray(source.params["encoder"]["encoder_norm"]["scale"]),
    )


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
    out = _cli(
        "train",
        "--gin_file=experiments/smoke_cpu.gin",
        f"--gin.MODEL_DIR='{tmp_path}'",
        "--gin.trainer.train.batch_szie=4",
        timeout=300,
    )
    ours = [line for line in out.stderr.splitlines() if line.startswith("rankt5:")]
    assert out.returncode == 2 and len(ours) == 1 and "batch_szie" in ours[0]


def test_repeated_dev_evaluation_and_best_checkpoint(data, tmp_path):
    result = _train(
        data,
        tmp_path / "evals",
        "encdec",
        4,
        eval_task=data["eval_task"],
        eval_period=2,
        eval_qrels=data["dev"]["qrels"],
        eval_batch_size=16,
        keep_checkpoints=1,
        keep_best_by="RR@10",
    )
    runs = sorted(os.listdir(tmp_path / "evals" / "eval_runs"))
    assert runs == ["step_2.run", "step_4.run"]
    assert set(result.eval_metrics) == {"RR@10", "nDCG@5", "nDCG@10", "AP"}
    final = measures.evaluate_run(
        formats.read_run(str(tmp_path / "evals" / "eval_runs" / "step_4.run")),
        formats.read_qrels(data["dev"]["qrels"]),
    )
    assert final == pytest.approx(result.eval_metrics)
    best = json.load(open(tmp_path / "evals" / "best_checkpoint.json"))
    kept = sorted(int(s) for s in os.listdir(tmp_path / "evals" / "checkpoints") if s.isdigit())
    assert kept == sorted({4, best["step"]})
