"""Shared fixtures: a SentencePiece vocabulary trained at test time, tiny data, 8 CPU devices.

The test process has eight fake CPU devices for the mesh tests (`jax_num_cpu_devices`, set before
JAX initialises its backend). It is a JAX option of this process, not an `XLA_FLAGS` environment
variable, so the subprocesses the tests start (`rankt5 train`, `rankt5 rerank`, the benchmarks)
run on one CPU device: faster to compile and to step on a small machine. A test whose
subprocesses need a mesh sets `XLA_FLAGS=--xla_force_host_platform_device_count=N` for them
(tests/multiprocess does).
"""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One JAX compilation cache for the session, shared by this process (and pytest-xdist's workers)
# and every subprocess the tests start: the tests train and score the same tiny programs again
# and again (`rankt5 train` five times in the kill/resume test), and a compiled program read back
# is the program compiled (keyed by its HLO, devices, flags and JAX's version). A fresh folder per
# session, removed at its end; a JAX_COMPILATION_CACHE_DIR already set is used as it is.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _jax_cache = tempfile.mkdtemp(prefix="rankt5-tests-jax-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _jax_cache
    atexit.register(shutil.rmtree, _jax_cache, ignore_errors=True)
# Every program, however quick to compile: eager operations (a tiny model's init, op by op) are
# hundreds of small compilations that each process repeats (the two xdist workers, every
# `rankt5 train` subprocess). Measured on 2 busy cores: 7-8% less CPU time (tests/modeling +
# tests/inference with -n 2: 440 -> 410 s; three subprocess-heavy files: 163 -> 150 s).
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

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


# The smoke lists several test modules train on (tests/training): 48 generated queries, lists of
# 6 from a BM25 top 12. Written once per session; each module registers its seqio tasks again.
SMOKE_LISTS = dict(num_queries=48, dev_queries=8, top_k=12, vocab_size=300, list_size=6)


@pytest.fixture(scope="session")
def smoke_lists_dir(tmp_path_factory):
    from rankt5_jax.training import smoke

    folder = str(tmp_path_factory.mktemp("smoke_lists"))
    smoke.smoke_data(folder, **SMOKE_LISTS)
    return folder


@pytest.fixture(scope="module")
def smoke_lists(smoke_lists_dir):
    """`smoke.smoke_data`'s paths and task names for the session's smoke lists. The tasks are
    registered again for each module: a module in between may have registered tasks of the same
    names over other records."""
    from rankt5_jax.training import smoke

    return smoke.smoke_data(smoke_lists_dir, **SMOKE_LISTS)
