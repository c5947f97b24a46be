"""FiT5 models: list equivariance, padded candidates, the global layer's formula, MonoT5 at G=0."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rankt5_jax.modeling import registry
from rankt5_jax.modeling.fit5 import GlobalAttention, GlobalEncoder
from rankt5_jax.modeling.models import FiT5, MonoT5
from rankt5_jax.modeling.network import Transformer, get_config

TOKENS = {"true_token_id": 5, "false_token_id": 6}
SPECS = {
    "fit5": TOKENS,
    "fit5_encdec": {"score_token_id": 200},
    "fit5_enc": {},
}


def _model(variant, global_layers=2, **config):
    cfg = get_config("tiny", num_encoder_layers=3, num_global_layers=global_layers, **config)
    model = registry.build_model({"variant": variant, "t5": cfg, **SPECS[variant]})
    params = model.get_initial_variables(
        jax.random.PRNGKey(0), {"encoder_input_tokens": (2, 4, 8)}
    )["params"]
    return model, params


def _batch(batch=2, size=5, length=9, seed=1):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, 250, (batch, size, length)).astype(np.int32)
    tokens[:, :, -2:] = 0  # padding at the end of every row
    tokens[:, :, -3] = 1
    mask = np.ones((batch, size), bool)
    return tokens, mask


@pytest.mark.parametrize("variant", sorted(SPECS))
def test_permuting_candidates_permutes_scores(variant):
    model, params = _model(variant)
    tokens, mask = _batch()
    scores = model.score_lists(params, {"encoder_input_tokens": tokens, "mask": mask})
    perm = np.array([3, 0, 4, 1, 2])
    permuted = model.score_lists(
        params, {"encoder_input_tokens": tokens[:, perm], "mask": mask[:, perm]}
    )
    np.testing.assert_allclose(np.asarray(permuted), np.asarray(scores)[:, perm], atol=1e-5)


@pytest.mark.parametrize("variant", sorted(SPECS))
def test_padded_candidates_change_no_real_score_but_real_ones_do(variant):
    model, params = _model(variant)
    tokens, mask = _batch()
    mask[0, 3:] = False
    base = np.asarray(model.score_lists(params, {"encoder_input_tokens": tokens, "mask": mask}))
    other = tokens.copy()
    other[0, 3:] = np.random.default_rng(5).integers(3, 250, other[0, 3:].shape)
    changed = np.asarray(model.score_lists(params, {"encoder_input_tokens": other, "mask": mask}))
    np.testing.assert_allclose(changed[0, :3], base[0, :3], atol=1e-6)
    np.testing.assert_allclose(changed[1], base[1], atol=1e-6)  # the other list untouched
    # The same candidate rows, unmasked, do change the real candidates' scores: the list matters.
    mask[0, 3:] = True
    unmasked = np.asarray(model.score_lists(params, {"encoder_input_tokens": other, "mask": mask}))
    assert np.abs(unmasked[0, :3] - base[0, :3]).max() > 1e-6
    # A list of one candidate equals that candidate scored in a list padded with anything.
    single = np.asarray(
        model.score_lists(params, {"encoder_input_tokens": tokens[:1, :1], "mask": mask[:1, :1]})
    )
    lone = mask.copy()
    lone[0, 1:] = False
    padded = np.asarray(model.score_lists(params, {"encoder_input_tokens": tokens, "mask": lone}))
    np.testing.assert_allclose(single[0, 0], padded[0, 0], atol=1e-5)


def test_without_global_layers_fit5_equals_monot5():
    cfg = get_config("tiny", num_global_layers=0)
    mono = MonoT5(cfg, **TOKENS)
    fit5 = FiT5(cfg, features={"mode": "none", "template": "Query: {q} Passage: {d}"}, **TOKENS)
    params = mono.get_initial_variables(jax.random.PRNGKey(3), {"encoder_input_tokens": (1, 1, 8)})[
        "params"
    ]
    fit5_params = fit5.get_initial_variables(
        jax.random.PRNGKey(3), {"encoder_input_tokens": (1, 1, 8)}
    )["params"]
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(fit5_params)
    tokens, mask = _batch()
    batch = {"encoder_input_tokens": tokens, "mask": mask}
    np.testing.assert_allclose(
        np.asarray(fit5.score_lists(params, batch)),
        np.asarray(mono.score_lists(params, batch)),
        atol=1e-6,
    )


def test_global_layer_is_the_authors_update():
    """Position 0 becomes h + (h + Attn(LN(h))) across the list; other positions unchanged."""
    cfg = get_config("tiny", num_global_layers=1)
    layer = GlobalAttention(cfg)
    hidden = jax.random.normal(jax.random.PRNGKey(0), (2 * 3, 4, cfg.emb_dim))
    mask = jnp.array([[True, True, True], [True, True, False]])
    variables = layer.init(jax.random.PRNGKey(1), hidden, mask, True)
    out = np.asarray(layer.apply(variables, hidden, mask, True))
    p = variables["params"]
    h = np.asarray(hidden[:, 0], np.float64).reshape(2, 3, -1)
    scale = np.asarray(p["pre_attention_layer_norm"]["scale"], np.float64)
    normed = h / np.sqrt(np.mean(h**2, -1, keepdims=True) + cfg.layer_norm_epsilon) * scale

    def project(name):
        kernel = np.asarray(p["attention"][name]["kernel"], np.float64)
        return (normed @ kernel).reshape(2, 3, cfg.num_heads, cfg.head_dim)

    q, k, v = project("query"), project("key"), project("value")
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) + np.where(mask, 0, -1e10)[:, None, None, :]
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    attended = np.einsum("bhqk,bkhd->bqhd", weights, v).reshape(2, 3, -1)
    attended = attended @ np.asarray(p["attention"]["out"]["kernel"], np.float64)
    expected = np.where(np.asarray(mask)[..., None], h + (h + attended), h)
    np.testing.assert_allclose(out[:, 0].reshape(2, 3, -1), expected, atol=1e-4)
    np.testing.assert_array_equal(out[:, 1:], np.asarray(hidden[:, 1:]))


def test_global_layers_follow_the_last_encoder_layers_and_shard_like_them():
    cfg = get_config("tiny", num_encoder_layers=4, num_global_layers=2)
    variables = Transformer(cfg, encoder_cls=GlobalEncoder).init(
        {"params": jax.random.PRNGKey(0)}, jnp.ones((3, 6), jnp.int32)
    )
    encoder = variables["params"]["encoder"]
    assert {"global_layers_0", "global_layers_1"} <= set(encoder)
    assert "global_layers_2" not in encoder
    axes = variables["params_axes"]["encoder"]["global_layers_0"]["attention"]["query"][
        "kernel_axes"
    ]
    assert tuple(axes.names) == ("embed", "joined_kv")
    with pytest.raises(ValueError, match="num_global_layers"):
        get_config("tiny", num_global_layers=3)  # tiny has 2 encoder layers


def test_fit5_trains_with_rax_losses_and_its_own_objective():
    tokens, mask = _batch()
    labels = np.zeros(mask.shape, np.float32)
    labels[:, 1] = 1.0
    mask[1, 4] = False
    batch = {"encoder_input_tokens": tokens, "mask": mask, "label": labels}
    for variant, loss in [("fit5", None), ("fit5_encdec", "softmax"), ("fit5_enc", "pair")]:
        cfg = get_config("tiny", num_global_layers=1)
        spec = {"variant": variant, "t5": cfg, **SPECS[variant]}
        if loss:
            spec["loss"] = loss
        model = registry.build_model(spec)
        params = model.get_initial_variables(
            jax.random.PRNGKey(0), {"encoder_input_tokens": (2, 5, 9)}
        )["params"]

        loss_and_grad = jax.jit(jax.value_and_grad(lambda p, m=model: m.loss_fn(p, batch, None)[0]))
        value, grads = loss_and_grad(params)
        assert np.isfinite(float(value))
        global_grad = grads["encoder"]["global_layers_0"]["attention"]["query"]["kernel"]
        assert float(jnp.abs(global_grad).max()) > 0  # the global layer learns
        # A few plain SGD steps lower the loss.
        for _ in range(3):
            params = jax.tree_util.tree_map(lambda p, g: p - 0.5 * g, params, grads)
            last, grads = loss_and_grad(params)
        assert float(last) < float(value)


def test_spec_round_trip_keeps_global_layers_and_features():
    model, _ = _model("fit5")
    spec = model.spec()
    assert spec["t5"]["num_global_layers"] == 2
    rebuilt = registry.build_model(spec)
    assert rebuilt.features == model.features and rebuilt.list_aware
    assert registry.get("fit5").list_aware and not registry.get("monot5").list_aware
