"""FiT5's feature: normalisation and discretisation (the paper's rule) and the token template."""

import pytest

from rankt5_jax.data.features import FeatureConfig, FeatureTemplate, discretise
from rankt5_jax.data.vocab import EOS_ID
from rankt5_jax.errors import ConfigError

PAPER = FeatureConfig(mode="fixed", low=165.0, high=190.0)


@pytest.fixture
def vocab(fit5_vocab):
    return fit5_vocab


def test_fixed_range_clips_and_keeps_two_decimals():
    scores = [160.0, 165.0, 172.25, 172.5, 177.49, 189.999, 190.0, 250.0]
    # (s - 165) / 25 -> 0, 0, 0.29, 0.30, 0.4996, 0.99996, 1, 1 (clipped both sides); floor.
    assert discretise(scores, PAPER) == [0, 0, 29, 30, 49, 99, 100, 100]


def test_exact_hundredths_are_not_lost_to_rounding():
    # int(0.29 * 100) == 28 in floating point; the paper's two decimals of 0.29 are 29.
    config = FeatureConfig(mode="fixed", low=0.0, high=1.0)
    assert discretise([0.29, 0.57, 0.58, 0.01], config) == [29, 57, 58, 1]


def test_per_query_min_max_ties_and_constant_lists():
    config = FeatureConfig(mode="per_query")
    assert discretise([10.0, 20.0, 15.0, 15.0, 12.5], config) == [0, 100, 50, 50, 25]
    assert discretise([-3.0, -3.0, -3.0], config) == [100, 100, 100]
    assert discretise([7.0], config) == [100]
    assert discretise([], config) == []
    # Order does not matter; equal scores always get equal features.
    assert discretise([15.0, 12.5, 20.0, 10.0], config) == [50, 25, 100, 0]


def test_bad_scores_and_settings_are_errors():
    with pytest.raises(ConfigError, match="not finite"):
        discretise([1.0, float("nan")], PAPER)
    with pytest.raises(ConfigError, match="low < high"):
        FeatureConfig(mode="fixed", low=2.0, high=2.0)
    with pytest.raises(ConfigError, match="mode"):
        FeatureConfig(mode="global")
    with pytest.raises(ConfigError, match="no \\{f\\}"):
        FeatureConfig(mode="per_query", template="Query: {q} Passage: {d}")
    with pytest.raises(ConfigError, match="fields"):
        FeatureConfig(template="Query: {q} Passage: {x}")
    with pytest.raises(ConfigError, match="unknown feature settings"):
        FeatureConfig.from_dict({"mode": "fixed", "bins": 10})


def test_template_decodes_exactly(vocab):
    template = FeatureTemplate(vocab, PAPER, max_length=128)
    query, title, doc = "fuma lemo", "bako dite", "rasi tuvo kezi fuma"
    [tokens] = template.encode_list(query, [doc], [title], [172.25])
    assert tokens[-1] == EOS_ID
    expected = (
        "Query: fuma lemo Title: bako dite Feature: 29 Passage: rasi tuvo kezi fuma Relevant:"
    )
    assert vocab.decode(tokens) == expected
    assert template.text(query, doc, title, 29) == expected


def test_mode_none_leaves_the_feature_out(vocab):
    template = FeatureTemplate(vocab, FeatureConfig(mode="none"), max_length=128)
    [tokens] = template.encode_list("fuma", ["rasi tuvo"], ["bako"])
    assert vocab.decode(tokens) == "Query: fuma Title: bako Passage: rasi tuvo Relevant:"
    with pytest.raises(ConfigError, match="first-stage scores"):
        FeatureTemplate(vocab, PAPER).encode_list("fuma", ["rasi"])


def test_truncation_cuts_the_document_then_the_title_and_keeps_the_rest(vocab):
    words = sum(len(vocab.encode(w)) for w in ("Query:", "Title:", "Feature:", "Passage:"))
    words += len(vocab.encode("Relevant:"))
    feature = len(vocab.encode("100"))
    query_ids = vocab.encode("fuma lemo " * 10)[:6]
    title_ids = vocab.encode("bako")
    max_length = words + feature + 1 + len(query_ids) + len(title_ids) + 5
    template = FeatureTemplate(vocab, PAPER, max_length=max_length, max_query_length=6)
    long_doc = "rasi tuvo kezi fuma " * 20
    [tokens] = template.encode_list("fuma lemo " * 10, [long_doc], ["bako"], [190.0])
    assert len(tokens) == max_length and tokens[-1] == EOS_ID
    expected = (
        vocab.encode("Query:")
        + query_ids
        + vocab.encode("Title:")
        + title_ids
        + vocab.encode("Feature:")
        + vocab.encode("100")
        + vocab.encode("Passage:")
        + vocab.encode(long_doc)[:5]
        + vocab.encode("Relevant:")
        + [EOS_ID]
    )
    assert tokens == expected
    # A title longer than the room: the document is gone first, then the title is cut.
    long_title = "bako dite " * 20
    [tokens] = template.encode_list("fuma lemo " * 10, [long_doc], [long_title], [180.0])
    room = len(title_ids) + 5
    expected = (
        vocab.encode("Query:")
        + query_ids
        + vocab.encode("Title:")
        + vocab.encode(long_title)[:room]
        + vocab.encode("Feature:")
        + vocab.encode("60")
        + vocab.encode("Passage:")
        + vocab.encode("Relevant:")
        + [EOS_ID]
    )
    assert tokens[: len(expected)] == expected[: len(tokens)] and len(tokens) <= max_length
    assert tokens[-1] == EOS_ID and tokens[-1 - len(vocab.encode("Relevant:")) : -1] == (
        vocab.encode("Relevant:")
    )
    with pytest.raises(ConfigError, match="no room"):
        FeatureTemplate(vocab, PAPER, max_length=words)


def test_added_tokens_are_single_ids(vocab):
    config = FeatureConfig(
        mode="fixed",
        template="[CLS] Query: {q} Title: {t} score: {f} Passage: {d} Relevant:",
        added_tokens={"[CLS]": vocab.size},
    )
    [tokens] = FeatureTemplate(vocab, config, max_length=64).encode_list(
        "fuma", ["rasi"], ["bako"], [170.0]
    )
    assert tokens[0] == vocab.size and vocab.size not in tokens[1:]
    assert (
        tokens[1:]
        == FeatureTemplate(
            vocab, FeatureConfig(mode="fixed", template=config.template.replace("[CLS] ", ""))
        ).encode_list("fuma", ["rasi"], ["bako"], [170.0])[0]
    )
    assert FeatureConfig.from_dict(config.to_dict()) == config


def test_a_template_without_title_gives_the_title_no_room(vocab):
    config = FeatureConfig(mode="per_query", template="Query: {q} Feature: {f} Passage: {d}")
    template = FeatureTemplate(vocab, config, max_length=30)
    with_title = template.encode_list("fuma", ["rasi tuvo " * 20], ["bako " * 20], [1.0])
    without = template.encode_list("fuma", ["rasi tuvo " * 20], None, [1.0])
    assert with_title == without and len(with_title[0]) == 30
