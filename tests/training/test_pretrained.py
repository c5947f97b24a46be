"""The shipped tiny pretrained ranker (`rankt5_jax.pretrained`, built by bench/pretrain_tiny.py):
it is the demo's model (`experiments/smoke_cpu.gin`'s spec), parameters only, with its
provenance; `smoke_data(vocab=...)` reads generated data through its vocabulary."""

import json
import os

import pytest

from rankt5_jax import pretrained
from rankt5_jax.checkpoints import loading
from rankt5_jax.data.vocab import Vocabulary
from rankt5_jax.errors import ConfigError
from rankt5_jax.training import setup, smoke

SHIPPED = pretrained.TINY_PSEUDO_QUERY


def test_the_shipped_checkpoint_is_the_demo_model_with_its_provenance():
    spec, params, vocabulary = loading.load_checkpoint(SHIPPED)
    model = setup.make_model(
        variant="encdec",
        size="tiny",
        vocab_path=os.path.join(SHIPPED, "spiece.model"),
        dropout_rate=0.0,
        dtype="float32",
        loss="softmax",
    )  # smoke_cpu.gin's model
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
