"""The FiT5 authors' PyTorch checkpoints: our loader and network against a transcription of their
forward pass (github.com/OpenMatch/FiT5, src/t5/t5Model_v10.py) over transformers' T5 blocks, on
tiny random float32 weights saved in their state-dict naming."""

import inspect
import os
import subprocess
import sys

import flax
import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

from transformers.models.t5 import modeling_t5  # noqa: E402

from rankt5_jax.checkpoints import fit5, loading  # noqa: E402
from rankt5_jax.errors import CheckpointError  # noqa: E402
from rankt5_jax.modeling import registry  # noqa: E402
from rankt5_jax.modeling.network import Transformer  # noqa: E402

VOCAB = 384
LAYERS, DECODER_LAYERS, GLOBAL = 3, 2, 2


class AuthorsFiT5(torch.nn.Module):
    """The authors' model, transcribed: a Hugging Face `T5Model`, one `T5LayerSelfAttention` per
    global layer (`encoder.project_global.{k}`, after block `L - G + k`) and `dense`."""

    def __init__(self, config, num_global):
        super().__init__()
        self.t5 = transformers.T5Model(config)
        self.project_global = torch.nn.ModuleList(
            modeling_t5.T5LayerSelfAttention(config) for _ in range(num_global)
        )
        self.dense = torch.nn.Linear(config.d_model, config.vocab_size)

    def _call(self, module, *args, length, **kwargs):
        if "cache_position" in _BLOCK_ARGS:  # newer transformers (4.57) need it; old ones refuse it
            kwargs["cache_position"] = torch.arange(length)
        return module(*args, **kwargs)

    def encode(self, ids, mask):
        """One list: the `n` rows of `ids [n, T]` are the candidates (no list mask, as theirs)."""
        encoder = self.t5.encoder
        hidden = encoder.embed_tokens(ids)
        extended = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        bias = None
        n, length = ids.shape
        first_global = len(encoder.block) - len(self.project_global)
        for i, block in enumerate(encoder.block):
            outputs = self._call(
                block, hidden, attention_mask=extended, position_bias=bias, length=length
            )
            hidden, bias = outputs[0], outputs[1]
            if i >= first_global:
                x = hidden[:, 0, :].view(1, n, -1)
                block_out = self._call(self.project_global[i - first_global], x, length=n)[0]
                hidden = torch.cat([(x + block_out).view(n, 1, -1), hidden[:, 1:, :]], 1)
        return encoder.final_layer_norm(hidden)

    def forward(self, ids, mask):
        """-> (encoder output [n, T, d], dense logits [n, vocab]) of decoder step 0 from token 0."""
        encoded = self.encode(ids, mask)
        decoded = self.t5.decoder(
            input_ids=torch.zeros(ids.shape[0], 1, dtype=torch.long),
            encoder_hidden_states=encoded,
            encoder_attention_mask=mask,
        ).last_hidden_state
        return encoded, self.dense(decoded[:, 0])

    def authors_state_dict(self, prefix=""):
        """Their names: `t5.*` (T5Model's), `t5.encoder.project_global.{k}.*`, `dense.*`."""
        state = {f"{prefix}t5.{k}": v for k, v in self.t5.state_dict().items()}
        for k, layer in enumerate(self.project_global):
            for name, value in layer.state_dict().items():
                state[f"{prefix}t5.encoder.project_global.{k}.{name}"] = value
        for name, value in self.dense.state_dict().items():
            state[f"{prefix}dense.{name}"] = value
        return {k: v.detach().clone().contiguous() for k, v in state.items()}


_BLOCK_ARGS = set(inspect.signature(modeling_t5.T5Block.forward).parameters)


def _authors_model(proj="relu", seed=0):
    torch.manual_seed(seed)
    config = transformers.T5Config(
        vocab_size=VOCAB,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=LAYERS,
        num_decoder_layers=DECODER_LAYERS,
        num_heads=4,
        feed_forward_proj=proj,
        dropout_rate=0.0,
        use_cache=False,
    )
    model = AuthorsFiT5(config, GLOBAL).eval()
    with torch.no_grad():  # random, non-trivial norms, position biases and global layers
        for param in model.parameters():
            if param.ndim == 1 and param is not model.dense.bias:
                param.uniform_(0.5, 1.5)
        model.dense.bias.normal_(0.0, 1.0)
        for stack in (model.t5.encoder, model.t5.decoder):
            stack.block[0].layer[0].SelfAttention.relative_attention_bias.weight.normal_(0.0, 1.0)
        for layer in model.project_global:
            for name in "qkvo":
                getattr(layer.SelfAttention, name).weight.normal_(0.0, 0.3)
    return model


def _save_safetensors(model, path, prefix="t5."):
    state = model.authors_state_dict()
    for name in fit5._TIED_COPIES:  # safetensors refuses shared storage: drop the tied copies
        state.pop(f"t5.{name}")
    state = {k.replace("t5.", prefix, 1): v for k, v in state.items()}
    safetensors_torch.save_file(state, str(path))
    return str(path)


def _tokens(rng, lengths):
    tokens = np.zeros((len(lengths), max(lengths)), np.int64)
    for row, length in enumerate(lengths):
        tokens[row, : length - 1] = rng.integers(3, VOCAB - 100, size=length - 1)
        tokens[row, length - 1] = 1  # EOS
    return tokens


def _authors_outputs(model, tokens):
    with torch.no_grad():
        ids = torch.tensor(tokens)
        encoded, logits = model(ids, (ids > 0).long())
    return encoded.numpy(), logits.numpy()


def _log_p_true(logits, true_id, false_id):
    pair = logits[:, [true_id, false_id]].astype(np.float64)
    return pair[:, 0] - np.logaddexp(pair[:, 0], pair[:, 1])


LENGTHS = [9, 3, 17, 12, 1, 6]


@pytest.mark.parametrize("proj", ["relu", "gated-gelu"])
def test_encoder_and_scores_match_authors_forward(tmp_path, vocab, proj):
    authors = _authors_model(proj)
    path = _save_safetensors(authors, tmp_path / "fit5.safetensors")
    spec, params = fit5.load_fit5_spec(path, vocab)
    config = spec["t5"]
    assert spec["variant"] == "fit5" and config.num_global_layers == GLOBAL
    assert not config.logits_via_embedding and config.logits_bias
    assert config.mlp_activations == (("relu",) if proj == "relu" else ("gelu", "linear"))
    assert spec["features"]["mode"] == "fixed"
    assert (spec["features"]["low"], spec["features"]["high"]) == (165.0, 190.0)
    model = registry.build_model(spec)
    true_id, false_id = spec["true_token_id"], spec["false_token_id"]

    rng = np.random.default_rng(1)
    tokens = _tokens(rng, LENGTHS)
    expected_encoded, expected_logits = _authors_outputs(authors, tokens)
    list_mask = np.ones((1, len(tokens)), bool)
    encoded = model.module.apply(
        {"params": params}, tokens, True, False, list_mask, method=Transformer.encode
    )
    valid = tokens > 0
    np.testing.assert_allclose(
        np.asarray(encoded)[valid], expected_encoded[valid], atol=1e-4, rtol=1e-4
    )
    columns = model.columns(params, tokens, (true_id, false_id))
    np.testing.assert_allclose(
        np.asarray(columns), expected_logits[:, [true_id, false_id]], atol=1e-4, rtol=1e-4
    )
    # The authors rank by the raw "true" logit; the paper's normalised probability is the
    # log_prob score (the default of models trained here).
    assert spec["score"] == "true_logit"
    scores = model.score_lists(params, {"encoder_input_tokens": tokens[None]})[0]
    np.testing.assert_allclose(np.asarray(scores), expected_logits[:, true_id], atol=1e-4)
    log_prob = registry.build_model(dict(spec, score="log_prob"))
    scores = log_prob.score_lists(params, {"encoder_input_tokens": tokens[None]})[0]
    np.testing.assert_allclose(
        np.asarray(scores), _log_p_true(expected_logits, true_id, false_id), atol=1e-4
    )

    # Two lists in one call (with a padded candidate) = two calls of the authors' model.
    second = _tokens(rng, [4, 11, 7])
    both = np.zeros((2, len(tokens), tokens.shape[1]), np.int64)
    both[0] = tokens
    both[1, :3, : second.shape[1]] = second
    mask = np.zeros((2, len(tokens)), bool)
    mask[0], mask[1, :3] = True, True
    scores = np.asarray(model.score_lists(params, {"encoder_input_tokens": both, "mask": mask}))
    expected_second = _authors_outputs(authors, second)[1][:, true_id]
    np.testing.assert_allclose(scores[0], expected_logits[:, true_id], atol=1e-4)
    np.testing.assert_allclose(scores[1, :3], expected_second, atol=1e-4)


def test_global_layers_change_the_encoder(tmp_path, vocab):
    """Guards the comparison above: zeroing the global layers' output moves position 0."""
    authors = _authors_model()
    tokens = _tokens(np.random.default_rng(2), [5, 8, 3])
    expected, _ = _authors_outputs(authors, tokens)
    with torch.no_grad():
        for layer in authors.project_global:
            layer.SelfAttention.o.weight.zero_()
    plain, _ = _authors_outputs(authors, tokens)
    assert np.abs(expected[:, 0] - plain[:, 0]).max() > 1e-2


def test_prefixes_and_tied_copies_load(tmp_path, vocab):
    authors = _authors_model(seed=3)
    reference = fit5.load_fit5(_save_safetensors(authors, tmp_path / "plain.safetensors"))[1]
    ddp = fit5.load_fit5(
        _save_safetensors(authors, tmp_path / "ddp.safetensors", prefix="module.t5.")
    )[1]
    state = authors.authors_state_dict(prefix="module.")  # tied embed copies included
    torch.save(state, tmp_path / "fit5.bin")
    pickled = fit5.load_fit5(str(tmp_path / "fit5.bin"), allow_pickle=True)[1]
    expected = flax.traverse_util.flatten_dict(reference, sep="/")
    for other in (ddp, pickled):
        other = flax.traverse_util.flatten_dict(other, sep="/")
        assert other.keys() == expected.keys()
        for key, value in expected.items():
            np.testing.assert_array_equal(other[key], value)


def _error(path, **kwargs):
    with pytest.raises(CheckpointError) as info:
        fit5.load_fit5(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_clear_errors(tmp_path):
    authors = _authors_model(seed=4)
    state = authors.authors_state_dict()
    for name in fit5._TIED_COPIES:
        state.pop(f"t5.{name}")

    missing = dict(state)
    missing.pop("t5.encoder.project_global.1.SelfAttention.k.weight")
    path = tmp_path / "missing.safetensors"
    safetensors_torch.save_file(missing, str(path))
    message = _error(str(path))
    assert str(path) in message and "encoder.project_global.1.SelfAttention.k.weight" in message

    wrong = dict(state)
    wrong["t5.encoder.project_global.0.SelfAttention.v.weight"] = torch.zeros(16, 32)
    path = tmp_path / "shape.safetensors"
    safetensors_torch.save_file(wrong, str(path))
    message = _error(str(path))
    assert "encoder.project_global.0.SelfAttention.v.weight has shape (16, 32)" in message
    assert "expected (32, 32)" in message

    extra = dict(state, **{"t5.position_memory.weight": torch.zeros(32, 12)})
    path = tmp_path / "extra.safetensors"
    safetensors_torch.save_file(extra, str(path))
    assert "unexpected" in _error(str(path)) and "position_memory.weight" in _error(str(path))

    plain = {k: v for k, v in state.items() if "project_global" not in k}
    path = tmp_path / "plain.safetensors"
    safetensors_torch.save_file(plain, str(path))
    assert "no encoder.project_global" in _error(str(path))

    torch.save(state, tmp_path / "fit5.bin")
    message = _error(str(tmp_path / "fit5.bin"))
    assert "allow_pickle=True" in message and "--allow_pickle" in message

    # weights_only=True refuses pickled objects other than tensors and containers.
    torch.save({"dense.weight": torch.zeros(2, 2), "x": _Unsafe()}, tmp_path / "evil.bin")
    assert "weights_only" in _error(str(tmp_path / "evil.bin"), allow_pickle=True)


class _Unsafe:
    pass


def test_checkpoint_kind(tmp_path, spm_path):
    authors = _authors_model(seed=5)
    folder = tmp_path / "release"
    folder.mkdir()
    file = _save_safetensors(authors, folder / "fit5.safetensors")
    (folder / "config.json").write_text('{"model_type": "t5", "d_model": 32}')  # their --config
    assert loading.checkpoint_kind(file) == "fit5"
    assert loading.checkpoint_kind(str(folder)) == "fit5"
    hf_dir = tmp_path / "hf"  # a lone weights file without project_global stays Hugging Face
    hf_dir.mkdir()
    state = {k[3:]: v for k, v in authors.authors_state_dict().items() if "project_global" not in k}
    safetensors_torch.save_file(
        {k: v for k, v in state.items() if "embed_tokens" not in k},
        str(hf_dir / "model.safetensors"),
    )
    (hf_dir / "config.json").write_text('{"model_type": "t5"}')
    assert loading.checkpoint_kind(str(hf_dir)) == "hf"
    torch.save(authors.authors_state_dict(prefix="module."), tmp_path / "step-1500.bin")
    assert loading.checkpoint_kind(str(tmp_path / "step-1500.bin")) == "fit5"
    with pytest.raises(CheckpointError, match="allow_pickle"):
        loading.load_checkpoint(str(tmp_path / "step-1500.bin"), vocab=spm_path)
    spec, _, _ = loading.load_checkpoint(
        str(tmp_path / "step-1500.bin"), vocab=spm_path, allow_pickle=True
    )
    assert spec["variant"] == "fit5"
    with pytest.raises(CheckpointError, match="not 'monot5'"):
        loading.load_checkpoint(str(folder), variant="monot5", vocab=spm_path)


def test_convert_then_ranker_load_scores_equal(tmp_path, spm_path, capsys):
    from rankt5_jax import cli
    from rankt5_jax.inference.ranker import Ranker

    authors = _authors_model(seed=6)
    torch.save(authors.authors_state_dict(prefix="module."), tmp_path / "fit5.bin")
    out = tmp_path / "converted"
    args = ["convert", "--from", "fit5", "--input", str(tmp_path / "fit5.bin")]
    args += ["--output", str(out), "--vocab", spm_path]
    assert cli.main(args) == 2  # a pickle file without the flag
    assert "--allow_pickle" in capsys.readouterr().err and not out.exists()
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    command = [sys.executable, "-m", "rankt5_jax", *args, "--allow_pickle"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=repo)
    assert done.returncode == 0, done.stderr[-2000:]

    query = "fuma"
    docs = ["bako dite", "lemo rasi tuvo", "true false", "dite"]
    titles = ["lemo", "", "bako", "rasi"]
    features = [170.0, 188.5, 150.0, 176.25]
    converted = Ranker.load(out)
    assert converted.model.features.mode == "fixed"
    a = converted.score(query, docs, features, titles)
    # The authors' transcription on the same token ids.
    tokens = converted.tokenize(query, docs, features, titles)
    batch = np.zeros((len(tokens), max(len(t) for t in tokens)), np.int64)
    for row, seq in enumerate(tokens):
        batch[row, : len(seq)] = seq
    _, logits = _authors_outputs(authors, batch)
    spec = converted.model.spec()
    assert tokens[0][0] == converted.vocab.size  # the authors' [CLS] (id 32100 with t5-base's)
    words = converted.vocab.encode("Query:") + converted.vocab.encode(query)
    assert tokens[0][1 : 1 + len(words)] == words
    np.testing.assert_allclose(a, logits[:, spec["true_token_id"]], atol=1e-4)
    # Loading the authors' file directly gives the same model: load_checkpoint (the .bin, with
    # the flag) and Ranker.load (a .safetensors, no flag needed).
    file = _save_safetensors(authors, tmp_path / "fit5.safetensors")
    direct = Ranker.load(file, vocab=spm_path)
    pickled = loading.load_checkpoint(
        str(tmp_path / "fit5.bin"), vocab=spm_path, allow_pickle=True
    )[1]
    assert direct.model.spec() == spec
    reference = flax.traverse_util.flatten_dict(jax.device_get(converted.params), sep="/")
    for params in (direct.params, pickled):
        flat = flax.traverse_util.flatten_dict(jax.device_get(params), sep="/")
        assert flat.keys() == reference.keys()
        for key, value in reference.items():
            np.testing.assert_array_equal(np.asarray(flat[key]), np.asarray(value))


def test_model_dirs_written_before_the_fit5_config_fields_still_resume(tmp_path, spm_path, vocab):
    """A spec without `num_global_layers`/`logits_bias` (written before they existed) is the
    same model; a different size is not."""
    import json

    from rankt5_jax.checkpoints import model_dir
    from rankt5_jax.errors import ConfigError
    from rankt5_jax.modeling.network import get_config

    config = get_config("tiny", vocab_size=512)
    spec = registry.make_spec("encdec", config, vocab)
    old = dict(spec, t5={k: v for k, v in config.to_dict().items()
                         if k not in ("num_global_layers", "logits_bias")})  # fmt: skip
    (tmp_path / model_dir.SPEC_FILE).write_text(json.dumps(old))
    model_dir.write_model_files(str(tmp_path), spec, spm_path)
    other = dict(spec, t5=config.replace(emb_dim=64))
    with pytest.raises(ConfigError, match="different model"):
        model_dir.write_model_files(str(tmp_path), other, spm_path)
