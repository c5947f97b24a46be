"""Shared fixtures: a SentencePiece vocabulary trained at test time, tiny data, 8 CPU devices."""

import os

# Eight fake CPU devices for mesh tests; must be set before JAX initialises its backend.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

from rankt5_jax.data import synthetic  # noqa: E402


@pytest.fixture(scope="session")
def spm_path(tmp_path_factory):
    """A real SentencePiece model (T5 layout: pad 0, EOS 1, UNK 2) trained on generated text."""
    out = tmp_path_factory.mktemp("vocab")
    return synthetic.train_sentencepiece(str(out / "spiece"), vocab_size=300)


@pytest.fixture(scope="session")
def vocab(spm_path):
    from rankt5_jax.data.vocab import Vocabulary

    return Vocabulary(spm_path)


@pytest.fixture(scope="session")
def fit5_spm_path(tmp_path_factory):
    """A SentencePiece model that also knows FiT5's template words and the digits."""
    collection = synthetic.make_collection(num_queries=60, seed=2)
    words = "Query: Title: Feature: Passage: Relevant: " + " ".join(map(str, range(101)))
    collection["corpus"]["template"] = {"title": "", "text": words}
    out = tmp_path_factory.mktemp("fit5_vocab")
    return synthetic.train_sentencepiece(str(out / "spiece"), 300, collection)


@pytest.fixture(scope="session")
def fit5_vocab(fit5_spm_path):
    from rankt5_jax.data.vocab import Vocabulary

    return Vocabulary(fit5_spm_path)
