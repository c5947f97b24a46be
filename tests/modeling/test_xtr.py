"""UR2N's XTR layer: the loss against a loop-by-loop transcription of XTR's formula, the layer's
tap and initialisation, and the ranker's scores untouched by it."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rankt5_jax.errors import ConfigError
from rankt5_jax.modeling import registry, xtr
from rankt5_jax.modeling.models import MonoT5, RankT5Enc, RankT5EncDec
from rankt5_jax.modeling.network import T5Config, Transformer, get_config

K = 3
# Hand-made embeddings (D = 3): every product is exact in float32, so ties are real ties.
QUERIES = np.array(
    [
        [[1, 0, 0], [0, 1, 0], [9, 9, 9]],  # query 0: its last token is padding (garbage)
        [[0, 0, 1], [1, 1, 0], [0, -1, 0]],  # query 1
    ],
    np.float32,
)
QUERY_MASK = np.array([[1, 1, 0], [1, 1, 1]], bool)
DOCS = np.array(
    [
        [[1, 0, 0], [0.5, 0.5, 0], [5, 5, 5]],  # doc 0: last token padding that would win
        [[1, 0, 0], [0, 0, 1], [0, 0, -1]],  # doc 1
        [[0, -1, 0], [0, 0, 0.5], [-1, 0, 0]],  # doc 2
        [[0, 1, 0], [0, 0.5, 0], [8, 8, 8]],  # doc 3: last token padding
        [[7, 7, 7], [7, 7, 7], [7, 7, 7]],  # doc 4: all padding (no document)
    ],
    np.float32,
)
DOC_MASK = np.array([[1, 1, 0], [1, 1, 1], [1, 1, 1], [1, 1, 0], [0, 0, 0]], bool)
TARGETS = np.array([0, 1])


def reference_scores(q, q_mask, d, d_mask, k):
    """f(Q, D) = 1/Z sum_i max_j A_ij q_i.d_j, written out token by token (float64).

    A_ij = 1 when q_i.d_j is among the k largest of q_i's similarities to every real token of
    every document (all tokens tied with the k-th largest included); the max runs over D's real
    tokens; Z counts the real query tokens that retrieve at least one token of D (1 if none)."""
    q, d = q.astype(np.float64), d.astype(np.float64)
    scores = np.zeros((q.shape[0], d.shape[0]))
    for b in range(q.shape[0]):
        for n in range(d.shape[0]):
            total, z = 0.0, 0
            for i in range(q.shape[1]):
                if not q_mask[b, i]:
                    continue
                batch_sims = [
                    float(np.dot(q[b, i], d[m, j]))
                    for m in range(d.shape[0])
                    for j in range(d.shape[1])
                    if d_mask[m, j]
                ]
                ranked = sorted(batch_sims, reverse=True)
                threshold = ranked[min(k, len(ranked)) - 1]
                terms, retrieved = [], False
                for j in range(d.shape[1]):
                    if not d_mask[n, j]:
                        continue
                    sim = float(np.dot(q[b, i], d[n, j]))
                    aligned = 1.0 if sim >= threshold else 0.0
                    retrieved = retrieved or aligned == 1.0
                    terms.append(aligned * sim)
                if terms:
                    total += max(terms)
                if retrieved:
                    z += 1
            scores[b, n] = total / max(z, 1)
    return scores


def reference_loss(scores, d_mask, targets, temperature=1.0):
    losses = []
    for b, target in enumerate(targets):
        present = [n for n in range(scores.shape[1]) if d_mask[n].any()]
        norm = np.log(sum(np.exp(scores[b, n] / temperature) for n in present))
        losses.append(norm - scores[b, target] / temperature)
    return float(np.mean(losses))


def test_the_hand_made_case_has_ties_misses_and_padding():
    # The cases the loss must get right are really in the data.
    sims = np.einsum("bid,njd->binj", QUERIES, DOCS)
    real = np.where(DOC_MASK[None, None], sims, -np.inf).reshape(2, 3, -1)
    kth = -np.sort(-real, axis=-1)[..., K - 1]
    at_or_above = (real >= kth[..., None]).sum(-1)
    assert (at_or_above[QUERY_MASK] > K).any()  # a tie across the k-th place
    aligned = (sims >= kth[..., None, None]) & DOC_MASK[None, None]
    misses = ~aligned.any(-1) & QUERY_MASK[..., None] & DOC_MASK.any(-1)[None, None]
    assert misses.any()  # a query token that retrieves no token of a document
    z = (aligned.any(-1) & QUERY_MASK[..., None]).sum(1)
    assert (z[:, :4] == 0).any()  # a real document that a query retrieves nothing of (Z = 0)
    # Unmasked, padding would win every query token's top place.
    assert (sims[..., 0, 2] > sims[..., :4, :2].max((-1, -2))).any()


def test_xtr_loss_equals_the_formula():
    expected = reference_scores(QUERIES, QUERY_MASK, DOCS, DOC_MASK, K)
    loss, scores = xtr.xtr_loss(
        jnp.asarray(QUERIES), QUERY_MASK, jnp.asarray(DOCS), DOC_MASK, TARGETS, K
    )
    np.testing.assert_allclose(np.asarray(scores), expected, atol=1e-6)
    assert expected[0, 2] == 0.0 and expected[:, 4].tolist() == [0.0, 0.0]
    assert float(loss) == pytest.approx(reference_loss(expected, DOC_MASK, TARGETS), abs=1e-6)
    sharp, same = xtr.xtr_loss(QUERIES, QUERY_MASK, DOCS, DOC_MASK, TARGETS, K, temperature=0.1)
    np.testing.assert_array_equal(np.asarray(same), np.asarray(scores))
    assert float(sharp) == pytest.approx(reference_loss(expected, DOC_MASK, TARGETS, 0.1), 1e-5)
    # Padding on either side changes nothing: more padded tokens with other garbage.
    q_pad = np.concatenate([QUERIES, np.full((2, 2, 3), -4.0, np.float32)], 1)
    d_pad = np.concatenate([DOCS, np.full((5, 2, 3), 6.0, np.float32)], 1)
    q_mask = np.concatenate([QUERY_MASK, np.zeros((2, 2), bool)], 1)
    d_mask = np.concatenate([DOC_MASK, np.zeros((5, 2), bool)], 1)
    loss_pad, scores_pad = xtr.xtr_loss(q_pad, q_mask, d_pad, d_mask, TARGETS, K)
    np.testing.assert_allclose(np.asarray(scores_pad), expected, atol=1e-6)
    assert float(loss_pad) == pytest.approx(float(loss), abs=1e-6)
    # k beyond the batch's real tokens: every token is retrieved.
    np.testing.assert_allclose(
        np.asarray(xtr.xtr_scores(QUERIES, QUERY_MASK, DOCS, DOC_MASK, 100)),
        reference_scores(QUERIES, QUERY_MASK, DOCS, DOC_MASK, 100),
        atol=1e-6,
    )
    with pytest.raises(ConfigError, match="k_train"):
        xtr.xtr_scores(QUERIES, QUERY_MASK, DOCS, DOC_MASK, 0)


def test_xtr_loss_on_random_embeddings_and_its_gradient():
    rng = np.random.default_rng(3)
    q = rng.integers(-2, 3, (3, 5, 4)).astype(np.float32)
    d = rng.integers(-2, 3, (6, 7, 4)).astype(np.float32)
    q_mask = rng.random((3, 5)) > 0.2
    d_mask = rng.random((6, 7)) > 0.3
    targets = np.array([0, 2, 4])
    for k in (1, 5):
        expected = reference_scores(q, q_mask, d, d_mask, k)
        loss, scores = xtr.xtr_loss(q, q_mask, d, d_mask, targets, k)
        np.testing.assert_allclose(np.asarray(scores), expected, atol=1e-5)
        assert float(loss) == pytest.approx(reference_loss(expected, d_mask, targets), abs=1e-5)
    # Gradients are finite, reach only real tokens, and move the loss as predicted.
    q = rng.normal(size=(3, 5, 4)).astype(np.float32)
    d = rng.normal(size=(6, 7, 4)).astype(np.float32)

    def loss_of(q, d):
        return xtr.xtr_loss(q, q_mask, d, d_mask, targets, 5)[0]

    grad_q, grad_d = jax.grad(loss_of, argnums=(0, 1))(q, d)
    assert np.isfinite(grad_q).all() and np.isfinite(grad_d).all()
    assert not np.asarray(grad_q)[~q_mask].any() and not np.asarray(grad_d)[~d_mask].any()
    assert np.abs(np.asarray(grad_d)).sum() > 0
    step = 1e-3
    moved = float(loss_of(q, d - step * np.asarray(grad_d)))
    assert moved < float(loss_of(q, d))


def _models(xtr_dim):
    config = get_config("tiny", xtr_dim=xtr_dim)
    return [
        MonoT5(config, true_token_id=5, false_token_id=6),
        RankT5EncDec(config, score_token_id=200),
        RankT5Enc(config),
    ]


@pytest.fixture(scope="module")
def xtr_params():
    """Initial params (xtr_dim 8) of the encoder-decoder tree (monoT5, RankT5-EncDec) and of
    RankT5-Enc's tree."""
    shapes = {"encoder_input_tokens": (1, 1, 12)}
    monot5 = _models(8)[0]
    params = jax.jit(lambda r: monot5.get_initial_variables(r, shapes)["params"])(
        jax.random.PRNGKey(1)
    )
    # RankT5-Enc's tree: the same encoder and embedding, no decoder, a score head.
    head = {
        "kernel": np.linspace(-1, 1, 32, dtype=np.float32)[:, None],
        "bias": np.ones(1, np.float32),
    }
    enc = {"token_embedder": params["token_embedder"], "encoder": params["encoder"]}
    return {"encdec": params, "enc": dict(enc, score_head=head)}


def _strip(params):
    flat = flax.traverse_util.flatten_dict(params, sep="/")
    keep = {k: v for k, v in flat.items() if not k.startswith(xtr.XTR_PARAMS)}
    return flax.traverse_util.unflatten_dict(keep, sep="/")


def test_ranker_scores_never_read_the_xtr_params(xtr_params):
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, 250, (2, 3, 12)).astype(np.int32)
    tokens[:, :, 9:] = 0
    batch = {"encoder_input_tokens": tokens}
    for with_xtr, plain in zip(_models(8), _models(0)):
        params = xtr_params["enc" if with_xtr.variant == "enc" else "encdec"]
        flat = flax.traverse_util.flatten_dict(params, sep="/")
        assert any(k.startswith("encoder/xtr_projection/") for k in flat)
        # NaN XTR params would poison any score that read them.
        poisoned = flax.traverse_util.unflatten_dict(
            {
                k: np.full_like(v, np.nan) if k.startswith(xtr.XTR_PARAMS) else v
                for k, v in flat.items()
            },
            sep="/",
        )
        scores = np.asarray(with_xtr.score_lists(poisoned, batch))
        expected = np.asarray(plain.score_lists(_strip(params), batch))
        assert np.isfinite(scores).all()
        np.testing.assert_array_equal(scores, expected)  # bit-equal


def test_xtr_layer_taps_the_last_layer_input_and_starts_as_its_copy(xtr_params):
    model = _models(8)[0]
    params = xtr_params["encdec"]
    encoder = params["encoder"]
    copy, last = encoder["xtr_layer"], encoder["layers_1"]
    jax.tree_util.tree_map(np.testing.assert_array_equal, copy, last)
    kernel = np.asarray(encoder["xtr_projection"]["kernel"])
    assert kernel.shape == (32, 8)
    tokens = np.array([[5, 9, 17, 33, 1, 0, 0, 0], [7, 1, 0, 0, 0, 0, 0, 0]], np.int32)

    @jax.jit
    def embed_and_encode(params, tokens):
        encoded = model.module.apply({"params": params}, tokens, method=Transformer.encode)
        return xtr.token_embeddings(model, params, tokens), encoded

    (emb, mask), encoded = embed_and_encode(params, tokens)
    assert emb.dtype == jnp.float32 and emb.shape == (2, 8, 8)
    np.testing.assert_array_equal(np.asarray(mask), tokens > 0)
    norms = np.linalg.norm(np.asarray(emb), axis=-1)
    np.testing.assert_allclose(norms[tokens > 0], 1.0, atol=1e-5)
    assert not np.asarray(emb)[tokens == 0].any()
    # Same layer as the last one + the encoder's final norm: the ranker's encoder output,
    # projected and normalised.
    projected = np.asarray(encoded, np.float32) @ kernel
    expected = projected / np.linalg.norm(projected, axis=-1, keepdims=True)
    np.testing.assert_allclose(np.asarray(emb)[tokens > 0], expected[tokens > 0], atol=1e-5)
    # Padding does not change a real token's embedding; a trained copy does change them.
    wider = np.pad(tokens, ((0, 0), (0, 8)))
    np.testing.assert_allclose(
        np.asarray(embed_and_encode(params, wider)[0][0])[:, :8], emb, atol=1e-6
    )
    moved = dict(params, encoder=dict(encoder, xtr_layer=jax.tree_util.tree_map(
        lambda x: x * 1.5, copy)))  # fmt: skip
    assert np.abs(embed_and_encode(moved, tokens)[0][0] - emb).max() > 1e-3


def test_xtr_config_spec_and_model():
    assert T5Config.from_dict({k: v for k, v in T5Config().to_dict().items() if k != "xtr_dim"})
    with pytest.raises(ValueError, match="global layers"):
        get_config("tiny", xtr_dim=8, num_global_layers=1)
    with pytest.raises(ConfigError, match="no XTR layer"):
        xtr.token_embeddings(_models(0)[0], {}, np.ones((1, 4), np.int32))
    base = _models(0)[1]
    with pytest.raises(ConfigError, match="temperature"):
        xtr.make_xtr_model(base, temperature=0.0)
    model = xtr.make_xtr_model(base, xtr_dim=16, k_train=7)
    spec = model.spec()
    assert spec["variant"] == "encdec" and spec["t5"]["xtr_dim"] == 16 and model.k_train == 7
    assert spec == dict(base.spec(), t5=dict(base.spec()["t5"], xtr_dim=16))
    rebuilt = registry.build_model(spec)
    assert isinstance(rebuilt, RankT5EncDec) and rebuilt.config.xtr_dim == 16
    assert model.batch_features == {"query_tokens": 2, "doc_tokens": 3}


def test_a_training_step_moves_only_what_the_xtr_model_trains():
    """UR2N's default trains the XTR layer alone (the ranker unchanged; `trainable_prefixes`,
    the training step's freezing is tested in tests/training); `train_encoder=True` (the joint
    recipe) also trains the layers below it and the embeddings, never the decoder or the
    encoder's own last layer (parallel to the XTR layer: no gradient reaches it)."""
    base = RankT5EncDec(get_config("tiny"), score_token_id=200)
    assert xtr.XTRModel(base, xtr_dim=8).trainable_prefixes == xtr.XTR_PARAMS
    train_encoder = True
    from rankt5_jax.modeling.partitioning import Partitioner
    from rankt5_jax.training import optimizers, train_state, train_step

    model = xtr.XTRModel(
        RankT5EncDec(get_config("tiny"), score_token_id=200),
        xtr_dim=8,
        k_train=5,
        temperature=0.05,
        train_encoder=train_encoder,
    )
    partitioner = Partitioner(devices=jax.devices()[:1])
    tx, lr = optimizers.make_optimizer("adafactor", learning_rate=1e-2)
    state = train_state.init_train_state(model, tx, partitioner, 12, seed=0)
    before = flax.traverse_util.flatten_dict(jax.device_get(state["params"]), sep="/")
    step_fn, shardings = train_step.make_train_step(model, tx, lr, partitioner, state, seed=0)
    rng = np.random.default_rng(0)
    batch = {
        "query_tokens": rng.integers(3, 250, (4, 6)).astype(np.int32),
        "doc_tokens": rng.integers(3, 250, (4, 2, 12)).astype(np.int32),
    }
    with partitioner.context():
        batch = {k: jax.device_put(v, shardings[k]) for k, v in batch.items()}
        state, _ = step_fn(state, batch)
    after = flax.traverse_util.flatten_dict(jax.device_get(state["params"]), sep="/")
    moved = {k for k in before if not np.array_equal(before[k], after[k])}
    assert moved and all(k.startswith(("encoder/", "token_embedder/")) for k in moved)
    assert any(k.startswith(xtr.XTR_PARAMS) for k in moved)
    below = {k for k in moved if k.startswith(("encoder/layers_0/", "token_embedder/"))}
    assert bool(below) == train_encoder
    assert not any(k.startswith("encoder/layers_1/") for k in moved)  # the last layer: no gradient
