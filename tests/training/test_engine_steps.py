"""Engine: the step compiles once, prefetch, resume, gradient accumulation, checkpoint
retention and dev evaluation."""

import itertools
import json
import os

import jax
import numpy as np
import pytest
from engine_helpers import LENGTHS, assert_params_close, train

from rankt5_jax.data import formats
from rankt5_jax.evaluation import measures
from rankt5_jax.modeling.partitioning import Partitioner
from rankt5_jax.training import optimizers, setup, train_state, train_step
from rankt5_jax.training import train as train_lib


@pytest.fixture(scope="module")
def data(smoke_lists):
    return smoke_lists  # 48 queries, lists of 6 from a BM25 top 12 (tests/conftest.py)


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


def test_resume_equals_uninterrupted(data, tmp_path, monkeypatch):
    straight = train(data, tmp_path / "straight", "encdec", 6)
    first = train(data, tmp_path / "resumed", "encdec", 6, stop_after=3)
    assert first.step == 3

    def no_fresh_state(*args, **kwargs):
        raise AssertionError("a resumed run initialised a fresh training state")

    # Resuming restores into abstract shapes: no fresh params and optimizer state beside it.
    monkeypatch.setattr(train_lib, "init_train_state", no_fresh_state)
    second = train(data, tmp_path / "resumed", "encdec", 6)
    assert second.step == 6
    assert_params_close(straight.params, second.params, atol=1e-6)
    losses_a = [h["loss"] for h in straight.history]
    losses_b = [h["loss"] for h in first.history + second.history]
    np.testing.assert_allclose(losses_a, losses_b, rtol=1e-5)  # same data order after resume


def test_checkpoint_retention_and_ranker_load(data, tmp_path):
    from rankt5_jax import Ranker

    result = train(data, tmp_path / "keep", "enc", 8, keep_checkpoints=2)
    steps = sorted(int(s) for s in os.listdir(tmp_path / "keep" / "checkpoints") if s.isdigit())
    assert steps == [6, 8]
    ranker = Ranker.load(tmp_path / "keep")
    assert ranker.model.variant == "enc"
    from rankt5_jax.inference.ranker import Ranker as R

    direct = R(ranker.model, result.params, ranker.vocab, max_length=32)
    np.testing.assert_allclose(
        ranker.score("q", ["a b", "c"]), direct.score("q", ["a b", "c"]), atol=1e-6
    )


def test_gradient_accumulation_matches_one_big_batch(data, tmp_path):
    sgd = dict(optimizer="sgd", lr=0.05)
    one = train(data, tmp_path / "acc1", "enc", 2, Partitioner(devices=jax.devices()[:1]), **sgd)
    two = train(
        data,
        tmp_path / "acc2",
        "enc",
        2,
        Partitioner(devices=jax.devices()[:1]),
        grad_accum_steps=2,
        **sgd,
    )
    assert_params_close(one.params, two.params, atol=1e-5)


def test_repeated_dev_evaluation_and_best_checkpoint(data, tmp_path):
    result = train(
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
