"""Ranker: loading from HF and T5X layouts, scoring invariance, template and truncation."""

import json
import os

import flax
import jax
import numpy as np
import pytest
import tensorstore as ts

from rankt5_jax import Ranker
from rankt5_jax.checkpoints import formats as ckpt_formats
from rankt5_jax.checkpoints import t5x_checkpoints
from rankt5_jax.data.vocab import EOS_ID, InputTemplate
from rankt5_jax.errors import CheckpointError, ConfigError
from rankt5_jax.modeling.models import RankT5EncDec
from rankt5_jax.modeling.network import get_config


@pytest.fixture(scope="module")
def encdec_dir(tmp_path_factory, spm_path, vocab):
    """A Hugging Face-layout RankT5-EncDec directory with random weights and our vocabulary."""
    config = get_config("tiny", vocab_size=384)
    model = RankT5EncDec(config, score_token_id=vocab.token_id("<extra_id_10>"))
    params = model.get_initial_variables(
        jax.random.PRNGKey(0), {"encoder_input_tokens": (1, 1, 8)}
    )["params"]
    out = str(tmp_path_factory.mktemp("hf") / "model")
    ckpt_formats.save_hf(
        out, config, jax.tree_util.tree_map(np.asarray, params), "encdec", spm_path
    )
    return out


DOCS = [
    "bako dite fuma",
    "a much longer document " * 30,
    "",
    "lemo rasi tuvo kezi",
    "x",
] * 7


def test_score_is_independent_of_batch_size_and_order(encdec_dir):
    query = "fuma lemo"
    reference = Ranker.load(encdec_dir, batch_size=1).score(query, DOCS)
    assert reference.dtype == np.float32 and reference.shape == (len(DOCS),)
    for batch_size, batch_tokens in [(3, None), (8, None), (64, None), (64, 0), (64, 100)]:
        ranker = Ranker.load(encdec_dir, batch_size=batch_size, batch_tokens=batch_tokens)
        np.testing.assert_allclose(ranker.score(query, DOCS), reference, atol=1e-5)
    perm = np.random.default_rng(0).permutation(len(DOCS))
    permuted = Ranker.load(encdec_dir, batch_size=4).score(query, [DOCS[i] for i in perm])
    np.testing.assert_allclose(permuted, reference[perm], atol=1e-5)
    # Distinct documents get distinct scores (no row is scored twice by mistake).
    assert len(np.unique(np.round(reference[:5], 5))) == 5


@pytest.mark.parametrize(
    "batch_size, batch_tokens, devices", [(32, 0, 1), (64, 512, 1), (64, 512, 4), (8, 2048, 1)]
)
def test_token_budget_batches(batch_size, batch_tokens, devices):
    # Every pair once, sorted by length; a bucket always gets the same rows,
    # min(batch_size, batch_tokens // bucket) as a multiple of the data axis; each batch takes
    # as many pairs as fit, so adding the next pair would not fit.
    from rankt5_jax.inference.ranker import default_batch_tokens
    from rankt5_jax.modeling.partitioning import Partitioner

    model = RankT5EncDec(get_config("tiny", vocab_size=384), score_token_id=300)
    params = model.get_initial_variables(
        jax.random.PRNGKey(0), {"encoder_input_tokens": (1, 1, 8)}
    )["params"]
    partitioner = Partitioner(devices=jax.devices()[:devices]) if devices > 1 else None
    ranker = Ranker(
        model,
        params,
        None,
        max_length=200,
        batch_size=batch_size,
        batch_tokens=batch_tokens,
        partitioner=partitioner,
    )
    rng = np.random.default_rng(0)
    sequences = [[5] * int(n) + [EOS_ID] for n in rng.integers(0, 199, size=300)]
    lengths = np.array([len(s) for s in sequences])
    batches = list(ranker.batches(sequences))
    seen = np.concatenate([indices for indices, _ in batches])
    assert sorted(seen.tolist()) == list(range(len(sequences)))
    assert np.all(np.diff(lengths[seen]) >= 0)

    def bucket_of(length):
        return next(b for b in ranker.buckets if b >= length)

    rows_of, done = {}, 0
    for indices, tokens in batches:
        rows, bucket = tokens.shape
        assert rows_of.setdefault(bucket, rows) == rows and rows % devices == 0
        assert len(indices) <= rows <= batch_size and lengths[indices].max() <= bucket
        if batch_tokens:
            fit = min(batch_size, batch_tokens // bucket) // devices * devices
            assert rows == max(devices, fit)
        else:
            assert rows == batch_size
        for row, index in enumerate(indices):
            np.testing.assert_array_equal(tokens[row, : lengths[index]], sequences[index])
            assert not tokens[row, lengths[index] :].any()
        assert not tokens[len(indices) :].any()
        done += len(indices)
        if done < len(seen):  # the next pair would not have fitted
            next_rows = ranker.rows(bucket_of(lengths[seen[done]]))
            assert len(indices) == batch_size or len(indices) + 1 > next_rows
    if batch_tokens == 512:
        assert len(rows_of) > 3 and len(set(rows_of.values())) > 1
    if devices > 1:  # sharded rows score as one device does (short pairs: few compilations)
        short = [s[:12] for s in sequences[:40]]
        single = Ranker(model, params, None, max_length=200, batch_size=64, batch_tokens=512)
        np.testing.assert_allclose(
            ranker.score_tokens(short), single.score_tokens(short), atol=1e-5
        )
    assert default_batch_tokens() == 2048  # on CPU
    with pytest.raises(ConfigError, match="max_length"):
        list(ranker.batches([[5] * 201]))


@pytest.mark.parametrize("max_length", [64, 200, 512, 1024])
def test_bucket_padding_is_bounded(max_length):
    from rankt5_jax.inference.ranker import bucket_lengths

    buckets = bucket_lengths(max_length)
    assert buckets == sorted(set(buckets)) and buckets[-1] == max_length
    for length in range(1, max_length + 1):
        bucket = next(b for b in buckets if b >= length)
        assert bucket - length < 16 or (length > 256 and bucket <= 1.125 * length + 8)
    assert len(bucket_lengths(512)) == 24


def test_template_keeps_query_and_eos(vocab):
    template = InputTemplate(vocab, max_length=40, max_query_length=20)
    tokens = template.encode_pairs("fuma lemo", ["bako dite " * 40])[0]
    assert len(tokens) == 40 and tokens[-1] == EOS_ID
    text = vocab.decode(tokens)
    assert text.startswith("Query: fuma lemo Document: bako dite")
    full = vocab.encode("Query: fuma lemo Document: bako dite")
    assert tokens[: len(full)] == full  # token-level template == encoding the whole text
    long_query = template.encode_pairs("fuma " * 50, ["bako"])[0]
    assert len(long_query) <= 40 and long_query[-1] == EOS_ID
    assert "Document: bako" in vocab.decode(long_query)


def test_extra_id_lookup(vocab):
    assert vocab.token_id("<extra_id_0>") == vocab.size - 1
    assert vocab.token_id("<extra_id_10>") == vocab.size - 11
    assert vocab.token_id("<extra_id_99>") == vocab.base_size
    with pytest.raises(ConfigError):
        vocab.token_id("<extra_id_100>")


def test_true_is_the_word_piece_even_where_a_word_internal_piece_exists(tmp_path):
    """T5's vocabulary has `▁true` (1176, what monoT5 emits); a vocabulary that also holds a
    word-internal piece `true` must still give monoT5 and FiT5 the `▁true` id."""
    import sentencepiece as spm

    from rankt5_jax.data.vocab import Vocabulary

    text = tmp_path / "text.txt"
    text.write_text("the true answer is untrue or false\nlorem ipsum dolor sit amet\n" * 50)
    spm.SentencePieceTrainer.train(
        input=str(text), model_prefix=str(tmp_path / "sp"), vocab_size=40, pad_id=0, eos_id=1,
        unk_id=2, bos_id=-1, minloglevel=2, hard_vocab_limit=False,
        user_defined_symbols=["true", "\u2581true"],
    )  # fmt: skip
    vocab = Vocabulary(tmp_path / "sp.model")
    assert vocab.token_id("true") == vocab.token_id("\u2581true") == vocab.encode("true")[0]
    assert vocab.token_id("true") != vocab._sp.PieceToId("true")


def test_load_errors(tmp_path, encdec_dir):
    with pytest.raises(CheckpointError, match="not found"):
        Ranker.load(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="holds no checkpoint") as info:
        Ranker.load(empty)
    assert "spiece" not in str(info.value)  # the folder is empty: the vocabulary is not the issue
    no_vocab = tmp_path / "no_vocab"
    no_vocab.mkdir()
    (no_vocab / "config.json").write_bytes(
        open(os.path.join(encdec_dir, "config.json"), "rb").read()
    )
    with pytest.raises(CheckpointError, match="spiece.model.*--vocab"):
        Ranker.load(no_vocab)
    with pytest.raises(CheckpointError, match="lacks"):
        Ranker.load(encdec_dir, variant="enc")
    bad = tmp_path / "trunc"
    bad.mkdir()
    for name in ("config.json", "spiece.model"):
        (bad / name).write_bytes(open(os.path.join(encdec_dir, name), "rb").read())
    data = open(os.path.join(encdec_dir, "model.safetensors"), "rb").read()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        Ranker.load(bad)


def _write_t5x_legacy(ckpt_dir, params):
    """Writes params as a legacy T5X checkpoint: msgpack `checkpoint` + one zarr dir per array."""
    os.makedirs(ckpt_dir)
    flat = flax.traverse_util.flatten_dict(params)
    tree = {}
    for path, value in flat.items():
        name = ".".join(("target",) + path)
        value = np.asarray(value, np.float32)
        spec = {
            "driver": "zarr",
            "dtype": "float32",
            "kvstore": {"driver": "file", "path": name},
            "metadata": {
                "shape": list(value.shape),
                "chunks": list(value.shape),
                "compressor": {"id": "gzip"},
            },
        }
        absolute = json.loads(json.dumps(spec))
        absolute["kvstore"]["path"] = os.path.join(ckpt_dir, name)
        store = ts.open(absolute, create=True, open=True).result()
        store.write(value).result()
        node = tree.setdefault("target", {})
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = spec
    contents = {"version": 3, "optimizer": {"target": tree["target"], "state": {"step": 7}}}
    with open(os.path.join(ckpt_dir, "checkpoint"), "wb") as handle:
        handle.write(flax.serialization.msgpack_serialize(contents))


def test_t5x_legacy_checkpoint_scores_like_source(tmp_path, encdec_dir, spm_path):
    config, params, _ = ckpt_formats.load_hf(encdec_dir)
    ckpt = str(tmp_path / "checkpoint_7")
    _write_t5x_legacy(ckpt, params)
    restored = t5x_checkpoints.load_t5x_legacy(ckpt)
    flat_a = flax.traverse_util.flatten_dict(params)
    flat_b = flax.traverse_util.flatten_dict(restored)
    assert flat_a.keys() == flat_b.keys()
    for key in flat_a:
        np.testing.assert_array_equal(flat_a[key], flat_b[key])
    inferred = ckpt_formats.infer_config(restored)
    assert inferred.num_encoder_layers == config.num_encoder_layers
    assert inferred.mlp_activations == ("relu",) and inferred.logits_via_embedding
    query, docs = "fuma", ["bako dite", "lemo rasi tuvo"]
    a = Ranker.load(ckpt, vocab=spm_path).score(query, docs)
    b = Ranker.load(encdec_dir).score(query, docs)
    np.testing.assert_allclose(a, b, atol=1e-6)
    with pytest.raises(CheckpointError, match="spiece.model"):
        Ranker.load(ckpt)


def test_convert_t5x_to_hf_cli(tmp_path, encdec_dir, spm_path):
    import subprocess
    import sys

    config, params, _ = ckpt_formats.load_hf(encdec_dir)
    ckpt = str(tmp_path / "checkpoint_3")
    _write_t5x_legacy(ckpt, params)
    out = tmp_path / "hf_out"
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rankt5_jax",
            "convert",
            "--from",
            "t5x",
            "--input",
            ckpt,
            "--output",
            str(out),
            "--variant",
            "encdec",
            "--vocab",
            spm_path,
        ],
        capture_output=True,
        text=True,
        cwd=repo,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    docs = ["bako dite", "lemo"]
    np.testing.assert_allclose(
        Ranker.load(out).score("fuma", docs), Ranker.load(encdec_dir).score("fuma", docs), atol=1e-6
    )
