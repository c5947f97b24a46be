"""Model-parallel serving: `Ranker.load(..., mesh_shape=(data, model))` and `rankt5 rerank --mesh`
score as one device does, and every checkpoint kind is read straight into its shards.

(FiT5's whole lists on a mesh with a model axis, which load through the same path:
tests/inference/test_fit5_ranker.py::test_list_axis_sharded_over_the_mesh_gives_the_same_scores.)
"""

import json
import os

import flax
import jax
import numpy as np
import pytest
import tensorstore as ts

from rankt5_jax import Ranker
from rankt5_jax.checkpoints import fit5, loading
from rankt5_jax.checkpoints import formats as ckpt_formats
from rankt5_jax.checkpoints.convert import write_params_model_dir
from rankt5_jax.cli import main as cli_main
from rankt5_jax.data import synthetic
from rankt5_jax.errors import CheckpointError, ConfigError
from rankt5_jax.inference.ranker import parse_mesh
from rankt5_jax.modeling import registry
from rankt5_jax.modeling.models import config_from_spec
from rankt5_jax.modeling.network import get_config
from rankt5_jax.retrieval import bm25

MESHES = [(1, 8), (2, 4), (4, 2)]
# Short texts: every pair pads to one bucket, so each ranker compiles once.
DOCS = ["bako dite fuma", "lemo rasi tuvo kezi", "x", "fuma lemo bako", "dite"] * 2
QUERY = "fuma lemo"


def _tiny(variant, vocab, **overrides):
    """(spec, float32 numpy params) of a tiny random model of one layer per stack (each mesh
    compiles its own scoring function); 384 embeddings and 4 heads of 8, so the model axis (2, 4
    or 8) shards the vocabulary, MLP and attention kernels."""
    values = dict(vocab_size=384, num_encoder_layers=1, num_decoder_layers=1)
    config = get_config("tiny", **dict(values, **overrides))
    if registry.get(variant).score_head:
        config = config.replace(has_decoder=False)
    spec = registry.make_spec(variant, config, vocab)
    model = registry.build_model(spec)
    shapes = {"encoder_input_tokens": (1, 2, 8)}
    params = model.get_initial_variables(jax.random.PRNGKey(1), shapes)["params"]
    return model.spec(), jax.tree_util.tree_map(np.asarray, flax.core.unfreeze(params))


def _write_t5x_legacy(ckpt_dir, params):
    """A legacy T5X checkpoint: msgpack `checkpoint` + one zarr array per parameter, chunked in
    4 along the last axis (so a shard reads only its chunks)."""
    os.makedirs(ckpt_dir)
    tree = {}
    for path, value in flax.traverse_util.flatten_dict(params).items():
        name = ".".join(("target",) + path)
        chunks = list(value.shape[:-1]) + [max(1, value.shape[-1] // 4)] if value.ndim else []
        spec = {
            "driver": "zarr",
            "dtype": "float32",
            "kvstore": {"driver": "file", "path": name},
            "metadata": {"shape": list(value.shape), "chunks": chunks},
        }
        absolute = json.loads(json.dumps(spec))
        absolute["kvstore"]["path"] = os.path.join(ckpt_dir, name)
        ts.open(absolute, create=True, open=True).result().write(value).result()
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = spec
    contents = {"version": 3, "optimizer": {"target": tree, "state": {"step": 3}}}
    with open(os.path.join(ckpt_dir, "checkpoint"), "wb") as handle:
        handle.write(flax.serialization.msgpack_serialize(contents))


def _write_t5x_orbax(ckpt_dir, params):
    import orbax.checkpoint as ocp

    state = {"target": params, "state": {"step": np.int32(3)}}
    ocp.PyTreeCheckpointer().save(os.path.join(os.path.abspath(ckpt_dir), "state"), state)


def _write_fit5_authors(path, spec, params):
    """Our FiT5 params in the authors' state-dict names (`project_global`, `dense`)."""
    from safetensors.numpy import save_file

    config = config_from_spec(spec)
    flat = flax.traverse_util.flatten_dict(params, sep="/")
    tensors = {
        theirs: np.ascontiguousarray(flat[ours].T if transpose else flat[ours])
        for ours, (theirs, transpose) in fit5._name_map(config).items()
    }
    save_file(tensors, path)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, spm_path, vocab):
    """kind -> (path, load kwargs, the source params): one tiny model per checkpoint kind."""
    root = tmp_path_factory.mktemp("mesh_ckpts")
    out = {}
    spec, params = _tiny("encdec", vocab)
    ckpt_formats.save_hf(str(root / "hf"), config_from_spec(spec), params, "encdec", spm_path)
    out["hf"] = (str(root / "hf"), {}, params)
    spec, params = _tiny("enc", vocab)
    write_params_model_dir(str(root / "ours"), spec, params, spm_path)
    out["model_dir"] = (str(root / "ours"), {}, params)
    spec, params = _tiny("monot5", vocab)
    _write_t5x_legacy(str(root / "legacy" / "checkpoint_3"), params)
    kwargs = {"variant": "monot5", "vocab": spm_path}
    out["t5x_legacy"] = (str(root / "legacy" / "checkpoint_3"), kwargs, params)
    spec, params = _tiny("encdec", vocab)
    _write_t5x_orbax(str(root / "orbax" / "checkpoint_3"), params)
    out["t5x_orbax"] = (str(root / "orbax" / "checkpoint_3"), {"vocab": spm_path}, params)
    fit5_overrides = dict(num_global_layers=1, logits_via_embedding=False, logits_bias=True)
    spec, params = _tiny("fit5", vocab, **fit5_overrides)
    _write_fit5_authors(str(root / "fit5.safetensors"), spec, params)
    out["fit5_authors"] = (str(root / "fit5.safetensors"), {"vocab": spm_path}, params)
    return out


# Every ranker here pads to one shape, [8, 32]: one compilation each.
SETTINGS = {"batch_size": 8, "batch_tokens": 0, "max_length": 32, "dtype": "float32"}


@pytest.fixture(scope="module")
def single(checkpoints):
    """kind -> the one-device `Ranker` of the EncDec, Enc and MonoT5 checkpoints."""
    kinds = ("hf", "model_dir", "t5x_legacy")
    return {
        kind: Ranker.load(checkpoints[kind][0], **SETTINGS, **checkpoints[kind][1])
        for kind in kinds
    }


@pytest.mark.parametrize("kind", ["hf", "model_dir", "t5x_legacy"])
def test_mesh_scores_equal_one_device(checkpoints, single, kind):
    """EncDec (Hugging Face), Enc (our model dir) and MonoT5 (legacy T5X) on 1x8, 2x4 and 4x2
    meshes score as one device does, within 1e-5 in float32."""
    path, kwargs, _ = checkpoints[kind]
    reference = single[kind].score(QUERY, DOCS)
    assert len(np.unique(np.round(reference[:5], 5))) == 5
    for mesh_shape in MESHES:
        ranker = Ranker.load(path, mesh_shape=mesh_shape, **SETTINGS, **kwargs)
        assert dict(ranker.partitioner.mesh.shape) == {
            "data": mesh_shape[0],
            "model": mesh_shape[1],
        }
        kernel = ranker.params["encoder"]["layers_0"]["mlp"]["wi"]["kernel"]  # [32, 64]
        assert {shard.data.shape for shard in kernel.addressable_shards} == {
            (32, 64 // mesh_shape[1])
        }
        np.testing.assert_allclose(ranker.score(QUERY, DOCS), reference, atol=1e-5)


@pytest.mark.parametrize("kind", ["hf", "model_dir", "t5x_legacy", "t5x_orbax", "fit5_authors"])
def test_each_kind_loads_straight_into_its_shards(checkpoints, kind, monkeypatch):
    """On a 2x4 mesh every parameter is laid out by the trainer's rules (no model-axis
    parameter whole on any device), holds the checkpoint's values, and was read slice by slice:
    safetensors and zarr sources read each element once and never a sharded parameter whole;
    Orbax kinds are restored with their shardings (no `TensorRef` read at all)."""
    path, kwargs, source = checkpoints[kind]
    reads = []
    original = ckpt_formats.TensorRef.__getitem__

    def recording(self, index):
        part = original(self, index)
        reads.append((tuple(self.shape), tuple(part.shape)))
        return part

    monkeypatch.setattr(ckpt_formats.TensorRef, "__getitem__", recording)
    ranker = Ranker.load(path, batch_size=8, mesh_shape=(2, 4), **kwargs)
    abstract = Ranker.abstract_params(ranker.model, ranker.partitioner)
    flat = flax.traverse_util.flatten_dict(ranker.params, sep="/")
    wanted = flax.traverse_util.flatten_dict(abstract, sep="/")
    values = flax.traverse_util.flatten_dict(source, sep="/")
    assert flat.keys() == wanted.keys() == values.keys()
    expected_reads = set()
    sharded = 0
    for key, array in flat.items():
        sharding = wanted[key].sharding
        shard_shape = sharding.shard_shape(array.shape)
        assert array.sharding == sharding and array.dtype == np.float32, key
        assert len(array.sharding.device_set) == 8, key
        assert {shard.data.shape for shard in array.addressable_shards} == {shard_shape}, key
        np.testing.assert_array_equal(np.asarray(array), values[key], err_msg=key)
        expected_reads.add((array.shape, shard_shape))
        if "model" in tuple(sharding.spec):
            sharded += 1
            assert shard_shape != array.shape, key
    assert sharded >= 8  # kernels, embedding, position biases: on the model axis
    if kind in ("model_dir", "t5x_orbax"):
        assert not reads
    else:
        assert set(reads) == expected_reads
        read_elements = sum(int(np.prod(part)) for _, part in reads)
        assert read_elements == sum(int(np.prod(v.shape)) for v in values.values())


def test_place_params_names_missing_unexpected_and_misshapen(checkpoints):
    _, _, source = checkpoints["model_dir"]
    ranker = Ranker.load(checkpoints["model_dir"][0], batch_size=8, mesh_shape=(4, 2))
    abstract = Ranker.abstract_params(ranker.model, ranker.partitioner)
    broken = flax.traverse_util.flatten_dict(source, sep="/")
    del broken["score_head/kernel"]
    broken["encoder/extra"] = np.zeros(3, np.float32)
    with pytest.raises(CheckpointError, match=r"missing 1 \(score_head/kernel\).*unexpected 1"):
        loading.place_params(flax.traverse_util.unflatten_dict(broken, sep="/"), abstract, "x")
    misshapen = flax.traverse_util.flatten_dict(source, sep="/")
    misshapen["score_head/bias"] = np.zeros(2, np.float32)
    with pytest.raises(CheckpointError, match=r"score_head/bias has shape \(2,\)"):
        loading.place_params(flax.traverse_util.unflatten_dict(misshapen, sep="/"), abstract, "x")


@pytest.fixture(scope="module")
def collection_files(tmp_path_factory):
    collection = synthetic.make_collection(num_queries=5, seed=7)
    run = bm25.bm25_run(collection["corpus"], collection["queries"], top_k=6)
    return synthetic.write_collection(str(tmp_path_factory.mktemp("mesh_files")), collection, run)


def test_rerank_cli_with_a_mesh_scores_as_one_device(
    checkpoints, single, collection_files, tmp_path
):
    """`rankt5 rerank --mesh data=2,model=4` writes every candidate of the top 5 with the score
    one device gives it."""
    from rankt5_jax.data import formats

    paths = collection_files
    argv = ["rerank", "--checkpoint", checkpoints["hf"][0]]
    argv += ["--queries", paths["queries"], "--corpus", paths["corpus"], "--run", paths["run"]]
    argv += ["--output", str(tmp_path / "mesh.run"), "--top_k", "5", "--mesh", "data=2,model=4"]
    argv += [f"--{key}={value}" for key, value in SETTINGS.items()]
    assert cli_main(argv) == 0
    written = {}
    for line in (tmp_path / "mesh.run").read_text().splitlines():
        qid, _, docid, _, score, _ = line.split()
        written.setdefault(qid, {})[docid] = float(score)
    queries = formats.read_queries(paths["queries"])
    corpus = formats.Corpus(paths["corpus"])
    run = formats.read_run(paths["run"])
    assert written.keys() == run.keys() and len(written) == 5
    for qid, scores in written.items():
        docids = list(scores)
        assert len(docids) == 5 and set(docids) <= set(run[qid])
        expected = single["hf"].score(queries[qid], [corpus.text(d) for d in docids])
        np.testing.assert_allclose([scores[d] for d in docids], expected, atol=1e-5)
    corpus.close()


@pytest.mark.parametrize(
    "mesh, message",
    [
        ("data=2;model=4", "expected data=D,model=M"),
        ("data=2,model=x", "expected data=D,model=M"),
        ("data=2", "expected data=D,model=M"),
        ("data=0,model=8", "expected data=D,model=M"),
        ("data=2,model=4,model=4", "expected data=D,model=M"),
        ("data=3,model=4", "needs 12 devices, but 8 are visible"),
        ("model=3", "but 8 are visible"),
    ],
)
def test_bad_mesh_is_a_one_line_error(
    checkpoints, collection_files, tmp_path, capsys, mesh, message
):
    paths = collection_files
    argv = ["rerank", "--checkpoint", checkpoints["hf"][0], "--queries", paths["queries"]]
    argv += ["--corpus", paths["corpus"], "--run", paths["run"], "--output", str(tmp_path / "o")]
    assert cli_main([*argv, "--mesh", mesh]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rankt5: error:") and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_mesh_shape_arguments():
    assert parse_mesh("data=2,model=4") == (2, 4) and parse_mesh("model=8,data=1") == (1, 8)
    assert parse_mesh("model=2") == (-1, 2)
    ranker = Ranker.load  # the checks run before any checkpoint is read
    with pytest.raises(ConfigError, match="needs 12 devices"):
        ranker("/nonexistent", mesh_shape=(3, 4))
    with pytest.raises(ConfigError, match="mesh_shape or partitioner"):
        ranker("/nonexistent", mesh_shape=(2, 4), partitioner=object())
    with pytest.raises(ConfigError, match=r"\(data, model\)"):
        ranker("/nonexistent", mesh_shape=(8,))


def test_memory_table_counts_follow_the_model_and_the_partitioner():
    """bench/memory_table.py (docs/scaling.md): T5 v1.0 base EncDec has 222,903,552 params (as
    Hugging Face's t5-base); its per-device bytes follow `Partitioner`'s own shardings; its
    activation estimate is near the H100 peak bench/train_bench.py measured."""
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.path.insert(0, repo)
    from bench import memory_table
    from rankt5_jax.modeling.partitioning import Partitioner

    assert memory_table.param_count(memory_table.param_shapes("t5_1_0_base")) == 222_903_552
    shapes = memory_table.param_shapes("tiny")
    model = registry.build_model(
        registry.make_spec("encdec", get_config("tiny", vocab_size=32128), memory_table._Ids())
    )
    abstract = jax.eval_shape(
        lambda: model.get_initial_variables(
            jax.random.PRNGKey(0), {"encoder_input_tokens": (1, 1, 8)}
        )
    )
    leaves = jax.tree_util.tree_leaves(abstract["params"])
    for dims in (1, 2):
        for data, model_axis in MESHES + [(8, 1)]:
            partitioner = Partitioner(data, model_axis, parameter_partitioning_dims=dims)
            shardings = partitioner.params_shardings(abstract["params"], abstract["params_axes"])
            expected = sum(
                int(np.prod(sharding.shard_shape(leaf.shape)))
                for leaf, sharding in zip(leaves, jax.tree_util.tree_leaves(shardings))
            )
            assert memory_table.params_per_device(shapes, data, model_axis, dims) == expected
    check = memory_table.check_against_gpu(os.path.join(repo, "bench/gpu_results/train_gpu.json"))
    assert 0.8 < check["estimate_over_measured"] < 1.25
