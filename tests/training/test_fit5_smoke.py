"""FiT5's gin configs: the CPU smoke config trains a tiny FiT5 and learns; the MS MARCO configs
parse and give the model and the data the same feature settings."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import gin
from rankt5_jax.data import formats, prepare, synthetic, tasks_lib
from rankt5_jax.data.features import FeatureConfig
from rankt5_jax.retrieval import bm25
from rankt5_jax.training import gin_flags

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_smoke_cpu_fit5_gin_learns(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "rankt5_jax",
            "train",
            "--gin_file=experiments/smoke_cpu_fit5.gin",
            f"--gin.MODEL_DIR='{tmp_path / 'model'}'",
            f"--gin.DATA_DIR='{tmp_path / 'data'}'",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "train: fit5 model -> " in out.stdout and "task smoke_fit5_train" in out.stdout
    losses = [float(x) for x in re.findall(r"loss (\d+\.\d+)", out.stdout)]
    assert len(losses) == 15  # 150 steps, logged every 10
    assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:2]), losses
    with open(tmp_path / "model" / "rankt5.json") as handle:
        spec = json.load(handle)
    assert spec["variant"] == "fit5" and spec["t5"]["num_global_layers"] == 1
    assert FeatureConfig.from_dict(spec["features"]) == FeatureConfig(mode="per_query")
    # The data the model trained on: BM25 scores and titles in the records.
    with open(tmp_path / "data" / "smoke_data.json") as handle:
        info = json.load(handle)
    assert info["titles"] and info["fit5_vocab"]
    (shard, *_) = sorted(p for p in os.listdir(info["records"]) if p.startswith("train.tfrecord"))
    raw = next(iter(tf.data.TFRecordDataset(os.path.join(info["records"], shard))))
    feature = tf.train.Example.FromString(raw.numpy()).features.feature
    assert len(feature["cand_scores"].float_list.value) == len(feature["cand_ids"].bytes_list.value)
    assert any(feature["cand_titles"].bytes_list.value)
    # `rankt5 rerank` with the trained model writes a complete run of the dev queries (each
    # query's top 20 as one list, the BM25 scores as features); `rankt5 evaluate` reproduces
    # the metrics it printed.
    dev = info["dev"]
    reranked = str(tmp_path / "fit5.run")
    command = [sys.executable, "-m", "rankt5_jax"]
    done = subprocess.run(
        [*command, "rerank", "--checkpoint", str(tmp_path / "model"), "--queries",
         dev["queries"], "--corpus", dev["corpus"], "--run", dev["run"], "--output", reranked,
         "--qrels", dev["qrels"], "--top_k", "20", "--max_length", "80", "--json"],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    printed = json.loads(done.stdout.strip().splitlines()[-1])["reranked"]
    run = formats.read_run(reranked)
    source = formats.read_run(dev["run"])
    assert set(run) == set(source)
    assert all(len(run[q]) == min(20, len(source[q])) for q in source)
    done = subprocess.run(
        [*command, "evaluate", "--run", reranked, "--qrels", dev["qrels"], "--json"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    evaluated = json.loads(done.stdout.strip().splitlines()[-1])
    assert evaluated == pytest.approx(printed, abs=1e-9)


@pytest.fixture
def gin_config():
    for path in gin_flags.search_paths():
        gin.add_config_file_search_path(path)
    gin.clear_config()
    yield
    gin.clear_config()


def _parse(files, bindings):
    import rankt5_jax.data.tasks_lib  # noqa: F401  (registers the gin configurables)
    from rankt5_jax import tasks  # noqa: F401
    from rankt5_jax.training import setup, smoke, train  # noqa: F401

    macros = gin_flags.read_macros(files, gin_flags.search_paths())
    flags = gin_flags.Flags(files, [(name, value) for name, value in bindings.items()])
    gin_flags.check_flags(flags, macros)  # no unset macro, no unknown macro
    gin.parse_config_files_and_bindings(
        files, [f"{k} = {v}" for k, v in bindings.items()], finalize_config=False
    )


def test_smoke_fit5_gin_shares_its_features(gin_config, tmp_path):
    _parse(["experiments/smoke_cpu_fit5.gin"], {"MODEL_DIR": f"'{tmp_path}'"})
    features = gin.query_parameter("%FEATURES")
    assert features == {"mode": "per_query"}
    for binding in ("trainer.make_model.features", "smoke.smoke_data.features"):
        assert str(gin.query_parameter(binding)) == "%FEATURES"
    assert str(gin.query_parameter("smoke.smoke_data.negatives")) == "%NEGATIVES"


@pytest.mark.parametrize(
    "config,expected,steps,batch",
    [
        ("msmarco_fit5.gin", {"mode": "none"}, 400000, 16),
        ("msmarco_fit5_features.gin", {"mode": "fixed", "low": 165.0, "high": 190.0}, 1500, 256),
    ],
)
def test_msmarco_fit5_gins_give_model_and_task_the_same_features(
    gin_config, tmp_path, spm_path, config, expected, steps, batch
):
    """Parses the config (every macro set, every binding a real parameter), then builds its
    model and registers its training task over tiny records: one feature setting for both."""
    collection = synthetic.make_collection(num_queries=4, seed=1)
    run = bm25.bm25_run(collection["corpus"], collection["queries"], top_k=10)
    paths = synthetic.write_collection(str(tmp_path / "raw"), collection, run)
    records = str(tmp_path / "records")
    prepare.prepare(
        paths["queries"], paths["corpus"], paths["qrels"], paths["run"], records, verbose=False
    )
    _parse(
        [f"experiments/{config}"],
        {
            "MODEL_DIR": f"'{tmp_path / 'model'}'",
            "VOCAB": f"'{spm_path}'",
            "MSMARCO_DATA_DIR": f"'{records}'",
        },
    )
    assert gin.query_parameter("%TRAIN_STEPS") == steps
    assert gin.query_parameter("%BATCH_SIZE") == batch
    assert gin.query_parameter("%LEARNING_RATE") == 2e-5
    assert gin.query_parameter("%LIST_SIZE") == 100
    assert gin.query_parameter("%NEGATIVES") == "top"
    from rankt5_jax import tasks
    from rankt5_jax.training import setup

    model = setup.make_model()  # as gin configures it (T5 v1.0 base, not initialised)
    name = tasks.msmarco_passage()
    assert model.variant == "fit5" and model.config.num_global_layers == 3
    assert model.features == FeatureConfig.from_dict(expected)
    assert tasks_lib.task_features(name) == model.features
