"""Model classes beyond parity: MonoT5, remat, bfloat16 activations, Enc pooling options."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rankt5_jax.models import MonoT5, RankT5Enc, RankT5EncDec
from rankt5_jax.network import get_config

TRUE, FALSE = 100, 101


def _batch(seed=0, batch=2, items=5, length=12):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, 300, size=(batch, items, length)).astype(np.int32)
    tokens[..., -1] = 1
    tokens[0, 1, 6:] = 0  # padding inside a row
    labels = np.zeros((batch, items), np.float32)
    labels[:, 0] = 1.0
    mask = np.ones((batch, items), bool)
    mask[1, -1] = False
    return {"encoder_input_tokens": tokens, "label": labels, "mask": mask}


def _params(model, length=12):
    return model.get_initial_variables(
        jax.random.PRNGKey(0), {"encoder_input_tokens": (1, 1, length)}
    )["params"]


def test_monot5_scores_are_log_softmax_of_true_over_true_false():
    config = get_config("tiny", vocab_size=384)
    model = MonoT5(config, true_token_id=TRUE, false_token_id=FALSE)
    params = _params(model)
    batch = _batch()
    scores = np.asarray(model.score_batch(params, batch))
    flat = batch["encoder_input_tokens"].reshape(-1, 12)
    logits = model.module.apply(
        {"params": params}, flat, (TRUE, FALSE), method=model.module.encdec_score_columns
    )
    expected = np.asarray(jax.nn.log_softmax(logits, axis=-1)[:, 0]).reshape(2, 5)
    np.testing.assert_allclose(scores, expected, atol=1e-6)
    assert np.all(scores <= 0)
    (loss, metrics), grads = jax.value_and_grad(model.loss_fn, has_aux=True)(params, batch, None)
    assert np.isfinite(float(loss)) and "mrr@10" in metrics
    assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree_util.tree_leaves(grads))


@pytest.mark.parametrize("cls", [RankT5EncDec, RankT5Enc])
def test_remat_gives_the_same_loss_and_gradients(cls):
    kwargs = {"score_token_id": 373} if cls is RankT5EncDec else {}
    plain = cls(get_config("tiny", vocab_size=384), **kwargs)
    remat = cls(get_config("tiny", vocab_size=384, remat="full"), **kwargs)
    params = _params(plain)
    batch = _batch(1)
    grad_a = jax.grad(lambda p: plain.loss_fn(p, batch, None)[0])(params)
    grad_b = jax.grad(lambda p: remat.loss_fn(p, batch, None)[0])(params)
    for a, b in zip(jax.tree_util.tree_leaves(grad_a), jax.tree_util.tree_leaves(grad_b)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_bfloat16_activations_keep_float32_params_scores_and_loss():
    f32 = RankT5EncDec(get_config("tiny", vocab_size=384), score_token_id=373)
    bf16 = RankT5EncDec(get_config("tiny", vocab_size=384, dtype="bfloat16"), score_token_id=373)
    params = _params(f32)
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(_params(bf16)))
    batch = _batch(2)
    a = np.asarray(f32.score_batch(params, batch))
    b = bf16.score_batch(params, batch)
    assert b.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(b), a, atol=0.1 * np.abs(a).max() + 0.05)
    loss, _ = bf16.loss_fn(params, batch, None)
    assert loss.dtype == jnp.float32 and np.isfinite(float(loss))
    with pytest.raises(ValueError, match="never float16"):
        get_config("tiny", dtype="float16")


def test_enc_has_no_decoder_and_mean_pooling_ignores_padding():
    model = RankT5Enc(get_config("tiny", vocab_size=384, pooling="mean"))
    params = _params(model)
    assert "decoder" not in params and params["score_head"]["kernel"].shape == (32, 1)
    tokens = np.array([[[5, 6, 7, 1, 0, 0, 0, 0]]], np.int32)
    longer = np.array([[[5, 6, 7, 1, 0, 0, 0, 0, 0, 0, 0, 0]]], np.int32)
    a = model.score_batch(params, {"encoder_input_tokens": tokens})
    b = model.score_batch(params, {"encoder_input_tokens": longer})
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_predict_batch_with_aux_returns_scores_and_refuses_decoding():
    model = RankT5EncDec(get_config("tiny", vocab_size=384), score_token_id=373)
    params = _params(model)
    batch = _batch()
    scores, aux = model.predict_batch_with_aux(params, batch)
    np.testing.assert_array_equal(np.asarray(scores), np.asarray(aux["scores"]))
    assert scores.shape == (2, 5)
    with pytest.raises(Exception, match="does not decode"):
        model.predict_batch_with_aux(params, batch, return_all_decodes=True)
