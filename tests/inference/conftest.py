"""Fixtures of the inference tests: tiny random-weight model directories."""

import jax
import numpy as np
import pytest

from rankt5_jax.checkpoints.convert import write_params_model_dir
from rankt5_jax.modeling import registry
from rankt5_jax.modeling.network import get_config


@pytest.fixture(scope="session")
def tiny_model_dir(fit5_spm_path, fit5_vocab):
    """`write(variant, path)`: a tiny model directory of `variant` with random weights (seed 0)
    and the FiT5 test vocabulary (FiT5: two global layers, the run's scores as a per-query
    feature); -> `path`."""

    def write(variant: str, path: str) -> str:
        extra = {"num_global_layers": 2} if variant == "fit5" else {}
        spec = registry.make_spec(variant, get_config("tiny", vocab_size=512, **extra), fit5_vocab)
        if variant == "fit5":
            spec["features"] = {"mode": "per_query"}
        model = registry.build_model(spec)
        shapes = {"encoder_input_tokens": (1, 4, 8)}
        params = model.get_initial_variables(jax.random.PRNGKey(0), shapes)["params"]
        params = jax.tree_util.tree_map(np.asarray, params)
        write_params_model_dir(path, model.spec(), params, fit5_spm_path)
        return path

    return write
