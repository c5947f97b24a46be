"""The shipped tiny pretrained ranker (`rankt5_jax.pretrained`, built by bench/pretrain_tiny.py):
it is the demo's model (`experiments/smoke_cpu.gin`'s spec), parameters only, with its
provenance; `smoke_data(vocab=...)` reads generated data through its vocabulary."""

import json
import os

import pytest
from engine_helpers import tiny_model

from rankt5_jax import pretrained
from rankt5_jax.checkpoints import loading
from rankt5_jax.data.vocab import Vocabulary
from rankt5_jax.errors import ConfigError
from rankt5_jax.training import smoke

SHIPPED = pretrained.TINY_PSEUDO_QUERY


def test_the_shipped_checkpoint_is_the_demo_model_with_its_provenance():
    spec, params, vocabulary = loading.load_checkpoint(SHIPPED)
    model = tiny_model(os.path.join(SHIPPED, "spiece.model"))
    assert spec == json.loads(json.dumps(model.spec()))
    assert vocabulary.base_size == 600 and vocabulary.pieces()[:3] == ["<pad>", "</s>", "<unk>"]
    # parameters only: nothing to resume, every array the model's
    assert os.listdir(os.path.join(SHIPPED, "checkpoints")) == ["0"]
    assert not os.path.exists(os.path.join(SHIPPED, "checkpoints", "0", "opt_state"))
    provenance = json.load(open(os.path.join(SHIPPED, "PROVENANCE.json")))
    assert provenance["script"] == "bench/pretrain_tiny.py"
    assert os.path.isfile(os.path.join(os.path.dirname(__file__), "..", "..", "bench",
                                       "pretrain_tiny.py"))  # fmt: skip
    assert provenance["pseudo_queries"] > 20000
    # its own task learnt: BM25's top 30 of held-out pseudo-queries (chance about 0.13)
    assert provenance["held_out_rr10_top30"] >= 0.9
    import flax

    assert len(flax.traverse_util.flatten_dict(params)) > 20


def test_smoke_data_reads_its_text_through_a_given_vocabulary(tmp_path):
    shipped = os.path.join(SHIPPED, "spiece.model")
    data = str(tmp_path / "data")
    info = smoke.smoke_data(data, num_queries=30, dev_queries=6, vocab=shipped)
    assert Vocabulary(info["vocab"]).pieces() == Vocabulary(shipped).pieces()
    stamp = os.path.getmtime(os.path.join(data, "train_queries.tsv"))
    # None takes the folder as written (the gin calls inside `rankt5 train`) ...
    assert smoke.smoke_data(data, num_queries=30, dev_queries=6)["vocab"] == info["vocab"]
    assert os.path.getmtime(os.path.join(data, "train_queries.tsv")) == stamp
    # ... another vocabulary rewrites it
    own = smoke.smoke_data(str(tmp_path / "own"), num_queries=30, dev_queries=6)["vocab"]
    assert Vocabulary(own).pieces() != Vocabulary(shipped).pieces()  # trained on 30 queries
    again = smoke.smoke_data(data, num_queries=30, dev_queries=6, vocab=own)
    assert Vocabulary(again["vocab"]).pieces() == Vocabulary(own).pieces()
    with pytest.raises(ConfigError, match="vocabulary not found"):
        smoke.smoke_data(str(tmp_path / "x"), num_queries=30, dev_queries=6, vocab="/no/such")


def test_pretrain_tiny_builds_a_loadable_checkpoint_with_its_provenance(tmp_path):
    """`make pretrained`'s script at a tiny size (240-query demo data, 3,000 passages, 30
    steps): the model directory it writes loads, holds the training's last parameters and the
    demo data's vocabulary, and its PROVENANCE.json fingerprints the pseudo-queries it wrote."""
    import hashlib
    import subprocess
    import sys

    import flax
    import numpy as np

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    work, out = tmp_path / "work", tmp_path / "pretrained"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    proc = subprocess.run(
        [sys.executable, "bench/pretrain_tiny.py", "--work_dir", str(work), "--output_dir",
         str(out), "--passages", "3000", "--train_steps", "30", "--num_queries", "240"],
        capture_output=True, text=True, cwd=repo, env=env, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    provenance = json.load(open(out / "PROVENANCE.json"))
    assert "--passages 3000" in provenance["commands"][0]
    assert "--gin.TRAIN_STEPS=30" in provenance["commands"][1]
    info = json.load(open(work / "pseudo_queries" / "smoke_data.json"))
    digest = hashlib.sha256()
    for split in ("train", "dev"):
        for key in ("queries", "qrels"):
            digest.update(open(info[split][key], "rb").read())
    assert provenance["pseudo_query_sha256"] == digest.hexdigest()
    assert provenance["pseudo_queries"] > 200  # 200 held out, the rest trained on
    assert 0.0 <= provenance["held_out_rr10_top30"] <= 1.0
    spec, params, _ = loading.load_checkpoint(str(out))
    assert spec["variant"] == "encdec" and os.listdir(out / "checkpoints") == ["0"]
    # the written parameters are the training's last step (30), optimizer state left out
    assert "done: step 30" in proc.stdout + proc.stderr
    _, latest, _ = loading.load_checkpoint(str(work / "model"))
    trained = flax.traverse_util.flatten_dict(params)
    last = flax.traverse_util.flatten_dict(latest)
    assert sorted(trained) == sorted(last)
    assert all(np.array_equal(np.asarray(trained[k]), np.asarray(last[k])) for k in trained)
    assert (
        Vocabulary(str(out / "spiece.model")).pieces()
        == Vocabulary(str(work / "demo_data" / "spiece.model")).pieces()
    )
