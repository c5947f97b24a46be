"""A model family added from outside the package, as docs/design.md ("Adding a model family")
says: a config dataclass, a class of a few lines and one `registry.register` call. It trains
(the train step), saves a model directory, loads with `Ranker.load` and re-ranks (Python and
`rankt5 rerank`), touching no file of the package."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from rankt5_jax import Ranker
from rankt5_jax.checkpoints.convert import write_params_model_dir
from rankt5_jax.data.vocab import EOS_ID
from rankt5_jax.modeling import registry
from rankt5_jax.modeling.base import PairTemplateConfig, RankingLossConfig, token_field
from rankt5_jax.modeling.heads import DecoderColumnsModel
from rankt5_jax.modeling.models import RankingLossModel


# -- the family ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, kw_only=True)
class YesNoConfig(RankingLossConfig, PairTemplateConfig):
    yes_token_id: int = token_field("true")
    no_token_id: int = token_field("false")
    template: str = "Question: {q} Passage: {d} Answer:"


class YesNoRanker(RankingLossModel, DecoderColumnsModel):
    """Score = logit("true") - logit("false") at decoder step 0, any ranking loss."""

    variant = "toy_yes_no"
    Config = YesNoConfig

    def pair_scores(self, params, tokens, dropout_rng=None, list_mask=None):
        ids = (self.yes_token_id, self.no_token_id)
        columns = self.columns(params, tokens, ids, dropout_rng, list_mask)
        return columns[:, 0] - columns[:, 1]


@pytest.fixture(scope="module")
def toy_family():
    registry.register(registry.Variant("toy_yes_no", YesNoRanker, "toy: true minus false logit"))
    yield "toy_yes_no"
    registry.unregister("toy_yes_no")


# -- the test -----------------------------------------------------------------------------------
QUERIES = {"q1": "bako fuma", "q2": "lemo rasi"}
CORPUS = {
    "d1": "bako fuma dite",
    "d2": "tuvo kezi",
    "d3": "lemo rasi tuvo",
    "d4": "x",
}
RELEVANT = {"q1": "d1", "q2": "d3"}


def test_a_family_added_in_a_test_trains_saves_loads_and_reranks(
    toy_family, spm_path, vocab, tmp_path
):
    from rankt5_jax.data.vocab import InputTemplate
    from rankt5_jax.modeling.partitioning import Partitioner
    from rankt5_jax.training import optimizers, setup, train_state, train_step

    # gin's factory knows the family from the registry: its options, token ids, template.
    model = setup.make_model(
        variant=toy_family, size="tiny", vocab_path=spm_path, dropout_rate=0.0, loss="pointce"
    )
    assert isinstance(model, YesNoRanker)
    spec = model.spec()
    assert spec["template"] == YesNoConfig.template and spec["loss"] == "pointce"
    assert spec["yes_token_id"] == vocab.token_id("true")

    # A few steps of the train step on lists built with the family's template.
    template = InputTemplate(vocab, max_length=64, template=model.template)
    docids = list(CORPUS)
    tokens = np.zeros((2, len(docids), 64), np.int32)
    labels = np.zeros((2, len(docids)), np.float32)
    for row, (qid, query) in enumerate(QUERIES.items()):
        for col, seq in enumerate(template.encode_pairs(query, list(CORPUS.values()))):
            tokens[row, col, : len(seq)] = seq
        labels[row, docids.index(RELEVANT[qid])] = 1.0
    batch = {"encoder_input_tokens": tokens, "label": labels, "mask": np.ones_like(labels, bool)}
    batch["decoder_input_tokens"] = np.zeros((2, len(docids), 1), np.int32)
    batch["decoder_target_tokens"] = batch["decoder_input_tokens"]
    partitioner = Partitioner(devices=jax.devices()[:1])
    tx, lr = optimizers.make_optimizer("adamw", learning_rate=3e-3)
    state = train_state.init_train_state(model, tx, partitioner, 64)
    step_fn, _ = train_step.make_train_step(model, tx, lr, partitioner, state)
    losses = []
    with partitioner.context():
        for _ in range(8):
            state, metrics = step_fn(state, batch)
            losses.append(float(metrics["loss"]))
    assert losses[-1] < losses[0]

    # Saved as a model directory, loaded through the public API with the family's template.
    params = jax.tree_util.tree_map(np.asarray, jax.device_get(state["params"]))
    model_dir = str(tmp_path / "toy_model")
    write_params_model_dir(model_dir, spec, params, spm_path)
    ranker = Ranker.load(model_dir, max_length=64, batch_size=4)
    assert isinstance(ranker.model, YesNoRanker)
    pairs = ranker.tokenize(QUERIES["q1"], [CORPUS["d1"]])
    text = f"Question: {QUERIES['q1']} Passage: {CORPUS['d1']} Answer:"
    assert pairs == [vocab.encode(text) + [EOS_ID]]
    direct = model.score_lists(params, {"encoder_input_tokens": tokens})
    for row, query in enumerate(QUERIES.values()):
        scores = ranker.score(query, list(CORPUS.values()))
        np.testing.assert_allclose(scores, np.asarray(direct[row]), atol=1e-5)

    # Re-ranked through the CLI, in this process (the registry holds the family).
    from rankt5_jax import cli
    from rankt5_jax.data import formats

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": k, "text": v}) + "\n" for k, v in CORPUS.items()))
    queries = tmp_path / "queries.tsv"
    queries.write_text("".join(f"{k}\t{v}\n" for k, v in QUERIES.items()))
    run = tmp_path / "first.run"
    run.write_text(
        "".join(
            f"{qid} Q0 {docid} {rank + 1} {10.0 - rank} bm25\n"
            for qid in QUERIES
            for rank, docid in enumerate(docids)
        )
    )
    output = tmp_path / "reranked.run"
    argv = ["rerank", "--checkpoint", model_dir, "--queries", str(queries), "--corpus"]
    argv += [str(corpus), "--run", str(run), "--output", str(output), "--max_length", "64"]
    assert cli.main(argv) == 0
    reranked = formats.read_run(str(output))
    for row, qid in enumerate(QUERIES):
        expected = dict(zip(docids, np.asarray(direct[row], np.float64)))
        assert reranked[qid].keys() == expected.keys()
        for docid, score in reranked[qid].items():
            assert score == pytest.approx(expected[docid], abs=1e-4)


def test_registering_checks_the_name_and_class(toy_family):
    from rankt5_jax.errors import ConfigError

    with pytest.raises(ConfigError, match="already registered"):
        registry.register(registry.Variant(toy_family, YesNoRanker, "again"))
    assert toy_family in registry.NAMES
    wrong = registry.Variant("toy_other", YesNoRanker, "named otherwise")
    with pytest.raises(ConfigError, match="toy_yes_no"):
        wrong.load_class()
