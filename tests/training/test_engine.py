"""Engine on 8 fake CPU devices: sharded training equals one device's, on several meshes."""

import jax
import numpy as np
import pytest
from engine_helpers import assert_params_close, train

from rankt5_jax.modeling.partitioning import Partitioner
from rankt5_jax.training import setup


@pytest.fixture(scope="module")
def data(smoke_lists):
    return smoke_lists  # 48 queries, lists of 6 from a BM25 top 12 (tests/conftest.py)


def test_eight_fake_devices():
    assert len(jax.devices()) == 8


@pytest.mark.parametrize("variant", ["encdec", "enc"])
def test_sharded_training_equals_single_device(data, tmp_path, variant):
    # SGD: an adaptive optimizer turns float reassociation noise in near-zero gradients into
    # full-size updates of random sign, which says nothing about the partitioning.
    # One checkpoint per run (the last step's): what is compared is the params trained.
    sgd = dict(optimizer="sgd", lr=0.05, checkpoint_period=3)
    single = train(
        data, tmp_path / "single", variant, 3, Partitioner(devices=jax.devices()[:1]), **sgd
    )
    initial = train(data, tmp_path / "init", variant, 0, Partitioner(devices=jax.devices()[:1]))
    moved = max(
        float(np.abs(np.asarray(a) - np.asarray(b)).max())
        for a, b in zip(
            jax.tree_util.tree_leaves(single.params), jax.tree_util.tree_leaves(initial.params)
        )
    )
    assert single.step == 3 and moved > 1e-3  # training changed the params
    for data_axis, model_axis, dims in [(4, 2, 1), (2, 4, 1), (4, 2, 2), (2, 4, 2)]:
        partitioner = Partitioner(data_axis, model_axis, parameter_partitioning_dims=dims)
        out = train(
            data, tmp_path / f"m{data_axis}x{model_axis}_{dims}", variant, 3, partitioner, **sgd
        )
        assert_params_close(single.params, out.params, atol=1e-5)
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
