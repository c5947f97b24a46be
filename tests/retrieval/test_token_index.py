"""The token index: layout, streaming in chunks, shards, compression, and kill-and-resume."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from rankt5_jax.data import synthetic
from rankt5_jax.errors import ConfigError, InputFormatError
from rankt5_jax.retrieval import token_index, xtr_encoder

SETTINGS = token_index.IndexSettings(chunk_passages=64, shard_passages=200, kmeans_iterations=6)
BUILD = """
import sys
from rankt5_jax.data.vocab import Vocabulary
from rankt5_jax.retrieval import token_index, xtr_encoder
encoder = xtr_encoder.table_encoder(Vocabulary(sys.argv[1]), dim=16, max_length=48)
settings = token_index.IndexSettings(chunk_passages=64, shard_passages=200, kmeans_iterations=6)
token_index.build_index(sys.argv[2], sys.argv[3], encoder, settings, progress=False)
"""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """480 generated passages with titles (BEIR jsonl)."""
    collection = synthetic.make_collection(num_queries=40, seed=3, titles=True)
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    with open(path, "w") as handle:
        for docid, doc in collection["corpus"].items():
            handle.write(json.dumps({"_id": docid, **doc}) + "\n")
    return str(path), collection


@pytest.fixture(scope="module")
def encoder(vocab):
    return xtr_encoder.table_encoder(vocab, dim=16, max_length=48)


@pytest.fixture(scope="module")
def built(corpus, encoder, tmp_path_factory):
    index_dir = str(tmp_path_factory.mktemp("index") / "idx")
    token_index.build_index(corpus[0], index_dir, encoder, SETTINGS, progress=False)
    return index_dir


def _files(folder):
    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as handle:
                found[os.path.relpath(path, folder)] = handle.read()
    return found


def test_layout_holds_every_token_of_every_document(corpus, encoder, built):
    path, collection = corpus
    info = token_index.read_index_info(built)
    docs = list(collection["corpus"].items())
    assert info["num_shards"] == 3 and info["corpus"]["passages"] == len(docs) == 480
    assert info["settings"]["exact"] and info["dim"] == 16
    expected = encoder.encode(
        encoder.tokenize_documents([d["title"] for _, d in docs], [d["text"] for _, d in docs])
    )
    quantizer = __import__("faiss").read_index(os.path.join(built, token_index.QUANTIZER_FILE))
    nlist = info["settings"]["nlist"]
    for shard in range(3):
        folder = token_index.shard_dir(built, shard)
        assert sorted(os.listdir(folder)) == [
            "codes.npy",
            "doc_ids.txt",
            "doc_index.npy",
            "list_offsets.npy",
            "shard.json",
            "vectors.npy",
        ]
        ids = open(os.path.join(folder, "doc_ids.txt")).read().split()
        part = docs[shard * 200 : (shard + 1) * 200]
        assert ids == [docid for docid, _ in part]  # corpus order, padding excluded below
        vectors = np.load(os.path.join(folder, "vectors.npy"))
        doc_index = np.load(os.path.join(folder, "doc_index.npy"))
        offsets = np.load(os.path.join(folder, "list_offsets.npy"))
        codes = np.load(os.path.join(folder, "codes.npy"))
        assert len(vectors) == len(doc_index) == len(codes) == offsets[-1]
        assert offsets.shape == (nlist + 1,) and np.all(np.diff(offsets) >= 0)
        assert doc_index.dtype == np.int32 and codes.dtype == np.uint8
        for local, (_, _) in enumerate(part):  # each document's tokens, as the encoder gives them
            mine = vectors[doc_index == local]
            want = expected[shard * 200 + local]
            assert len(mine) == len(want) > 0
            key = lambda rows: rows[np.lexsort(rows.T[::-1])]  # noqa: E731
            np.testing.assert_array_equal(key(mine), key(want))
        # Grouped by inverted list: each row sits in the list the quantizer assigns it.
        _, assigned = quantizer.quantizer.search(vectors, 1)
        lists = np.repeat(np.arange(nlist), np.diff(offsets))
        assert np.mean(assigned[:, 0] == lists) > 0.99  # ties of equal centroids aside
    stats = token_index.index_stats(built)
    tokens = sum(len(e) for e in expected)
    assert stats["tokens"] == tokens and stats["flat_bytes_per_token"] == 64
    assert stats["codec"] == "ivfsq8"  # the default: 8 bits per dimension
    assert stats["code_bytes_per_token"] == pytest.approx(16.0, rel=0.01)


def test_corpus_streams_in_chunks(corpus, vocab, tmp_path):
    """Never more than a chunk of passages goes to the encoder at once (after training)."""
    seen = []
    inner = xtr_encoder.table_encoder(vocab, dim=16, max_length=48)

    class Recording(xtr_encoder.TokenEncoder):
        def encode(self, sequences):
            seen.append(len(sequences))
            return inner.encode(sequences)

    recording = Recording(inner.encode_fn, 16, vocab, max_length=48, fingerprint={"r": 1})
    settings = token_index.IndexSettings(
        chunk_passages=50, shard_passages=200, train_passages=100, kmeans_iterations=6
    )
    token_index.build_index(corpus[0], str(tmp_path / "idx"), recording, settings, progress=False)
    training, chunks = seen[:2], seen[2:]
    assert training == [50, 50] and max(chunks) == 50
    assert sum(chunks) == 480 and len(chunks) == 4 + 4 + 2  # shards of 200, 200 and 80


def test_kill_and_resume_gives_an_identical_index(corpus, vocab, built, tmp_path):
    """SIGKILL inside a chunk (its bytes appended, not recorded), then inside a shard's
    finalization, then a plain rerun: every file equals the uninterrupted build's."""
    index_dir = str(tmp_path / "idx")
    command = [sys.executable, "-c", BUILD, vocab.path, corpus[0], index_dir]
    env = dict(os.environ, **{token_index.FAULT_ENV: "chunk:6"})
    killed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    shard1 = token_index.shard_dir(index_dir, 1)
    progress = json.load(open(os.path.join(shard1, token_index.PROGRESS_FILE)))
    assert progress["chunks"] == 1 and progress["passages"] == 64  # shard 0: 4 chunks, then 1
    recorded = progress["bytes"]["codes.bin"]
    assert os.path.getsize(os.path.join(shard1, "codes.bin")) > recorded  # the killed chunk's
    assert os.path.isfile(os.path.join(token_index.shard_dir(index_dir, 0), "shard.json"))

    env[token_index.FAULT_ENV] = "finalize:1"  # shard 1's finalization, codes.npy in place
    killed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert os.path.isfile(os.path.join(shard1, "codes.npy"))
    assert not os.path.isfile(os.path.join(shard1, "shard.json"))

    del env[token_index.FAULT_ENV]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    resumed, reference = _files(index_dir), _files(built)
    assert sorted(resumed) == sorted(reference)
    different = [name for name in reference if resumed[name] != reference[name]]
    assert not different


def test_rerun_of_a_complete_index_changes_nothing(corpus, encoder, built):
    before = _files(built)
    token_index.build_index(corpus[0], built, encoder, SETTINGS, progress=False)
    assert _files(built) == before


def test_other_settings_or_encoder_are_refused(corpus, vocab, encoder, built):
    other = token_index.IndexSettings(chunk_passages=32, shard_passages=200, kmeans_iterations=6)
    with pytest.raises(ConfigError, match="other settings"):
        token_index.build_index(corpus[0], built, encoder, other, progress=False)
    reseeded = xtr_encoder.table_encoder(vocab, dim=16, max_length=48, seed=1)
    with pytest.raises(ConfigError, match="another encoder"):
        token_index.build_index(corpus[0], built, reseeded, SETTINGS, progress=False)


def test_hosts_build_their_own_shards(corpus, encoder, built, tmp_path):
    """Host 1 of 2 builds shard 1 only (after the compression is trained once); host 0 then
    the others: the same files as a one-host build."""
    index_dir = str(tmp_path / "idx")
    token_index.build_index(
        corpus[0], index_dir, encoder, SETTINGS, progress=False, train_only=True
    )
    with pytest.raises(ConfigError, match="unfinished"):
        token_index.read_index_info(index_dir)
    token_index.build_index(
        corpus[0], index_dir, encoder, SETTINGS, host_id=1, num_hosts=2, progress=False
    )
    assert [
        os.path.isfile(os.path.join(token_index.shard_dir(index_dir, s), "shard.json"))
        for s in range(3)
    ] == [False, True, False]
    token_index.build_index(
        corpus[0], index_dir, encoder, SETTINGS, host_id=0, num_hosts=2, progress=False
    )
    assert _files(index_dir) == _files(built)


def test_malformed_corpus_line_is_named(vocab, encoder, tmp_path):
    path = tmp_path / "corpus.tsv"
    path.write_text("d1\tsome text here\nd2 no tab at all\n")
    with pytest.raises(InputFormatError, match=r"corpus.tsv:2: wrong column count"):
        token_index.build_index(str(path), str(tmp_path / "idx"), encoder, progress=False)


def test_changed_corpus_is_refused(encoder, tmp_path):
    path = tmp_path / "corpus.tsv"
    path.write_text("".join(f"d{i}\tword{i % 7} text {i}\n" for i in range(60)))
    settings = token_index.IndexSettings(chunk_passages=16, shard_passages=40, kmeans_iterations=6)
    index_dir = str(tmp_path / "idx")
    token_index.build_index(
        str(path), index_dir, encoder, settings, progress=False, train_only=True
    )
    with open(path, "a") as handle:
        handle.write("d60\tone more\n")
    with pytest.raises(ConfigError, match="another corpus"):
        token_index.build_index(str(path), index_dir, encoder, settings, progress=False)


def test_cached_encoder_encodes_each_distinct_sequence_once(encoder):
    """`CachedEncoder` returns the inner encoder's vectors, in order, and asks it only for
    sequences it has not seen."""
    asked = []

    class Counting:
        dim, fingerprint = encoder.dim, encoder.fingerprint

        def encode(self, sequences):
            asked.extend(tuple(s) for s in sequences)
            return encoder.encode(sequences)

    cached = xtr_encoder.CachedEncoder(Counting())
    sequences = [[5, 6, 7, 1], [8, 9, 1], [5, 6, 7, 1]]
    first = cached.encode(sequences)
    assert sorted(asked) == sorted({(5, 6, 7, 1), (8, 9, 1)})
    again = cached.encode([[8, 9, 1], [10, 1]])
    assert asked[-1] == (10, 1) and len(asked) == 3
    direct = encoder.encode(sequences + [[10, 1]])
    for got, want in zip(first + again[1:], direct):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(again[0], first[1])
