"""What each model family learns, on collections built for the papers' claims (issue 27).

Tiny models (the `tiny` T5: d_model 32, 2 layers) trained on CPU with the project's compiled
training step (`training.train_step`) on lists built here in memory from the generated
collections of `data/synthetic.py` (see docs/learning.md). Each comparison trains both sides the
same number of steps on the same lists (one sampling stream per seed), from the same
initialisation (parameters drawn from the seed; parameters both sides have start equal).

  feature  FiT5 reading the first-stage score vs FiT5 without it (template `none`)
  list     FiT5 (global attention) vs monoT5 of the same size vs FiT5 with num_global_layers=0
  depth    RankT5-EncDec trained with negatives from the first stage's top 1000 vs its top 30,
           each re-ranking the top 30, 100 and 1000 (3,000 training queries, 1,500 steps)
  graded   RankT5-EncDec, listwise softmax vs pointwise sigmoid cross-entropy, nDCG@10

    nice -n 5 .venv/bin/python bench/learning_bench.py --claims feature list depth graded \
        --seeds 0 1 2 --output /tmp/learning_results.json

The tests (`tests/learning/`) call the same functions with the settings written in
`SETTINGS` and assert the margins measured here (bench/RESULTS.md, "learning").
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from rankt5_jax.data import synthetic  # noqa: E402
from rankt5_jax.data.features import FeatureConfig, FeatureTemplate  # noqa: E402
from rankt5_jax.data.vocab import InputTemplate, Vocabulary  # noqa: E402

# The first stage's score as FiT5's feature: the *feature* collection's scores lie in [0, 1].
# FiT5's template without its empty `Title:` part (the generated passages have no titles).
TEMPLATE = "Query: {q} Feature: {f} Passage: {d} Relevant:"
FEATURES = {"mode": "fixed", "low": 0.0, "high": 1.0, "template": TEMPLATE}
NO_FEATURES = {"mode": "none", "template": TEMPLATE}

# Steps, batch (lists per step), list size, learning rate and input length of each claim, as the
# tests run them and as RESULTS.md reports them.
SETTINGS: dict[str, dict[str, Any]] = {
    "feature": dict(steps=200, batch_size=8, list_size=8, lr=1e-2, length=32),
    # *list*: 250 steps, past the 50 to 200 in which the tiny FiT5 learns the odd one out (3
    # seeds); 16 tokens hold its inputs (passages: `a`, a marker, a filler word; docs/learning.md).
    "list": dict(steps=250, batch_size=8, list_size=8, lr=1e-2, length=16),
    # *depth*: 3,000 training queries, each met about 4 times in 1,500 steps (fewer queries let
    # the model memorise their positives instead of learning the rule), and a vocabulary in which
    # every generated word is one piece (with the default 400 pieces, 1,500 topic words are split
    # into syllables and the tiny model matches nothing: docs/learning.md).
    "depth": dict(
        steps=1500,
        batch_size=8,
        list_size=8,
        lr=1e-2,
        length=32,
        vocab_size=2000,
        collection=dict(num_queries=3040),
    ),
    "graded": dict(steps=400, batch_size=8, list_size=8, lr=1e-2, length=32),
}
COLLECTIONS = {
    "feature": synthetic.make_feature_collection,
    "list": synthetic.make_list_collection,
    "depth": synthetic.make_depth_collection,
    "graded": synthetic.make_graded_collection,
}


@dataclasses.dataclass(frozen=True)
class Side:
    """One model of a comparison: a registered variant and its settings."""

    name: str
    variant: str
    loss: str | None = None
    num_global_layers: int | None = None
    features: Mapping[str, Any] | None = None

    def make_model(self, vocab_path: str):
        from rankt5_jax.training import setup

        kwargs: dict[str, Any] = {}
        if self.loss is not None:
            kwargs["loss"] = self.loss
        if self.features is not None:
            kwargs["features"] = dict(self.features)
        if self.num_global_layers is not None:
            kwargs["num_global_layers"] = self.num_global_layers
        return setup.make_model(
            variant=self.variant,
            size="tiny",
            vocab_path=vocab_path,
            dtype="float32",
            dropout_rate=0.0,
            **kwargs,
        )


class Data:
    """A generated collection with its SentencePiece vocabulary and tokenised inputs."""

    def __init__(self, claim: str, seed: int, workdir: str, **collection_kwargs: Any):
        self.claim = claim
        self.seed = seed
        self.settings = SETTINGS[claim]
        kwargs = {**self.settings.get("collection", {}), **collection_kwargs}
        self.collection = COLLECTIONS[claim](seed=seed, **kwargs)
        prefix = os.path.join(workdir, f"{claim}_{seed}_spiece")
        self.vocab_path = synthetic.train_sentencepiece(
            prefix, self.settings.get("vocab_size", 400), self.collection, fit5_words=True
        )
        self.vocab = Vocabulary(self.vocab_path)
        self._cache: dict[tuple, dict[str, np.ndarray]] = {}

    def inputs(self, side: Side, qid: str, docids: Sequence[str]) -> np.ndarray:
        """Token ids `[len(docids), length]` of one query's candidates, in `side`'s template."""
        key = (side.variant.startswith("fit5"), _frozen(side.features))
        cache = self._cache.setdefault(key, {})
        length = self.settings["length"]
        missing = [d for d in docids if (qid, d) not in cache]
        if missing:
            corpus, query = self.collection["corpus"], self.collection["queries"][qid]
            texts = [corpus[d]["text"] for d in missing]
            if key[0]:
                config = FeatureConfig.from_dict(side.features)
                template = FeatureTemplate(self.vocab, config, max_length=length)
                scores = [self.collection["run"][qid].get(d, 0.0) for d in missing]
                rows = template.encode_list(query, texts, scores=scores)
            else:
                rows = InputTemplate(self.vocab, max_length=length).encode_pairs(query, texts)
            for docid, row in zip(missing, rows):
                tokens = np.zeros(length, np.int32)
                tokens[: len(row)] = row
                cache[(qid, docid)] = tokens
        return np.stack([cache[(qid, d)] for d in docids])


def _frozen(value: Mapping | None):
    return None if value is None else tuple(sorted(value.items()))


def training_lists(
    data: Data, steps: int, seed: int, negatives_depth: int | None = None
) -> list[list[tuple[str, list[str], list[float]]]]:
    """The lists of every step: `steps` batches of `(qid, docids, labels)`, drawn from `seed`.

    `negatives_depth=None`: a list is the query's whole candidate list (the *feature*, *list* and
    *graded* collections: `list_size` candidates each), shuffled. Otherwise (RankT5's recipe)
    the relevant passage and `list_size - 1` negatives drawn uniformly from the first stage's top
    `negatives_depth` (relevant passages left out), in random order.
    """
    settings = data.settings
    rng = np.random.default_rng([seed, 27, 100])
    collection = data.collection
    qrels, run, train = collection["qrels"], collection["run"], collection["train"]
    batches = []
    for _ in range(steps):
        batch = []
        for qid in rng.choice(train, size=settings["batch_size"], replace=False):
            ranked = list(run[qid])
            if negatives_depth is None:
                docids = [ranked[i] for i in rng.permutation(len(ranked))]
            else:
                positives = [d for d, g in qrels[qid].items() if g > 0]
                pool = [d for d in ranked[:negatives_depth] if qrels[qid].get(d, 0) <= 0]
                chosen = rng.choice(len(pool), settings["list_size"] - 1, replace=False)
                docids = [positives[0], *(pool[i] for i in chosen)]
                docids = [docids[i] for i in rng.permutation(len(docids))]
            batch.append((str(qid), docids, [float(qrels[qid].get(d, 0)) for d in docids]))
        batches.append(batch)
    return batches


def train(
    data: Data,
    side: Side,
    lists: Sequence[Sequence[tuple[str, list[str], list[float]]]],
    seed: int,
    label_scale: float = 1.0,
):
    """Trains `side` on `lists` (one batch a step) from the params drawn from `seed`.

    -> `(model, params, losses)`. `label_scale` divides the labels (graded labels into [0, 1]
    for pointwise sigmoid cross-entropy)."""
    import jax

    from rankt5_jax.modeling.partitioning import Partitioner
    from rankt5_jax.training import optimizers, train_state, train_step

    model = side.make_model(data.vocab_path)
    partitioner = Partitioner(devices=jax.devices()[:1])
    tx, lr = optimizers.make_optimizer(
        data.settings.get("optimizer", "adafactor"), learning_rate=data.settings["lr"]
    )
    state = train_state.init_train_state(model, tx, partitioner, data.settings["length"], seed=seed)
    step_fn, shardings = train_step.make_train_step(model, tx, lr, partitioner, state, seed=seed)
    losses = []
    with partitioner.context():
        for batch in lists:
            tokens = np.stack([data.inputs(side, qid, docids) for qid, docids, _ in batch])
            arrays = {
                "encoder_input_tokens": tokens,
                "decoder_input_tokens": np.zeros(tokens.shape[:2] + (1,), np.int32),
                "decoder_target_tokens": np.zeros(tokens.shape[:2] + (1,), np.int32),
                "label": np.asarray([labels for *_, labels in batch], np.float32) / label_scale,
                "mask": np.ones(tokens.shape[:2], bool),
            }
            arrays = {k: jax.device_put(v, shardings[k]) for k, v in arrays.items()}
            state, metrics = step_fn(state, arrays)
            losses.append(float(metrics["loss"]))
    return model, jax.device_get(state["params"]), losses


def rerank(
    data: Data,
    side: Side,
    model,
    params,
    depth: int | None = None,
    chunk: int = 8,
) -> dict[str, dict[str, float]]:
    """Scores the test queries' first-stage candidates (the top `depth`; None: all of them).

    A list-aware model (FiT5) scores each query's candidates as one list; the others score them
    in chunks of `chunk` (pairs alone: the chunking changes nothing)."""
    import jax

    score = jax.jit(lambda p, tokens: model.score_batch(p, {"encoder_input_tokens": tokens}))
    out: dict[str, dict[str, float]] = {}
    run = data.collection["run"]
    for qid in data.collection["test"]:
        docids = list(run[qid])[:depth]
        tokens = data.inputs(side, qid, docids)
        if model.variant.startswith("fit5"):
            scores = np.asarray(score(params, tokens[None]))[0]
        else:
            pad = -len(docids) % chunk
            padded = np.concatenate([tokens, np.zeros((pad, tokens.shape[1]), np.int32)])
            scores = np.asarray(score(params, padded.reshape(-1, chunk, tokens.shape[1])))
            scores = scores.reshape(-1)[: len(docids)]
        out[qid] = {d: float(s) for d, s in zip(docids, scores)}
    return out


def evaluate(
    data: Data,
    run: Mapping[str, Mapping[str, float]],
    depth: int | None = None,
    names: Sequence[str] = ("RR@10", "nDCG@10"),
):
    """`names` (RR@10 and nDCG@10 unless told) over the test queries (trec_eval's conventions)."""
    from rankt5_jax.evaluation import measures

    qrels = {q: data.collection["qrels"][q] for q in data.collection["test"]}
    cut = {q: dict(list(run[q].items())[:depth]) for q in qrels}
    return measures.evaluate_run(cut, qrels, list(names))


# -- the claims -----------------------------------------------------------------------------------

FIT5_FEATURES = Side("fit5_features", "fit5", num_global_layers=1, features=FEATURES)
FIT5_NO_FEATURES = Side("fit5_no_features", "fit5", num_global_layers=1, features=NO_FEATURES)
FIT5_GLOBAL = Side("fit5_global", "fit5", num_global_layers=2, features=NO_FEATURES)
FIT5_NO_GLOBAL = Side("fit5_no_global", "fit5", num_global_layers=0, features=NO_FEATURES)
MONOT5 = Side("monot5", "monot5")
RANKT5 = Side("rankt5_softmax", "encdec", loss="softmax")
RANKT5_POINTCE = Side("rankt5_pointce", "encdec", loss="pointce")


def claim_feature(data: Data, seed: int) -> dict:
    lists = training_lists(data, data.settings["steps"], seed)
    out = {"first_stage": evaluate(data, data.collection["run"])}
    for side in (FIT5_FEATURES, FIT5_NO_FEATURES):
        model, params, losses = train(data, side, lists, seed)
        out[side.name] = evaluate(data, rerank(data, side, model, params))
    return out


def _loss_curve(losses: Sequence[float], chunks: int = 10) -> list[float]:
    """The training loss averaged over `chunks` equal spans of the steps."""
    return [round(float(np.mean(c)), 3) for c in np.array_split(losses, chunks)]


def claim_list(data: Data, seed: int) -> dict:
    lists = training_lists(data, data.settings["steps"], seed)
    out = {"first_stage": evaluate(data, data.collection["run"])}
    for side in (FIT5_GLOBAL, MONOT5, FIT5_NO_GLOBAL):
        model, params, losses = train(data, side, lists, seed)
        out[side.name] = evaluate(data, rerank(data, side, model, params))
        out[side.name + "_loss"] = _loss_curve(losses)
    return out


def claim_depth(
    data: Data,
    seed: int,
    depths: Sequence[int] = (30, 100, 1000),
    negatives: Sequence[int] = (1000, 30),
) -> dict:
    """RankT5 trained with negatives from the first stage's top `n` (each of `negatives`),
    re-ranking its top `d` (each of `depths`): `{"rankt5_top{n}": {d: metrics}}`."""
    out: dict[str, Any] = {
        "first_stage": {d: evaluate(data, data.collection["run"], d) for d in depths}
    }
    for name, negatives_depth in ((f"rankt5_top{n}", n) for n in negatives):
        lists = training_lists(data, data.settings["steps"], seed, negatives_depth)
        model, params, losses = train(data, RANKT5, lists, seed)
        out[name + "_loss"] = [round(float(np.mean(c)), 3) for c in np.array_split(losses, 5)]
        deepest = rerank(data, RANKT5, model, params, max(depths))
        # A shallower re-ranking scores the same candidates: the top `d` of the first stage.
        run = data.collection["run"]
        out[name] = {}
        for d in depths:
            cut = {q: {k: deepest[q][k] for k in list(run[q])[:d]} for q in deepest}
            out[name][d] = evaluate(data, cut)
    return out


# *graded*: every grade >= 1 counts as relevant for RR@10, and the first stage's word count
# already orders grades 0-2, so nDCG@10 leaves little room (first stage about 0.96); RR(rel=3)@10
# asks whether the phrase holder (grade 3) comes first, which the word count cannot tell.
GRADED_MEASURES = ("nDCG@10", "nDCG@3", "RR(rel=3)@10")


def claim_graded(data: Data, seed: int) -> dict:
    lists = training_lists(data, data.settings["steps"], seed)
    out = {"first_stage": evaluate(data, data.collection["run"], names=GRADED_MEASURES)}
    for side, scale in ((RANKT5, 1.0), (RANKT5_POINTCE, 3.0)):
        model, params, losses = train(data, side, lists, seed, label_scale=scale)
        run = rerank(data, side, model, params)
        out[side.name] = evaluate(data, run, names=GRADED_MEASURES)
        out[side.name + "_loss"] = _loss_curve(losses)
    return out


CLAIMS = {
    "feature": claim_feature,
    "list": claim_list,
    "depth": claim_depth,
    "graded": claim_graded,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--claims", nargs="+", default=list(CLAIMS), choices=list(CLAIMS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as workdir:
        for claim in args.claims:
            results[claim] = {"settings": SETTINGS[claim], "seeds": {}}
            for seed in args.seeds:
                started = time.time()
                data = Data(claim, seed, workdir)
                result = CLAIMS[claim](data, seed)
                result["seconds"] = round(time.time() - started, 1)
                results[claim]["seeds"][seed] = result
                print(claim, seed, json.dumps(result), flush=True)
    if args.output:
        with open(args.output, "w") as handle:
            json.dump(results, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
