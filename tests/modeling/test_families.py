"""Families declared once: the registry row, the spec and gin's make_model come from the family's
config dataclass; monoT5's published template in the Python and the seqio (TF) inputs."""

import numpy as np
import pytest

from rankt5_jax.data.vocab import MONOT5_TEMPLATE, RANKT5_TEMPLATE, InputTemplate
from rankt5_jax.errors import ConfigError
from rankt5_jax.modeling import registry
from rankt5_jax.modeling.network import get_config

# What the hand-written table said before the families were declared once.
ROWS = {
    "encdec": ((("score_token_id", None),), "T5ForConditionalGeneration", False, 0),
    "enc": ((), "T5EncoderModel", True, 0),
    "monot5": (
        (("true_token_id", "true"), ("false_token_id", "false")),
        "T5ForConditionalGeneration",
        False,
        0,
    ),
    "fit5": (
        (("true_token_id", "true"), ("false_token_id", "false")),
        "T5ForConditionalGeneration",
        False,
        3,
    ),
    "fit5_encdec": ((("score_token_id", None),), "T5ForConditionalGeneration", False, 3),
    "fit5_enc": ((), "T5EncoderModel", True, 3),
}


@pytest.mark.parametrize("name", sorted(ROWS))
def test_registry_rows_come_from_the_family_config(name):
    entry = registry.get(name)
    token_ids, architecture, score_head, global_layers = ROWS[name]
    assert entry.token_ids == token_ids
    assert entry.hf_architecture == architecture
    assert entry.score_head == score_head
    assert entry.global_layers == global_layers
    assert entry.list_aware == (global_layers > 0)
    assert entry.load_class().variant == name


def test_spec_round_trip_template_and_old_specs(vocab):
    config = get_config("tiny", vocab_size=512)
    spec = registry.make_spec("monot5", config, vocab)
    assert spec["template"] == MONOT5_TEMPLATE  # a new monoT5 records monoT5's published one
    model = registry.build_model(spec)
    assert model.template == MONOT5_TEMPLATE and model.spec()["template"] == MONOT5_TEMPLATE
    assert registry.build_model(model.spec()).spec() == model.spec()
    old = {k: v for k, v in model.spec().items() if k != "template"}  # written before
    assert registry.build_model(old).template == RANKT5_TEMPLATE
    unknown = dict(model.spec(), some_future_key=1)  # unknown keys are ignored
    assert registry.build_model(unknown).spec() == model.spec()
    encdec = registry.build_model(registry.make_spec("encdec", config, vocab))
    assert encdec.template == RANKT5_TEMPLATE and encdec.spec()["loss"] == "softmax"
    assert encdec.spec()["loss_kwargs"] == {}
    with pytest.raises(ConfigError, match="true_token_id"):
        registry.build_model({k: v for k, v in spec.items() if k != "true_token_id"})
    with pytest.raises(ConfigError, match="loss"):
        registry.get("monot5").load_class()(
            config, loss="softmax", **registry.get("monot5").spec_token_ids(vocab)
        )
    with pytest.raises(ConfigError, match="one \\{q\\} and one \\{d\\}"):
        registry.build_model(dict(spec, template="Query: {q}"))


def test_make_model_takes_only_the_family_options(spm_path):
    from rankt5_jax.training.setup import make_model

    common = dict(size="tiny", vocab_path=spm_path, dropout_rate=0.0)
    model = make_model(variant="monot5", **common)
    assert model.template == MONOT5_TEMPLATE
    model = make_model(variant="monot5", template=RANKT5_TEMPLATE, **common)
    assert model.template == RANKT5_TEMPLATE
    with pytest.raises(ConfigError, match="ranking loss"):
        make_model(variant="monot5", loss="softmax", **common)
    with pytest.raises(ConfigError, match="FiT5 settings"):
        make_model(variant="encdec", features={}, **common)
    with pytest.raises(ConfigError, match="no pair template"):
        make_model(variant="fit5", template=RANKT5_TEMPLATE, **common)
    fit5 = make_model(variant="fit5", config_overrides={"num_global_layers": 1}, **common)
    assert fit5.list_aware and fit5.config.num_global_layers == 1


def test_plain_transformer_refuses_a_family_setting():
    import jax
    import jax.numpy as jnp

    from rankt5_jax.modeling.fit5 import GlobalEncoder
    from rankt5_jax.modeling.network import Transformer

    cfg = get_config("tiny", num_global_layers=1)
    tokens = jnp.ones((2, 4), jnp.int32)
    with pytest.raises(ConfigError, match="GlobalEncoder"):
        Transformer(cfg).init(jax.random.PRNGKey(0), tokens)
    params = Transformer(cfg, encoder_cls=GlobalEncoder).init(jax.random.PRNGKey(0), tokens)
    assert "global_layers_0" in params["params"]["encoder"]


@pytest.mark.parametrize("template", [RANKT5_TEMPLATE, MONOT5_TEMPLATE])
def test_seqio_inputs_follow_the_template_token_for_token(spm_path, vocab, template):
    import tensorflow as tf

    from rankt5_jax.data import preprocessors, tasks_lib

    length = 40
    docs = ["bako dite fuma", "lemo rasi tuvo kezi " * 10, "", "x"]
    query = "fuma lemo bako"
    dataset = tf.data.Dataset.from_tensors(
        {
            "query": tf.constant(query),
            "doc_texts": tf.constant(docs),
            "mask": tf.constant([True, True, True, False]),
        }
    )
    out = preprocessors.build_inputs(
        dataset,
        {"inputs": length},
        tasks_lib.output_features(spm_path),
        max_query_length=64,
        template=template,
    )
    rows = next(out.as_numpy_iterator())["inputs"]
    expected = InputTemplate(vocab, length, 64, template=template).encode_pairs(query, docs)
    for row, tokens, real in zip(rows, expected, [True, True, True, False]):
        want = np.zeros(length, np.int32)
        if real:
            want[: len(tokens)] = tokens
        np.testing.assert_array_equal(row, want)
    assert len(expected[1]) == length  # the long document was cut, the suffix and EOS kept
    if template == MONOT5_TEMPLATE:
        relevant = vocab.encode("Relevant:")
        assert expected[1][-len(relevant) - 1 :] == relevant + [1]
