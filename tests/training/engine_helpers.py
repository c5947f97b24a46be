"""What the engine tests (test_engine*.py) share: in-process training of a tiny model on the
session's smoke lists, a params comparison, and `python -m rankt5_jax` as a subprocess.

The engine tests are three files by theme (meshes; steps, resume and checkpoints; the CLI) so that
`make test`'s two workers (`--dist loadfile`: a whole file to one worker) share them."""

import os
import subprocess
import sys

import flax
import jax
import numpy as np

from rankt5_jax.modeling.partitioning import Partitioner
from rankt5_jax.training import optimizers, setup
from rankt5_jax.training import train as train_lib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LENGTHS = {"inputs": 32, "targets": 1}


def tiny_model(vocab_path, variant="encdec"):
    """`experiments/smoke_cpu.gin`'s model: tiny, float32, no dropout, listwise softmax."""
    return setup.make_model(
        variant=variant,
        size="tiny",
        vocab_path=vocab_path,
        dropout_rate=0.0,
        dtype="float32",
        loss="softmax",
    )


def train(
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
    model = tiny_model(data["vocab"], variant)
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


def assert_params_close(a, b, atol):
    flat_a = flax.traverse_util.flatten_dict(a)
    flat_b = flax.traverse_util.flatten_dict(b)
    assert flat_a.keys() == flat_b.keys()
    for key in flat_a:
        np.testing.assert_allclose(
            np.asarray(flat_a[key]), np.asarray(flat_b[key]), atol=atol, err_msg="/".join(key)
        )


def cli(*args, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "rankt5_jax", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        **kwargs,
    )
