"""`TRAIN_STEPS=0` writes the initial model as step 0: `Ranker.load` and `rankt5 rerank
--checkpoint` read the untrained baseline users compare against."""

import os

import flax
import jax
import numpy as np

from rankt5_jax import Ranker, cli
from rankt5_jax.data import formats
from rankt5_jax.modeling.partitioning import Partitioner
from rankt5_jax.training import optimizers, setup
from rankt5_jax.training import train as train_lib


def test_zero_steps_write_the_initial_model_as_step_0(smoke_lists, tmp_path, capsys):
    data = smoke_lists
    model_dir = str(tmp_path / "model")
    model = setup.make_model(
        variant="encdec", size="tiny", vocab_path=data["vocab"], dropout_rate=0.0,
        dtype="float32", loss="softmax",
    )  # fmt: skip
    result = train_lib.train(
        model_dir=model_dir,
        model=model,
        vocab_path=data["vocab"],
        train_task=data["train_task"],
        train_steps=0,
        task_feature_lengths={"inputs": 32, "targets": 1},
        batch_size=8,
        partitioner=Partitioner(devices=jax.devices()[:1]),
        optimizer=optimizers.make_optimizer("adafactor", learning_rate=1e-3),
        progress=True,
    )
    assert result.step == 0
    printed = capsys.readouterr().out
    assert "wrote the initial model as step 0" in printed and "compiling" not in printed
    assert sorted(os.listdir(os.path.join(model_dir, "checkpoints"))) == ["0"]
    # The saved params are the initial ones (the same seed's init), and they score.
    ranker = Ranker.load(model_dir, max_length=32, batch_size=16)
    initial = flax.traverse_util.flatten_dict(result.params)
    loaded = flax.traverse_util.flatten_dict(jax.tree_util.tree_map(np.asarray, ranker.params))
    assert initial.keys() == loaded.keys()
    for key in initial:
        np.testing.assert_array_equal(np.asarray(initial[key]), loaded[key], err_msg=str(key))
    scores = ranker.score("a query", ["a passage", "another one", "a query"])
    assert scores.shape == (3,) and np.all(np.isfinite(scores)) and np.ptp(scores) > 0
    # rankt5 rerank --checkpoint reads it as any trained model directory.
    dev = data["dev"]
    output = str(tmp_path / "baseline.run")
    argv = ["rerank", "--checkpoint", model_dir, "--queries", dev["queries"], "--corpus"]
    argv += [dev["corpus"], "--run", dev["run"], "--output", output, "--max_length", "32"]
    assert cli.main(argv) == 0
    reranked, source = formats.read_run(output), formats.read_run(dev["run"])
    assert reranked.keys() == source.keys()
    assert all(set(reranked[q]) == set(source[q]) for q in source)
