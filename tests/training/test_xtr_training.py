"""Training UR2N's XTR layer: the ranker's params stay bit-identical and get no optimizer state,
the checkpoint re-ranks exactly as the ranker it started from, the loss and gradients on a
mesh equal one device's, and `smoke_cpu_ur2n.gin` trains."""

import json
import os

import flax
import jax
import numpy as np
import pytest

from rankt5_jax.checkpoints import model_dir as model_dir_lib
from rankt5_jax.data import tasks_lib
from rankt5_jax.modeling import xtr
from rankt5_jax.modeling.partitioning import Partitioner
from rankt5_jax.training import optimizers, setup, smoke, train_state, train_step


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("ur2n"))
    info = smoke.smoke_data(
        data_dir,
        num_queries=40,
        dev_queries=8,
        top_k=10,
        vocab_size=300,
        list_size=4,
    )
    info["data_dir"] = data_dir
    info["xtr_task"] = tasks_lib.register_xtr_task("xtr_train_test", info["records"], info["vocab"])
    return info


def _base(data, variant="monot5"):
    return setup.make_model(
        variant=variant, size="tiny", vocab_path=data["vocab"], dropout_rate=0.0
    )


def _flat(params):
    return flax.traverse_util.flatten_dict(jax.device_get(params), sep="/")


def _leaves_and_bytes(tree):
    leaves = jax.tree_util.tree_leaves(tree)
    return len(leaves), sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in leaves)


def _write_ranker_dir(path, base, vocab_path, seed=0):
    """A monoT5 model directory with random params (no training needed for this test)."""
    import orbax.checkpoint as ocp

    from rankt5_jax.checkpoints import model_dir

    shapes = jax.eval_shape(
        lambda: base.get_initial_variables(
            jax.random.PRNGKey(0), {"encoder_input_tokens": (1, 1, 8)}
        )
    )["params"]
    rng = np.random.default_rng(seed)
    params = jax.tree_util.tree_map(
        lambda x: (0.3 * rng.normal(size=x.shape)).astype(np.float32), shapes
    )
    os.makedirs(path)
    model_dir.write_model_files(path, base.spec(), vocab_path)
    manager = model_dir.checkpoint_manager(path)
    manager.save(1, args=ocp.args.Composite(params=ocp.args.StandardSave(params)), force=True)
    manager.wait_until_finished()
    return _flat(params)


def test_xtr_loss_and_gradients_on_a_mesh_equal_one_device(data):
    model = xtr.make_xtr_model(_base(data, "encdec"), xtr_dim=8, k_train=20)
    shapes = {"encoder_input_tokens": (1, 1, 32)}
    abstract = jax.eval_shape(lambda: model.get_initial_variables(jax.random.PRNGKey(0), shapes))
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map(  # random params of the right shapes: nothing to compile
        lambda x: (0.3 * rng.normal(size=x.shape)).astype(np.float32), abstract["params"]
    )
    queries = rng.integers(3, 250, (8, 12)).astype(np.int32)
    queries[:, 7:] = 0
    docs = rng.integers(3, 250, (8, 2, 24)).astype(np.int32)
    docs[:, :, 16:] = 0
    docs[3, 1] = 0  # a missing negative
    batch = {"query_tokens": queries, "doc_tokens": docs}
    # SGD with learning rate 1: each step's update is minus the gradient. Its state is a count.
    tx, lr = optimizers.make_optimizer("sgd", learning_rate=1.0)
    opt_state = jax.device_get(optimizers.for_model(tx, model).init(params))
    assert all(leaf.shape == () for leaf in jax.tree_util.tree_leaves(opt_state))
    results = []
    for data_axis, model_axis, dims in [(1, 1, 1), (8, 1, 1), (4, 2, 2)]:
        devices = jax.devices()[: data_axis * model_axis]
        partitioner = Partitioner(data_axis, model_axis, dims, devices=devices)
        shardings = partitioner.params_shardings(abstract["params"], abstract["params_axes"])
        state = {
            "step": jax.device_put(np.int32(0), partitioner.replicated()),
            "params": jax.device_put(params, shardings),
            "opt_state": jax.device_put(opt_state, partitioner.replicated()),
        }
        step_fn, batch_shardings = train_step.make_train_step(model, tx, lr, partitioner, state)
        assert set(batch_shardings) == {"query_tokens", "doc_tokens"}
        placed = {k: jax.device_put(v, batch_shardings[k]) for k, v in batch.items()}
        with partitioner.context():
            state, metrics = step_fn(state, placed)
            state, second = step_fn(state, placed)
        assert step_fn._cache_size() == 1
        assert float(second["loss"]) < float(metrics["loss"])  # it learns
        if (data_axis, model_axis) == (4, 2):  # XTR params are split as the encoder's are
            kernel = state["params"]["encoder"]["xtr_layer"]["attention"]["query"]["kernel"]
            assert tuple(kernel.sharding.spec) == ("data", "model")
        after = _flat(state["params"])
        results.append((metrics, {k: after[k] - v for k, v in _flat(params).items()}))
    (base_metrics, base_moves), *others = results
    assert any(np.abs(v).max() > 1e-3 for v in base_moves.values())
    for metrics, moves in others:
        for name in ("loss", "grad_norm", "mrr@10"):
            assert float(metrics[name]) == pytest.approx(float(base_metrics[name]), abs=1e-5)
        for key, move in moves.items():
            np.testing.assert_allclose(move, base_moves[key], atol=1e-5, err_msg=key)
            if not key.startswith(xtr.XTR_PARAMS):
                assert not move.any()  # frozen


def _train_smoke_gin(*flags):
    """`rankt5 train --gin_file=experiments/smoke_cpu_ur2n.gin ...` in this process."""
    import gin
    from rankt5_jax.training import gin_flags

    # An absolute path: tests/experiments/ would pass for gin's package lookup.
    config = os.path.join(gin_flags.config_dir(), "experiments", "smoke_cpu_ur2n.gin")
    try:
        return gin_flags.main_from_flags([f"--gin_file={config}", *flags])
    finally:
        gin.clear_config()


def test_smoke_cpu_ur2n_gin_trains_and_freezes_the_ranker(data, tmp_path, capsys):
    from rankt5_jax import Ranker

    ranker_dir = str(tmp_path / "ranker")
    ranker = _write_ranker_dir(ranker_dir, _base(data), data["vocab"])
    model = xtr.make_xtr_model(_base(data), xtr_dim=32)
    tx, _ = optimizers.make_optimizer("adafactor", learning_rate=1e-3)

    # The initial state: the ranker's params, the XTR layer a copy of its last layer.
    one = Partitioner(devices=jax.devices()[:1])
    state = train_state.init_train_state(model, tx, one, 64, init_checkpoint=ranker_dir)
    assert "XTR layer copied from the last encoder layer" in capsys.readouterr().out
    start = _flat(state["params"])
    for key, value in ranker.items():
        np.testing.assert_array_equal(start[key], value)
        if key.startswith("encoder/layers_1/"):
            np.testing.assert_array_equal(start[key.replace("layers_1", "xtr_layer")], value)
    assert {k for k in start if k not in ranker} == {
        k for k in start if k.startswith(xtr.XTR_PARAMS)
    }
    # Optimizer state exists for the XTR params only: Adafactor's state of those alone.
    trained, frozen = optimizers.split_params(start, xtr.XTR_PARAMS)
    assert _leaves_and_bytes(state["opt_state"]) == _leaves_and_bytes(
        jax.eval_shape(tx.init, trained)
    )
    frozen_state = _leaves_and_bytes(jax.eval_shape(tx.init, frozen))
    assert _leaves_and_bytes(state["opt_state"])[1] < frozen_state[1] / 4

    # The smoke config from the ranker, 40 steps.
    model_dir = tmp_path / "ur2n"
    result = _train_smoke_gin(
        f"--gin.MODEL_DIR='{model_dir}'",
        f"--gin.DATA_DIR='{data['data_dir']}'",  # the fixture's: generated once
        "--gin.smoke.smoke_data.vocab_size=300",  # its vocabulary (else a new folder's is made)
        f"--gin.INIT_CHECKPOINT='{ranker_dir}'",
        "--gin.TRAIN_STEPS=40",
        "--gin.CHECKPOINT_PERIOD=20",
    )
    out = capsys.readouterr().out
    assert "train: monot5 model -> " in out and "task smoke_xtr_train" in out
    assert result.step == 40 and len(result.history) == 2
    assert all(np.isfinite(h["loss"]) for h in result.history), out
    assert sorted(os.listdir(model_dir / "checkpoints")) == ["20", "40"]
    # What a resumed run restores: the XTR params' optimizer state through orbax and back.
    abstract = train_state.abstract_train_state(model, tx, one, 64)
    manager = model_dir_lib.checkpoint_manager(str(model_dir), read_only=True)
    restored = model_dir_lib.restore_state(manager, 20, abstract)
    assert _leaves_and_bytes(restored["opt_state"]) == _leaves_and_bytes(state["opt_state"])
    assert jax.tree_util.tree_structure(restored["opt_state"]) == jax.tree_util.tree_structure(
        state["opt_state"]
    )
    end = _flat(result.params)
    assert end.keys() == start.keys()
    for key, value in start.items():
        if key.startswith(xtr.XTR_PARAMS):
            assert np.abs(end[key] - value).max() > 1e-4, key  # trained
        else:
            np.testing.assert_array_equal(end[key], value, err_msg=key)  # bit-identical
    # A plain monoT5 model directory with an XTR layer, re-ranking exactly as the ranker.
    with open(os.path.join(ranker_dir, "rankt5.json")) as handle:
        before = json.load(handle)
    with open(model_dir / "rankt5.json") as handle:
        after = json.load(handle)
    assert after == dict(before, t5=dict(before["t5"], xtr_dim=32))
    docs = ["alpha beta gamma", "delta", "a much longer document " * 5]
    old = Ranker.load(ranker_dir, max_length=32).score("some query", docs)
    new = Ranker.load(model_dir, max_length=32)
    assert new.model.config.xtr_dim == 32
    np.testing.assert_array_equal(new.score("some query", docs), old)  # bit-equal


def test_msmarco_ur2n_gin_builds_the_papers_setting(data):
    import gin
    from rankt5_jax.training import gin_flags

    config = os.path.join(gin_flags.config_dir(), "experiments", "msmarco_ur2n.gin")
    for path in gin_flags.search_paths():
        gin.add_config_file_search_path(path)
    bindings = [
        "MODEL_DIR = '/unused'",
        f"VOCAB = '{data['vocab']}'",
        f"MSMARCO_DATA_DIR = '{data['records']}'",
        "VARIANT = 'monot5'",
    ]
    try:
        gin.parse_config_files_and_bindings([config], bindings, finalize_config=False)
        model = xtr.make_xtr_model()
        task = tasks_lib.register_xtr_task()
        settings = {
            name: gin.query_parameter(f"%{name}")
            for name in ("LEARNING_RATE", "BATCH_SIZE", "TRAIN_STEPS", "TASK_FEATURE_LENGTHS")
        }
    finally:
        gin.clear_config()
    assert model.variant == "monot5" and model.k_train == 52
    config_t5 = model.config
    assert (config_t5.xtr_dim, config_t5.emb_dim, config_t5.num_encoder_layers) == (128, 768, 12)
    assert tasks_lib.is_xtr_task(task)
    assert settings == {
        "LEARNING_RATE": 1e-3,
        "BATCH_SIZE": 24,
        "TRAIN_STEPS": 50000,
        "TASK_FEATURE_LENGTHS": {"inputs": 128, "queries": 32},
    }
