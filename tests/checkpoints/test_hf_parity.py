"""Our T5 against Hugging Face transformers' PyTorch T5 on the same weights (float32)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from rankt5_jax.checkpoints import formats as ckpt_formats  # noqa: E402
from rankt5_jax.modeling.models import RankT5Enc, RankT5EncDec  # noqa: E402

VOCAB = 384
SCORE_TOKEN = VOCAB - 1 - 10  # where <extra_id_10> sits in a vocabulary of this size


def _hf_model(tmp_path, name, proj, tie):
    torch.manual_seed(0)
    config = transformers.T5Config(
        vocab_size=VOCAB,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=3,
        num_heads=4,
        feed_forward_proj=proj,
        tie_word_embeddings=tie,
        dropout_rate=0.0,
        decoder_start_token_id=0,
    )
    model = transformers.T5ForConditionalGeneration(config).eval()
    with torch.no_grad():  # random, non-trivial norms and position biases
        for param in model.parameters():
            if param.ndim == 1:
                param.uniform_(0.5, 1.5)
        for stack in (model.encoder, model.decoder):
            bias = stack.block[0].layer[0].SelfAttention.relative_attention_bias.weight
            bias.normal_(0.0, 1.0)
    out = tmp_path / name
    model.save_pretrained(out, safe_serialization=True)
    return model, str(out)


def _padded_tokens(rng, lengths):
    tokens = np.zeros((len(lengths), max(lengths)), np.int64)
    for row, length in enumerate(lengths):
        tokens[row, : length - 1] = rng.integers(3, VOCAB - 100, size=length - 1)
        tokens[row, length - 1] = 1  # EOS
    return tokens


LENGTHS = [5, 17, 140, 33, 200, 1]


@pytest.mark.parametrize("proj,tie", [("relu", True), ("gated-gelu", False)])
def test_encdec_scores_and_encoder_match_hf(tmp_path, proj, tie):
    hf, path = _hf_model(tmp_path, proj, proj, tie)
    config, params, variant = ckpt_formats.load_hf(path)
    assert variant == "encdec"
    assert config.logits_via_embedding == tie
    model = RankT5EncDec(config, score_token_id=SCORE_TOKEN)
    tokens = _padded_tokens(np.random.default_rng(1), LENGTHS)
    ours = np.asarray(model.score_batch(params, {"encoder_input_tokens": tokens[None]}))[0]
    with torch.no_grad():
        ids = torch.tensor(tokens)
        mask = (ids > 0).long()
        logits = hf(
            input_ids=ids, attention_mask=mask, decoder_input_ids=torch.zeros(len(tokens), 1).long()
        ).logits
        expected = logits[:, 0, SCORE_TOKEN].numpy()
        encoded_hf = hf.encoder(input_ids=ids, attention_mask=mask).last_hidden_state.numpy()
    np.testing.assert_allclose(ours, expected, atol=1e-4, rtol=1e-4)

    encoded = model.module.apply({"params": params}, tokens, method=model.module.encode)
    valid = tokens > 0
    np.testing.assert_allclose(np.asarray(encoded)[valid], encoded_hf[valid], atol=1e-4, rtol=1e-4)


def test_encoder_matches_t5_encoder_model(tmp_path):
    hf, path = _hf_model(tmp_path, "enc", "relu", True)
    encoder_only = transformers.T5EncoderModel.from_pretrained(path).eval()
    config, params, _ = ckpt_formats.load_hf(path)
    tokens = _padded_tokens(np.random.default_rng(2), [9, 130, 4])
    model = RankT5EncDec(config, score_token_id=SCORE_TOKEN)
    encoded = np.asarray(model.module.apply({"params": params}, tokens, method=model.module.encode))
    with torch.no_grad():
        ids = torch.tensor(tokens)
        expected = encoder_only(input_ids=ids, attention_mask=(ids > 0).long()).last_hidden_state
    valid = tokens > 0
    np.testing.assert_allclose(encoded[valid], expected.numpy()[valid], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("proj,tie", [("relu", True), ("gated-gelu", False)])
def test_export_to_hf_reproduces_logits(tmp_path, proj, tie):
    hf, path = _hf_model(tmp_path, "src", proj, tie)
    config, params, _ = ckpt_formats.load_hf(path)
    out = str(tmp_path / "exported")
    ckpt_formats.save_hf(out, config, params, "encdec")
    reloaded = transformers.T5ForConditionalGeneration.from_pretrained(out).eval()
    ids = torch.tensor(_padded_tokens(np.random.default_rng(3), [12, 7]))
    start = torch.zeros(2, 1).long()
    with torch.no_grad():
        a = hf(input_ids=ids, attention_mask=(ids > 0).long(), decoder_input_ids=start).logits
        b = reloaded(input_ids=ids, attention_mask=(ids > 0).long(), decoder_input_ids=start).logits
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5, rtol=1e-5)


def test_enc_head_roundtrip_through_hf_layout(tmp_path):
    import jax

    hf, path = _hf_model(tmp_path, "encsrc", "relu", True)
    config, params, _ = ckpt_formats.load_hf(path)
    model = RankT5Enc(config)
    init = model.get_initial_variables(jax.random.PRNGKey(0), {"encoder_input_tokens": (1, 2, 8)})
    params = {k: params[k] for k in ("token_embedder", "encoder")}
    params["score_head"] = jax.tree_util.tree_map(np.asarray, init["params"]["score_head"])
    out = str(tmp_path / "enc_export")
    ckpt_formats.save_hf(out, model.config, params, "enc")
    config2, params2, variant = ckpt_formats.load_hf(out)
    assert variant == "enc" and not config2.has_decoder
    tokens = _padded_tokens(np.random.default_rng(4), [6, 11])[None]
    a = model.score_batch(params, {"encoder_input_tokens": tokens})
    b = RankT5Enc(config2).score_batch(params2, {"encoder_input_tokens": tokens})
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    # The encoder of an Enc export is a plain T5EncoderModel for transformers.
    enc = transformers.T5EncoderModel.from_pretrained(out).eval()
    with torch.no_grad():
        ids = torch.tensor(tokens[0])
        hidden = enc(input_ids=ids, attention_mask=(ids > 0).long()).last_hidden_state[:, 0]
        head = hidden.numpy() @ np.asarray(params["score_head"]["kernel"])[:, 0]
        head += float(np.asarray(params["score_head"]["bias"])[0])
    np.testing.assert_allclose(np.asarray(a)[0], head, atol=1e-4)
