"""Each loss against the paper's formula written out in numpy, with Rax's documented reduction."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rankt5_jax.errors import ConfigError
from rankt5_jax.modeling.losses import get_loss_fn

# Hand-made lists: ties, several positives, graded labels, all-zero labels, masked items.
SCORES = np.array(
    [
        [2.0, 1.0, 1.0, -0.5, 3.0],  # ties among negatives
        [0.3, 0.3, -1.0, 2.5, 0.0],  # two positives, tie between them
        [1.0, -2.0, 0.5, 0.0, 4.0],  # all-zero labels
        [0.2, 1.5, -0.7, 9.0, 9.0],  # graded labels, last two masked
    ],
    np.float32,
)
LABELS = np.array([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0], [2, 1, 0, 3, 0]], np.float32)
MASK = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], bool)


def _log_softmax(s):
    s = s - s.max()
    return s - np.log(np.exp(s).sum())


def paper_softmax(scores, labels, mask):
    # l_i = -sum_j y_ij log softmax(s_i)_j; mean over lists with a valid item.
    per_list = []
    for s, y, m in zip(scores, labels, mask):
        per_list.append(-(y[m] * _log_softmax(s[m])).sum())
    return np.mean(per_list)


def paper_poly1(scores, labels, mask, eps):
    # l_i = -sum_j y_j log p_j + eps * sum_j y_j (1 - p_j); mean over lists.
    per_list = []
    for s, y, m in zip(scores, labels, mask):
        s, y = s[m], y[m]
        p = np.exp(_log_softmax(s))
        per_list.append(-(y * np.log(p)).sum() + eps * (y * (1 - p)).sum())
    return np.mean(per_list)


def paper_pair(scores, labels, mask):
    # sum over pairs y_j > y_k of log(1 + exp(s_k - s_j)); mean over valid pairs.
    terms = []
    for s, y, m in zip(scores, labels, mask):
        s, y = s[m], y[m]
        for j in range(len(s)):
            for k in range(len(s)):
                if y[j] > y[k]:
                    terms.append(np.log1p(np.exp(s[k] - s[j])))
    return np.mean(terms)


def paper_pointce(scores, labels, mask):
    # sigmoid cross-entropy per item with labels clipped to [0, 1]; mean over valid items.
    y = np.clip(labels, 0, 1)
    p = 1 / (1 + np.exp(-scores.astype(np.float64)))
    per_item = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    return per_item[mask].mean()


@pytest.mark.parametrize(
    "name,reference",
    [
        ("softmax", paper_softmax),
        ("pair", paper_pair),
        ("pointce", paper_pointce),
        ("poly1", lambda s, y, m: paper_poly1(s, y, m, 1.0)),
    ],
)
def test_loss_equals_paper_formula(name, reference):
    loss = get_loss_fn(name)(jnp.asarray(SCORES), jnp.asarray(LABELS), jnp.asarray(MASK))
    np.testing.assert_allclose(float(loss), reference(SCORES, LABELS, MASK), rtol=1e-5)


def test_poly1_epsilon_and_single_positive_equals_paper_sum():
    scores, labels, mask = SCORES[:1], LABELS[:1], MASK[:1]
    loss = get_loss_fn("poly1", epsilon=2.5)(scores, labels, mask)
    p = np.exp(_log_softmax(scores[0]))
    paper = -np.log(p[0]) + 2.5 * (labels[0] * (1 - p)).sum()  # paper eq. with one positive
    np.testing.assert_allclose(float(loss), paper, rtol=1e-5)


def test_poly1_equals_rax_with_one_positive_per_list():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(6, 36)).astype(np.float32)
    labels = np.zeros((6, 36), np.float32)
    labels[np.arange(6), rng.integers(0, 36, size=6)] = 1.0
    ours = get_loss_fn("poly1", epsilon=1.0)(scores, labels)
    theirs = get_loss_fn("poly1_softmax_loss", epsilon=1.0)(scores, labels)
    np.testing.assert_allclose(float(ours), float(theirs), rtol=1e-6)


def test_masked_items_do_not_change_loss():
    for name in ("softmax", "pair", "pointce", "poly1"):
        fn = get_loss_fn(name)
        changed = SCORES.copy()
        changed[3, 3:] = [-50.0, 77.0]
        a = fn(SCORES, LABELS, MASK)
        b = fn(changed, LABELS, MASK)
        np.testing.assert_allclose(float(a), float(b), rtol=1e-6, err_msg=name)


@pytest.mark.parametrize("name", ["softmax", "pair", "pointce", "poly1", "listmle_loss"])
def test_gradients_finite_with_masks(name):
    fn = get_loss_fn(name)
    grads = jax.grad(lambda s: fn(s, LABELS, MASK))(jnp.asarray(SCORES))
    assert np.all(np.isfinite(np.asarray(grads)))
    assert np.all(np.asarray(grads)[~MASK] == 0.0)


def test_unknown_loss_is_a_clear_error():
    with pytest.raises(ConfigError, match="unknown loss"):
        get_loss_fn("softmaxx")
