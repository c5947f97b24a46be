"""FiT5 under T5X: t5x's own train.py and infer.py, and the T5X classes called as t5x calls them.

Skipped where t5x is not installed (docs/t5x.md says how to install it).
"""

import json
import os

import numpy as np
import pytest

t5x = pytest.importorskip("t5x")
pytest.importorskip("t5x.train")

from t5x_run import run_t5x as _t5x  # noqa: E402 (after the skip)

GLOBAL_LAYERS = 2  # gin/t5x/fit5_smoke.gin: the tiny model's 2 encoder layers
LENGTH = 80  # gin/t5x/fit5_smoke.gin's TASK_FEATURE_LENGTHS['inputs']
FEATURES = {"mode": "per_query"}  # gin/t5x/fit5.gin's FEATURES


def _tiny_config():
    from rankt5_jax.modeling.network import get_config

    # The smoke configs' model: tiny, vocab_size 768, float32, no dropout.
    return get_config("tiny", vocab_size=768, dropout_rate=0.0, num_global_layers=GLOBAL_LAYERS)


def _our_fit5(vocab_path):
    """rankt5_jax's own FiT5 (not the T5X class) for the smoke model."""
    from rankt5_jax.data.vocab import Vocabulary
    from rankt5_jax.modeling.models import FiT5

    vocab = Vocabulary(vocab_path)
    return FiT5(
        _tiny_config(),
        true_token_id=vocab.token_id("true"),
        false_token_id=vocab.token_id("false"),
    )


@pytest.fixture(scope="module")
def fit5_run(tmp_path_factory):
    """RankT5-EncDec trained 10 steps under t5x (RankT5's smoke data), then FiT5 trained from
    it (its global layers from scratch, gin/t5x/fit5_init.gin) to step 30 on FiT5's smoke data
    (titles, the BM25 score as the feature), then t5x infer.py's scores of the FiT5 dev lists
    from FiT5's checkpoint_30. -> (root, FiT5 data dir, FiT5 training log)."""
    root = tmp_path_factory.mktemp("t5x_fit5")
    data = root / "data_fit5"
    smoke = "--gin_file=gin/t5x/smoke_cpu.gin"
    _t5x(
        "train",
        smoke,
        f"--gin.DATA_DIR='{root / 'data_rankt5'}'",
        f"--gin.MODEL_DIR='{root / 'encdec'}'",
        "--gin.TRAIN_STEPS=10",
        "--gin.EVAL_PERIOD=10",
    )
    log = _t5x(
        "train",
        smoke,
        "--gin_file=gin/t5x/fit5_smoke.gin",
        f"--gin.DATA_DIR='{data}'",
        "--gin_file=gin/t5x/fit5_init.gin",
        f"--gin.MODEL_DIR='{root / 'fit5'}'",
        f"--gin.INITIAL_CHECKPOINT_PATH='{root / 'encdec' / 'checkpoint_10'}'",
        "--gin.TRAIN_STEPS=30",
        "--gin.EVAL_PERIOD=20",
    )
    _t5x(
        "infer",
        "--gin_file=gin/t5x/smoke_infer.gin",
        "--gin_file=gin/t5x/fit5_smoke.gin",
        f"--gin.CHECKPOINT_PATH='{root / 'fit5' / 'checkpoint_30'}'",
        f"--gin.INFER_OUTPUT_DIR='{root / 'infer'}'",
        f"--gin.DATA_DIR='{data}'",
    )
    return root, data, log


def _task_examples(task_name, split, count=None):
    import seqio

    task = seqio.get_mixture_or_task(task_name)
    dataset = task.get_dataset({"inputs": LENGTH, "targets": 1}, split=split, shuffle=False)
    if count is not None:
        dataset = dataset.take(count)
    return list(dataset.as_numpy_iterator())


def test_fit5_trains_from_a_checkpoint_without_global_layers(fit5_run):
    from rankt5_jax.checkpoints import t5x_checkpoints
    from rankt5_jax.training import smoke

    root, data, log = fit5_run
    assert "smoke_fit5_dev/RR@10 at step 30" in log  # t5x's inference eval (predict_batch_...)
    encdec = t5x_checkpoints.load_t5x_orbax(str(root / "encdec" / "checkpoint_10"))
    start = t5x_checkpoints.load_t5x_orbax(str(root / "fit5" / "checkpoint_10"))
    end = t5x_checkpoints.load_t5x_orbax(str(root / "fit5" / "checkpoint_30"))
    # Restored: every RankT5-EncDec parameter as it was; the global layers are new.
    np.testing.assert_array_equal(
        start["encoder"]["layers_0"]["mlp"]["wi"]["kernel"],
        encdec["encoder"]["layers_0"]["mlp"]["wi"]["kernel"],
    )
    assert "global_layers_0" not in encdec["encoder"]
    for k in range(GLOBAL_LAYERS):
        query = np.asarray(end["encoder"][f"global_layers_{k}"]["attention"]["query"]["kernel"])
        start_query = start["encoder"][f"global_layers_{k}"]["attention"]["query"]["kernel"]
        assert np.all(np.isfinite(query)) and not np.allclose(query, start_query)  # trained

    # The training loss (the authors' 2-class cross-entropy), recomputed by our own FiT5 on
    # the first 16 training lists: finite, and lower after the 20 steps.
    info = smoke.smoke_data(str(data), features=FEATURES)
    lists = _task_examples(info["train_task"], "train", count=16)
    batch = {
        "encoder_input_tokens": np.stack([e["inputs"] for e in lists]),
        "label": np.stack([e["label"] for e in lists]),
        "mask": np.stack([e["mask"] for e in lists]),
    }
    model = _our_fit5(info["vocab"])
    before = float(model.loss_fn(start, batch, None)[0])
    after = float(model.loss_fn(end, batch, None)[0])
    assert np.isfinite(before) and np.isfinite(after)
    assert after < before - 0.01, (before, after)


def test_fit5_enc_trains_from_an_encdec_checkpoint(fit5_run):
    """gin/t5x/fit5_enc.gin + fit5_init.gin from RankT5-EncDec's checkpoint: the encoder is
    restored, the decoder is not read, score_head and the global layers start from scratch."""
    from rankt5_jax.checkpoints import t5x_checkpoints

    root, data, _ = fit5_run
    log = _t5x(
        "train",
        "--gin_file=gin/t5x/smoke_cpu.gin",
        "--gin_file=gin/t5x/fit5_smoke.gin",
        "--gin_file=gin/t5x/fit5_enc.gin",
        "--gin_file=gin/t5x/fit5_init.gin",
        f"--gin.DATA_DIR='{data}'",
        f"--gin.MODEL_DIR='{root / 'fit5_enc'}'",
        f"--gin.INITIAL_CHECKPOINT_PATH='{root / 'encdec' / 'checkpoint_10'}'",
        "--gin.TRAIN_STEPS=15",
        "--gin.EVAL_PERIOD=5",
    )
    assert "smoke_fit5_dev/RR@10 at step 15" in log
    encdec = t5x_checkpoints.load_t5x_orbax(str(root / "encdec" / "checkpoint_10"))
    start = t5x_checkpoints.load_t5x_orbax(str(root / "fit5_enc" / "checkpoint_10"))
    assert "decoder" not in start and "score_head" in start
    assert f"global_layers_{GLOBAL_LAYERS - 1}" in start["encoder"]
    np.testing.assert_array_equal(
        start["encoder"]["layers_1"]["attention"]["query"]["kernel"],
        encdec["encoder"]["layers_1"]["attention"]["query"]["kernel"],
    )


def test_fit5_t5x_scores_equal_ours_on_whole_lists(fit5_run):
    """t5x infer.py (score mode: the T5X class's score_batch on [B, L, T] batches with a list
    mask) against our FiT5 scoring each list's real candidates alone. Dev lists with fewer
    than 30 BM25 candidates are padded: if t5x's path dropped the mask or split lists, their
    scores would differ (checked: scoring a padded list without its mask moves them)."""
    from rankt5_jax.checkpoints import t5x_checkpoints
    from rankt5_jax.training import smoke

    root, data, _ = fit5_run
    info = smoke.smoke_data(str(data), features=FEATURES)
    out_dir = root / "infer"
    files = [
        f
        for f in os.listdir(out_dir)
        if f.startswith(f"{info['eval_task']}-score.jsonl") and not f.endswith("COMPLETED")
    ]
    rows = [json.loads(line) for line in open(out_dir / files[0])]
    lists = _task_examples(info["eval_task"], "validation")
    assert len(rows) == len(lists)
    params = t5x_checkpoints.load_t5x_orbax(str(root / "fit5" / "checkpoint_30"))
    model = _our_fit5(info["vocab"])
    padded = 0
    for row, example in zip(rows, lists):
        mask, tokens = example["mask"], example["inputs"]
        theirs = np.asarray(row["score"])
        assert theirs.shape == mask.shape  # one score per list item
        alone = {"encoder_input_tokens": tokens[mask][None]}  # the real candidates, one list
        ours = np.asarray(model.score_batch(params, alone))[0]
        np.testing.assert_allclose(theirs[mask], ours, atol=1e-5)
        if not mask.all():
            padded += 1
            unmasked = np.asarray(model.score_batch(params, {"encoder_input_tokens": tokens[None]}))
            assert np.abs(unmasked[0][mask] - ours).max() > 1e-3  # the mask matters
    assert padded >= 1


@pytest.mark.parametrize("name", ["FiT5", "FiT5EncDec", "FiT5Enc"])
def test_t5x_fit5_classes_keep_lists_and_mask(name, tmp_path):
    """The T5X classes called as t5x calls them (get_initial_variables, loss_fn, score_batch,
    predict_batch_with_aux) on a [2, 4, T] batch whose second list has 2 padded candidates:
    scores equal our model's on each list's real candidates alone; a padded candidate's
    tokens change nothing; a candidate changes its own list's scores only."""
    import jax
    import seqio

    from rankt5_jax.data import synthetic
    from rankt5_jax.errors import ConfigError
    from rankt5_jax.modeling import network, registry
    from rankt5_jax.t5x import models as t5x_models

    vocab_path = synthetic.train_sentencepiece(
        str(tmp_path / "spiece"), 300, synthetic.make_collection(num_queries=20, seed=0)
    )
    vocabulary = seqio.SentencePieceVocabulary(vocab_path, extra_ids=100)
    config = _tiny_config()
    module = network.Transformer(config, with_score_head=name == "FiT5Enc")
    cls = getattr(t5x_models, name)
    model = cls(module, vocabulary, vocabulary, None)
    ours = registry.build_model(model.spec())  # rankt5_jax's own class of the variant
    assert type(ours).__name__ == name and model.spec()["t5"]["num_global_layers"] == 2

    rng = np.random.default_rng(0)
    tokens = rng.integers(3, 300, size=(2, 4, 12)).astype(np.int32)
    tokens[:, :, -1] = 1  # EOS
    mask = np.array([[True] * 4, [True, True, False, False]])
    tokens[1, 2:] = 0  # padded candidates
    batch = {
        "encoder_input_tokens": tokens,
        "decoder_input_tokens": np.zeros((2, 4, 1), np.int32),
        "label": np.array([[1, 0, 0, 0], [0, 1, 0, 0]], np.float32),
        "mask": mask,
    }
    variables = model.get_initial_variables(
        jax.random.PRNGKey(0), {"encoder_input_tokens": tokens.shape}
    )
    params = variables["params"]
    assert "global_layers_1" in params["encoder"] and "params_axes" in variables

    score = jax.jit(model.score_batch)
    scores = np.asarray(score(params, batch))
    predicted, aux = jax.jit(model.predict_batch_with_aux)(params, batch)
    np.testing.assert_array_equal(np.asarray(predicted), scores)
    np.testing.assert_array_equal(np.asarray(aux["scores"]), scores)
    for i in range(2):
        alone = {"encoder_input_tokens": tokens[i][mask[i]][None]}
        np.testing.assert_allclose(
            scores[i][mask[i]], np.asarray(jax.jit(ours.score_batch)(params, alone))[0], atol=1e-5
        )

    changed = dict(batch, encoder_input_tokens=tokens.copy())
    changed["encoder_input_tokens"][1, 3, :5] = 7  # a padded candidate
    np.testing.assert_allclose(np.asarray(score(params, changed))[mask], scores[mask], atol=1e-6)
    changed["encoder_input_tokens"][0, 0, :5] = 7  # a real candidate of list 0
    moved = np.asarray(score(params, changed))
    assert np.abs(moved[0, 1:] - scores[0, 1:]).max() > 1e-4  # its list's other scores move
    np.testing.assert_allclose(moved[1][mask[1]], scores[1][mask[1]], atol=1e-6)

    loss, metrics = jax.jit(lambda p: model.loss_fn(p, batch, None))(params)
    assert np.isfinite(float(loss)) and "ranking/mrr@10" in metrics
    grads = jax.jit(jax.grad(lambda p: model.loss_fn(p, batch, None)[0]))(params)
    global_grad = grads["encoder"]["global_layers_0"]["attention"]["query"]["kernel"]
    assert np.all(np.isfinite(global_grad)) and np.abs(global_grad).max() > 0

    t5x_network = pytest.importorskip("t5x.examples.t5.network")
    if name != "FiT5Enc":
        with pytest.raises(ConfigError, match="global layers"):
            cls(t5x_network.Transformer(t5x_network.T5Config(768)), vocabulary, vocabulary, None)
