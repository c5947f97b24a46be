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
