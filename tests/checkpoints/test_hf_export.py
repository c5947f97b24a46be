"""`rankt5 convert --to hf`: a model directory of each pairwise variant exported to a Hugging Face
folder loads offline in transformers (`T5ForConditionalGeneration`, `T5EncoderModel`,
`T5Tokenizer`, `AutoTokenizer`) and in pyterrier-t5's `MonoT5ReRanker` with `Ranker.score`'s
scores, token for token the same inputs; FiT5 is refused, a UR2N model's XTR layer is named."""

import json
import os

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from rankt5_jax import Ranker, cli  # noqa: E402
from rankt5_jax.checkpoints import formats  # noqa: E402
from rankt5_jax.checkpoints.convert import write_params_model_dir  # noqa: E402
from rankt5_jax.data import synthetic  # noqa: E402
from rankt5_jax.data.vocab import RANKT5_TEMPLATE, Vocabulary  # noqa: E402
from rankt5_jax.modeling import registry  # noqa: E402
from rankt5_jax.modeling.network import get_config  # noqa: E402

# T5's own vocabulary has these as single pieces; the peers look `true`/`false` up by encoding.
T5_SYMBOLS = ["▁true", "▁false", "▁Query", "▁Document", "▁Relevan"]
ATOL = 1e-4


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf_export")
    collection = synthetic.make_collection(num_queries=40, seed=4)
    lines = [doc["text"] for doc in collection["corpus"].values()]
    lines += [f"Query: {q} Document: Relevant: true false" for q in collection["queries"].values()]
    spm_path = synthetic.train_sentencepiece_on(lines, str(folder / "spiece"), 400, T5_SYMBOLS)
    qids = list(collection["queries"])[:3]
    texts = [doc["text"] for doc in collection["corpus"].values()]
    rng = np.random.default_rng(0)
    docs = {  # varied lengths: 1 to 4 passages joined
        qid: [" ".join(rng.choice(texts, size=int(rng.integers(1, 5)))) for _ in range(6)]
        for qid in qids
    }
    queries = {qid: collection["queries"][qid] for qid in qids}
    return {"folder": folder, "spm_path": spm_path, "queries": queries, "docs": docs}


def _model_dir(
    data, name, variant, size="tiny", seed=0, drop=(), score_token=registry.SCORE_TOKEN, **overrides
):
    """A model directory (`rankt5.json`, `spiece.model`, `checkpoints/0`) with random weights;
    `drop`: spec keys left out (as a spec written before they were recorded)."""
    vocab = Vocabulary(data["spm_path"])
    config = get_config(size, vocab_size=512, **overrides)
    spec = registry.make_spec(variant, config, vocab, score_token)
    model = registry.build_model(spec)
    variables = model.get_initial_variables(
        jax.random.PRNGKey(seed), {"encoder_input_tokens": (1, 2, 8)}
    )
    params = jax.tree_util.tree_map(np.asarray, variables["params"])
    # Non-trivial norms (initialised to 1), so a transposed or misplaced tensor shows.
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: (
            x * np.random.default_rng(len(str(path))).uniform(0.5, 1.5, x.shape)
            if "scale" in str(path[-1])
            else x
        ),
        params,
    )
    out = str(data["folder"] / name)
    spec = {k: v for k, v in model.spec().items() if k not in drop}
    write_params_model_dir(out, spec, params, data["spm_path"])
    return out


def _export(model_dir, *extra):
    out = model_dir + "_hf"
    assert cli.main(["convert", "--to", "hf", "--input", model_dir, "--output", out, *extra]) == 0
    return out


def _hf_scores(export, variant, spec, texts, pooling="first"):
    """Scores by transformers alone, from the export's files (offline)."""
    tokenizer = transformers.T5Tokenizer.from_pretrained(export, local_files_only=True)
    enc = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        if variant == "enc":
            from safetensors.torch import load_file

            model = transformers.T5EncoderModel.from_pretrained(export, local_files_only=True)
            head = load_file(os.path.join(export, "model.safetensors"))
            hidden = model.eval()(**enc).last_hidden_state
            if pooling == "mean":  # over the real tokens
                mask = enc["attention_mask"][..., None].float()
                pooled = (hidden * mask).sum(1) / mask.sum(1)
            else:
                pooled = hidden[:, 0]
            return (pooled @ head["classifier.weight"].T + head["classifier.bias"])[:, 0].numpy()
        model = transformers.T5ForConditionalGeneration.from_pretrained(
            export, local_files_only=True
        ).eval()
        start = torch.full((len(texts), 1), model.config.decoder_start_token_id)
        logits = model(**enc, decoder_input_ids=start).logits[:, 0]
        if variant == "encdec":
            return logits[:, spec["score_token_id"]].numpy()
        pair = logits[:, [spec["true_token_id"], spec["false_token_id"]]]
        return torch.log_softmax(pair, dim=-1)[:, 0].numpy()


@pytest.mark.parametrize(
    "name,variant,size,options",
    [
        ("encdec", "encdec", "tiny", {}),
        ("encdec_v1_1", "encdec", "tiny_1_1", {}),
        ("enc", "enc", "tiny", {}),
        ("enc_mean", "enc", "tiny", {"pooling": "mean"}),
        ("monot5", "monot5", "tiny", {}),
        # A monoT5 directory written before the template was recorded keeps RankT5's.
        ("monot5_old", "monot5", "tiny", {"drop": ("template",)}),
        # A score token other than RankT5's <extra_id_10>: recorded, and read back.
        ("encdec_token", "encdec", "tiny", {"score_token": "<extra_id_3>"}),
    ],
)
def test_export_loads_in_transformers_with_our_scores_and_tokens(
    data, name, variant, size, options
):
    model_dir = _model_dir(data, name, variant, size, **options)
    export = _export(model_dir)
    for file in ("config.json", "model.safetensors", "spiece.model", "tokenizer_config.json"):
        assert os.path.isfile(os.path.join(export, file)), file
    ranker = Ranker.load(model_dir)
    spec = ranker.model.spec()
    if name == "monot5_old":
        assert spec["template"] == RANKT5_TEMPLATE
    if name == "encdec_token":
        vocab = Vocabulary(data["spm_path"])
        assert spec["score_token_id"] == vocab.token_id("<extra_id_3>")
        asked = Ranker.load(export, score_token="<extra_id_5>")  # a token asked for wins
        assert asked.model.spec()["score_token_id"] == vocab.token_id("<extra_id_5>")
    with open(os.path.join(export, "config.json")) as handle:
        config = json.load(handle)
    assert config["rankt5_variant"] == variant
    assert config["architectures"] == [registry.get(variant).hf_architecture]
    recorded = {k: v for k, v in spec.items() if k not in ("t5", "variant")}
    if variant == "enc":
        recorded["pooling"] = options.get("pooling", "first")
    assert config["rankt5_spec"] == json.loads(json.dumps(recorded))
    assert formats.hf_spec_values(export, variant)["template"] == spec["template"]
    assert formats.hf_spec_values(export, "fit5") == {}  # read as another variant: nothing

    slow = transformers.T5Tokenizer.from_pretrained(export, local_files_only=True)
    fast = transformers.AutoTokenizer.from_pretrained(export, local_files_only=True)
    assert type(fast).__name__ == "T5TokenizerFast"
    reloaded = Ranker.load(export)
    reread = {k: v for k, v in reloaded.model.spec().items() if k != "t5"}
    assert reread == {k: v for k, v in spec.items() if k != "t5"}  # template, ids: as recorded
    for qid, query in data["queries"].items():
        docs = data["docs"][qid]
        ours = ranker.score(query, docs)
        texts = [spec["template"].format(q=query, d=doc) for doc in docs]
        tokens = [list(map(int, seq)) for seq in ranker.tokenize(query, docs)]
        assert slow(texts)["input_ids"] == tokens
        assert fast(texts)["input_ids"] == tokens
        theirs = _hf_scores(export, variant, spec, texts, options.get("pooling", "first"))
        np.testing.assert_allclose(theirs, ours, atol=ATOL, rtol=0)
        assert np.ptp(ours) > 10 * ATOL  # the scores differ between documents
        # our own importer reads the export back to the same scores (the old template too:
        # Ranker.load applies the recorded spec, formats.hf_spec_values)
        np.testing.assert_allclose(reloaded.score(query, docs), ours, atol=1e-6, rtol=0)


def test_pyterrier_t5_scores_our_monot5_export(data):
    """pyterrier-t5's `MonoT5ReRanker` as documented, on our export: its true/false ids are
    ours, and with `batch_size=1` its scores are `Ranker.score`'s. With larger batches it keeps
    the EOS and padding of shorter rows before `Relevant:` (it drops the last column of a
    padded batch), so only the longest row of each batch gets the published input."""
    pd = pytest.importorskip("pandas")
    pyterrier_t5 = pytest.importorskip("pyterrier_t5")

    model_dir = _model_dir(data, "monot5_pt", "monot5", seed=3)
    export = _export(model_dir)
    ranker = Ranker.load(model_dir)
    spec = ranker.model.spec()
    frame = pd.DataFrame(
        [
            {"qid": qid, "query": data["queries"][qid], "docno": f"{qid}-{i}", "text": doc}
            for qid in data["queries"]
            for i, doc in enumerate(data["docs"][qid])
        ]
    )
    ours = np.concatenate(
        [ranker.score(data["queries"][q], data["docs"][q]) for q in data["queries"]]
    )

    def scores(batch_size):
        reranker = pyterrier_t5.MonoT5ReRanker(
            tok_model=export, model=export, batch_size=batch_size, verbose=False, device="cpu"
        )
        assert (reranker.REL, reranker.NREL) == (spec["true_token_id"], spec["false_token_id"])
        out = reranker.transform(frame).set_index("docno")
        assert set(out.columns) >= {"qid", "score", "rank"}
        return out.loc[frame["docno"], "score"].to_numpy()

    np.testing.assert_allclose(scores(1), ours, atol=ATOL, rtol=0)
    batched = scores(4)
    lengths = np.array([len(t) for q in data["queries"] for t in ranker.tokenize(
        data["queries"][q], data["docs"][q])])  # fmt: skip
    longest = np.zeros(len(lengths), bool)
    for start in range(0, len(lengths), 4):
        block = lengths[start : start + 4]
        longest[start : start + 4] = block == block.max()
    np.testing.assert_allclose(batched[longest], ours[longest], atol=ATOL, rtol=0)
    assert np.abs(batched[~longest] - ours[~longest]).max() > 10 * ATOL


def test_export_step_fit5_refused_and_xtr_layer_named(data, capsys):
    import orbax.checkpoint as ocp

    from rankt5_jax.checkpoints import model_dir as model_dirs

    # --step: a second checkpoint with other weights; the export takes the one asked for.
    model_dir = _model_dir(data, "encdec_steps", "encdec")
    first = Ranker.load(model_dir)
    _, params = model_dirs.load_model_dir(model_dir)
    shifted = jax.tree_util.tree_map(lambda x: x * 1.1, params)
    manager = model_dirs.checkpoint_manager(model_dir)
    manager.save(
        7,
        args=ocp.args.Composite(
            params=ocp.args.StandardSave(shifted),
            meta=ocp.args.JsonSave({"step": 7, "score": None}),
        ),
        force=True,
    )
    manager.wait_until_finished()
    manager.close()
    query, docs = next(iter(data["queries"].values())), next(iter(data["docs"].values()))
    latest = Ranker.load(_export(model_dir)).score(query, docs)
    assert np.abs(latest - first.score(query, docs)).max() > 1e-3
    out0 = model_dir + "_step0"
    assert cli.main(["convert", "--input", model_dir, "--output", out0, "--step", "0"]) == 0
    np.testing.assert_allclose(Ranker.load(out0).score(query, docs), first.score(query, docs))
    # and back: a Hugging Face directory --to rankt5 is one of our model directories again
    back = model_dir + "_back"
    assert cli.main(["convert", "--to", "rankt5", "--input", out0, "--output", back]) == 0
    assert os.path.isfile(os.path.join(back, "rankt5.json"))
    np.testing.assert_allclose(Ranker.load(back).score(query, docs), first.score(query, docs))

    fit5_dir = _model_dir(data, "fit5", "fit5", num_global_layers=1)
    capsys.readouterr()
    assert cli.main(["convert", "--to", "hf", "--input", fit5_dir, "--output", fit5_dir + "x"]) == 2
    err = capsys.readouterr().err
    assert "global layers" in err and "--to rankt5" in err and len(err.strip().splitlines()) == 1

    ur2n_dir = _model_dir(data, "ur2n", "encdec", xtr_dim=16)
    export = _export(ur2n_dir)
    assert "not exported" in capsys.readouterr().err
    np.testing.assert_allclose(
        Ranker.load(export).score(query, docs),
        Ranker.load(ur2n_dir).score(query, docs),
        atol=1e-6,
    )
