"""Model classes beyond parity: MonoT5, remat, bfloat16 activations, Enc pooling options."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rankt5_jax.modeling.models import MonoT5, RankT5Enc, RankT5EncDec
from rankt5_jax.modeling.network import get_config

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


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_folded_single_query_attention_equals_projected_attention(dtype):
    # The decoder's one step attends over the encoder without projecting its keys and values
    # (`MultiHeadAttention._folded`): same parameters, same outputs and gradients, dropout too.
    from rankt5_jax.modeling.layers import MultiHeadAttention

    def module(fold):
        return MultiHeadAttention(4, 8, 0.3, jnp.dtype(dtype), fold_short_queries=fold)

    rng = np.random.default_rng(0)
    query_in = jnp.asarray(rng.normal(size=(3, 1, 16)), jnp.float32)
    keys_in = jnp.asarray(rng.normal(size=(3, 10, 16)), jnp.float32)
    key_mask = jnp.asarray(np.arange(10)[None, :] < np.array([[10], [6], [3]]))
    biases = (jnp.where(key_mask, 0.0, -1e10)[:, None, None, :],)
    params = module(True).init(jax.random.PRNGKey(0), query_in, keys_in, biases, True)
    unfolded = module(False).init(jax.random.PRNGKey(0), query_in, keys_in, biases, True)
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(unfolded)
    assert all(
        np.array_equal(a, b)
        for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(unfolded))
    )

    def run(fold, p, deterministic):
        rngs = {"dropout": jax.random.PRNGKey(3)}
        out = module(fold).apply(p, query_in, keys_in, biases, deterministic, rngs=rngs)
        return out.astype(jnp.float32)

    tol = 1e-5 if dtype == "float32" else 3e-2
    for deterministic in (True, False):
        folded, projected = run(True, params, deterministic), run(False, params, deterministic)
        assert float(jnp.abs(projected).max()) > 0.1
        np.testing.assert_allclose(folded, projected, atol=tol, rtol=tol)
        grads = [
            jax.grad(lambda p, f=fold, d=deterministic: run(f, p, d).sum())(params)
            for fold in (True, False)
        ]
        for a, b in zip(jax.tree_util.tree_leaves(grads[0]), jax.tree_util.tree_leaves(grads[1])):
            np.testing.assert_allclose(a, b, atol=tol * 10, rtol=tol * 10)


def test_encdec_scoring_skips_the_decoder_key_value_projections():
    # With the folded cross-attention the decoder step costs a small fraction of the encoder.
    config = get_config("tiny", vocab_size=512, num_decoder_layers=2, dropout_rate=0.0)
    model = RankT5EncDec(config, score_token_id=7)
    tokens = np.ones((4, 1, 64), np.int32)
    params = model.get_initial_variables(jax.random.PRNGKey(0), {"encoder_input_tokens": (1, 1, 8)})
    params = params["params"]

    def flops(fn):
        return jax.jit(fn).lower(params, tokens).compile().cost_analysis()["flops"]

    total = flops(lambda p, t: model.score_lists(p, {"encoder_input_tokens": t}))
    encoder = flops(
        lambda p, t: model.module.apply({"params": p}, t[:, 0], method=model.module.encode)
    )
    cfg = model.config
    kv_projections = 2 * 2 * 4 * 64 * cfg.emb_dim * cfg.num_heads * cfg.head_dim
    assert total - encoder < cfg.num_decoder_layers * kv_projections / 4


def test_enc_first_token_pooling_skips_the_last_layer_for_other_positions():
    # First-token pooling reads position 0 only: the last encoder layer computes nothing else.
    config = get_config("tiny", vocab_size=512, dropout_rate=0.0)
    tokens = np.ones((4, 1, 64), np.int32)
    flops = {}
    for pooling in ("first", "mean"):
        model = RankT5Enc(config.replace(pooling=pooling))
        params = model.get_initial_variables(
            jax.random.PRNGKey(0), {"encoder_input_tokens": (1, 1, 8)}
        )["params"]
        fn = jax.jit(lambda p, t, m=model: m.score_lists(p, {"encoder_input_tokens": t}))
        flops[pooling] = fn.lower(params, tokens).compile().cost_analysis()["flops"]
    layers = config.num_encoder_layers
    assert flops["first"] < flops["mean"] * (layers - 0.8) / layers


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("bias_shape", [(1, 4, 6, 6), (3, 1, 1, 6), (1, 4, 1, 6), (3, 4, 6, 6)])
def test_broadcast_bias_gradient_equals_autodiff_of_plus(dtype, bias_shape):
    # `_add_bias` (its bias gradient a product with a ones vector) against `+`.
    from rankt5_jax.modeling.layers import _add_bias

    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(3, 4, 6, 6)), dtype)
    bias = jnp.asarray(rng.normal(size=bias_shape), dtype)
    weights = jnp.asarray(rng.normal(size=(3, 4, 6, 6)), jnp.float32)

    def loss(add, x, b):
        return (jax.nn.softmax(add(x, b).astype(jnp.float32)) * weights).sum()

    ours = jax.jit(jax.value_and_grad(lambda x, b: loss(_add_bias, x, b), (0, 1)))(logits, bias)
    plain = jax.jit(jax.value_and_grad(lambda x, b: loss(jnp.add, x, b), (0, 1)))(logits, bias)
    tol = 1e-6 if dtype == "float32" else 2e-2
    np.testing.assert_allclose(ours[0], plain[0], rtol=tol)
    for a, b in zip(ours[1], plain[1]):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert float(jnp.abs(b.astype(jnp.float32)).max()) > 0.01
        np.testing.assert_allclose(a.astype(jnp.float32), b.astype(jnp.float32), atol=tol, rtol=tol)
