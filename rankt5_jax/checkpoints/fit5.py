"""The FiT5 authors' PyTorch checkpoints (github.com/OpenMatch/FiT5) -> our params and spec.

Their model (`src/t5/t5Model_v10.py`) is a Hugging Face `T5Model` whose encoder has one extra
`T5LayerSelfAttention` per global layer, plus a new output layer `dense = nn.Linear(d_model,
vocab)` over the decoder's step-0 state. Their `torch.save(model.state_dict())` names it so:

  [module.][t5.]shared.weight, encoder.block.*, decoder.block.*, *.final_layer_norm.weight
      as Hugging Face T5 (`encoder.embed_tokens.weight` / `decoder.embed_tokens.weight`, tied
      copies of `shared.weight`, are accepted and dropped)
  [module.][t5.]encoder.project_global.{k}.layer_norm.weight        [d_model]
  [module.][t5.]encoder.project_global.{k}.SelfAttention.{q,k,v}.weight  [H*d_kv, d_model]
  [module.][t5.]encoder.project_global.{k}.SelfAttention.o.weight   [d_model, H*d_kv]
  [module.]dense.weight [vocab, d_model], [module.]dense.bias [vocab]

`project_global.{k}` follows encoder block `num_layers - G + k` (G = the number of global
layers), as our `encoder/global_layers_{k}` does; `dense` becomes the untied, biased output layer
`decoder/logits_dense/{kernel, bias}` (`logits_via_embedding=False, logits_bias=True`: no
d_model**-0.5 scaling, as theirs). The result is a `fit5` model (monoT5 output: "true" against
"false") whose feature is the authors' fixed coCondenser range [165, 190].

Files: `.safetensors` (read without torch), or `.bin`/`.pt`/`.pth` only with `allow_pickle=True`
(then `torch.load(weights_only=True)`). A checkpoint is a weights file or a directory whose only
weights file it is; a Hugging Face `config.json` beside it gives what the shapes cannot
(activation, position-bias distance, layer-norm epsilon).
"""

from __future__ import annotations

import json
import os
import struct
import zipfile
from collections.abc import Mapping
from typing import Any

import flax
import numpy as np

from rankt5_jax.checkpoints import formats
from rankt5_jax.data.features import FeatureConfig
from rankt5_jax.errors import CheckpointError
from rankt5_jax.modeling import registry
from rankt5_jax.modeling.network import T5Config

VARIANT = "fit5"
# The authors' inputs: coCondenser scores over one fixed range (data/process_*.py), and their
# final template (t5Dataset_score) with `[CLS]`, the token they added to t5-base's tokenizer
# (id 32100, one past the extra ids), and the word `score:` before the feature.
FEATURES = {
    "mode": "fixed",
    "low": 165.0,
    "high": 190.0,
    "template": "[CLS] Query: {q} Title: {t} score: {f} Passage: {d} Relevant:",
}
CLS_TOKEN = "[CLS]"
SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth")
_MARK = "project_global"
_PREFIXES = ("module.", "t5.")
# Tensors their state dict may hold that carry nothing of their own.
_TIED_COPIES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
_IGNORED = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)


# ----------------------------------------------------------------------------------------------
# Finding and recognising a checkpoint
# ----------------------------------------------------------------------------------------------


def _is_weights_file(name: str) -> bool:
    return name.endswith(SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES)


def weights_file(path: str) -> str | None:
    """The weights file of `path`: the file itself, or a directory's only `.safetensors` (else
    its only `.bin`/`.pt`/`.pth`); None if there is no such single file."""
    if os.path.isfile(path):
        return path if _is_weights_file(path) else None
    if not os.path.isdir(path):
        return None
    names = sorted(n for n in os.listdir(path) if os.path.isfile(os.path.join(path, n)))
    for suffixes in (SAFETENSORS_SUFFIXES, PICKLE_SUFFIXES):
        found = [n for n in names if n.endswith(suffixes)]
        if len(found) == 1:
            return os.path.join(path, found[0])
        if found:
            return None
    return None


def _safetensors_names(path: str) -> list[str]:
    """Tensor names from a safetensors header (the data is not read)."""
    try:
        with open(path, "rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(size))
    except (OSError, struct.error, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from err
    return [name for name in header if name != "__metadata__"]


def _pickle_mentions(path: str, text: str) -> bool:
    """Whether the pickled part of a torch file holds `text`, found by reading its bytes (the
    pickle is never run): `data.pkl` of the zip format, else the start of a legacy file."""
    needle = text.encode()
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
                return any(needle in archive.read(name) for name in pickles)
        with open(path, "rb") as handle:
            return needle in handle.read(64 << 20)
    except (OSError, zipfile.BadZipFile):
        return False


def is_authors_checkpoint(path: str) -> bool:
    """A FiT5 authors' checkpoint: a weights file (or a directory's only one) naming
    `project_global` tensors."""
    file = weights_file(path)
    if file is None:
        return False
    if file.endswith(SAFETENSORS_SUFFIXES):
        try:
            return any(_MARK in name for name in _safetensors_names(file))
        except CheckpointError:
            return False
    return _pickle_mentions(file, _MARK)


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------


def read_state_dict(file: str, allow_pickle: bool = False, lazy: bool = False) -> dict[str, Any]:
    """The tensors of a weights file, names as stored. Pickle files need `allow_pickle`.

    `lazy`: a `.safetensors` file's tensors as memory-mapped `formats.TensorRef`s (nothing read);
    a pickle is always read whole (torch cannot read part of one)."""
    if file.endswith(SAFETENSORS_SUFFIXES):
        return formats.open_safetensors(file) if lazy else formats.read_safetensors(file)
    if not allow_pickle:
        raise CheckpointError(
            f"{file} is a PyTorch pickle file: reading it needs allow_pickle=True in Python or "
            "--allow_pickle on the command line (it is then read with torch.load(weights_only="
            "True)); or convert it to .safetensors"
        )
    return formats.read_torch_bin(file, allow_pickle=True)


def strip_prefixes(tensors: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Drops the DDP `module.` and the wrapper's `t5.` prefixes."""
    out: dict[str, Any] = {}
    for name, value in tensors.items():
        short = name
        for prefix in _PREFIXES:
            if short.startswith(prefix):
                short = short[len(prefix) :]
        if short in out:
            raise CheckpointError(f"{source}: two tensors are named {short} once prefixes go")
        out[short] = value
    return out


def _depth(names: list[str], prefix: str) -> int:
    indices = {int(n[len(prefix) :].split(".")[0]) for n in names if n.startswith(prefix)}
    if indices != set(range(len(indices))):
        raise CheckpointError(f"{prefix}N indices are not 0..{len(indices) - 1}: {sorted(indices)}")
    return len(indices)


def infer_config(
    tensors: Mapping[str, np.ndarray], source: str, hf_config: Mapping[str, Any] | None = None
) -> T5Config:
    """The `T5Config` of an authors' state dict (prefixes stripped), from its shapes.

    v1.0 (`wi`) or v1.1 (`wi_0`, `wi_1`: gated-gelu unless `hf_config` says otherwise); the global
    layers from the `encoder.project_global.{k}` count; an untied output layer with a bias.
    """
    names = list(tensors)

    def shape(name: str) -> tuple[int, ...]:
        if name not in tensors:
            raise CheckpointError(f"{source}: missing tensor {name}; not a FiT5 T5 checkpoint?")
        return tuple(tensors[name].shape)

    try:
        num_layers = _depth(names, "encoder.block.")
        num_decoder_layers = _depth(names, "decoder.block.")
        num_global = _depth(names, f"encoder.{_MARK}.")
    except CheckpointError as err:
        raise CheckpointError(f"{source}: {err}") from err
    if not num_global:
        raise CheckpointError(
            f"{source} has no encoder.{_MARK}.* tensors: not a FiT5 authors' checkpoint"
            + (
                " (older names encoder.project1.. need renaming to encoder.project_global.0..)"
                if any(n.startswith("encoder.project1.") for n in names)
                else ""
            )
        )
    if not num_layers or not num_decoder_layers:
        raise CheckpointError(f"{source}: no encoder.block.* or decoder.block.* tensors")
    vocab, d_model = shape("shared.weight")
    buckets, heads = shape("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
    joined = shape("encoder.block.0.layer.0.SelfAttention.q.weight")[0]
    mlp = "encoder.block.0.layer.1.DenseReluDense."
    if f"{mlp}wi.weight" in tensors:
        proj, d_ff = "relu", shape(f"{mlp}wi.weight")[0]
    else:
        proj, d_ff = "gated-gelu", shape(f"{mlp}wi_0.weight")[0]
        if hf_config and str(hf_config.get("feed_forward_proj", "")).startswith("gated-"):
            proj = hf_config["feed_forward_proj"]
    if joined % heads:
        raise CheckpointError(f"{source}: q projection width {joined} is not a multiple of {heads}")
    hf = dict(hf_config or {})
    hf.update(
        vocab_size=vocab,
        d_model=d_model,
        d_kv=joined // heads,
        d_ff=d_ff,
        num_layers=num_layers,
        num_decoder_layers=num_decoder_layers,
        num_heads=heads,
        relative_attention_num_buckets=buckets,
        feed_forward_proj=proj,
        tie_word_embeddings=False,
    )
    hf.pop("scale_decoder_outputs", None)
    config = formats.t5_config_from_hf(hf)
    return config.replace(num_global_layers=num_global, logits_bias=True)


def _name_map(config: T5Config) -> dict[str, tuple[str, bool]]:
    """Our flat param path -> (their name without prefixes, transpose?)."""
    names = formats._name_map(config, with_score_head=False)
    names["decoder/logits_dense/kernel"] = ("dense.weight", True)
    names["decoder/logits_dense/bias"] = ("dense.bias", False)
    for k in range(config.num_global_layers):
        ours, theirs = f"encoder/global_layers_{k}", f"encoder.{_MARK}.{k}"
        names[f"{ours}/pre_attention_layer_norm/scale"] = (f"{theirs}.layer_norm.weight", False)
        for a, b in (("query", "q"), ("key", "k"), ("value", "v"), ("out", "o")):
            names[f"{ours}/attention/{a}/kernel"] = (f"{theirs}.SelfAttention.{b}.weight", True)
    return names


def _expected_shapes(config: T5Config) -> dict[str, tuple[int, ...]]:
    import jax

    model = registry.build_model(registry.make_spec(VARIANT, config, _NoVocab()))
    shapes = jax.eval_shape(
        lambda: model.get_initial_variables(
            jax.random.PRNGKey(0), {"encoder_input_tokens": (1, 1, 4)}
        )["params"]
    )
    flat = flax.traverse_util.flatten_dict(shapes, sep="/")
    return {key: tuple(value.shape) for key, value in flat.items()}


class _NoVocab:
    """Token ids for building a model of the right shapes (ids do not change shapes)."""

    @staticmethod
    def token_id(token: str) -> int:
        del token
        return 0


def _same_values(a: Any, b: Any, rows: int = 4096) -> bool:
    """Whether two 2-D tensors (arrays or `TensorRef`s) are equal, read `rows` rows at a time."""
    if tuple(a.shape) != tuple(b.shape):
        return False
    return all(
        np.array_equal(np.asarray(a[start : start + rows]), np.asarray(b[start : start + rows]))
        for start in range(0, a.shape[0], rows)
    )


def param_refs_from_state_dict(
    tensors: Mapping[str, Any], config: T5Config, source: str
) -> dict[str, Any]:
    """Our parameter tree over an authors' state dict (prefixes stripped; arrays or
    `formats.TensorRef`s) as `TensorRef` leaves, checking that every tensor is there, none is
    left over, and every shape is the model's; reads nothing but the tied copies' checks."""
    names = _name_map(config)
    expected = _expected_shapes(config)
    if set(names) != set(expected):  # the name map and the network disagree: a bug here
        raise CheckpointError(
            f"internal: FiT5 name map differs from the network: "
            f"{sorted(set(names) ^ set(expected))[:3]}"
        )
    missing = sorted(theirs for theirs, _ in names.values() if theirs not in tensors)
    if missing:
        raise CheckpointError(
            f"{source} lacks {len(missing)} tensor(s) of a FiT5 checkpoint with "
            f"{config.num_encoder_layers}+{config.num_decoder_layers} layers and "
            f"{config.num_global_layers} global layers: {', '.join(missing[:4])}"
            + (", ..." if len(missing) > 4 else "")
        )
    for name in _TIED_COPIES:
        if name in tensors and not _same_values(tensors[name], tensors["shared.weight"]):
            raise CheckpointError(f"{source}: {name} differs from shared.weight (untied)")
    used = {theirs for theirs, _ in names.values()} | set(_TIED_COPIES) | set(_IGNORED)
    unexpected = sorted(set(tensors) - used)
    if unexpected:
        raise CheckpointError(
            f"{source} has {len(unexpected)} unexpected tensor(s) for FiT5: "
            f"{', '.join(unexpected[:4])}" + (", ..." if len(unexpected) > 4 else "")
        )
    flat = {}
    for ours, (theirs, transpose) in names.items():
        value = tensors[theirs]
        ref = formats.tensor_ref(value, transpose, f"{source}:{theirs}")
        if tuple(ref.shape) != expected[ours]:
            want = expected[ours][::-1] if transpose else expected[ours]
            raise CheckpointError(
                f"{source}: {theirs} has shape {tuple(value.shape)}, expected "
                f"{tuple(want)} (d_model {config.emb_dim}, heads x d_kv "
                f"{config.num_heads}x{config.head_dim}, d_ff {config.mlp_dim}, "
                f"vocab {config.vocab_size})"
            )
        flat[tuple(ours.split("/"))] = ref
    return flax.traverse_util.unflatten_dict(flat)


def params_from_state_dict(
    tensors: Mapping[str, Any], config: T5Config, source: str
) -> dict[str, Any]:
    """Our float32 parameter tree from an authors' state dict (prefixes stripped), checked as
    `param_refs_from_state_dict` does."""
    return formats.to_numpy(param_refs_from_state_dict(tensors, config, source))


def _hf_config_beside(file: str) -> dict[str, Any] | None:
    path = os.path.join(os.path.dirname(file), "config.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as handle:
            hf = json.load(handle)
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: unreadable ({err})") from err
    return hf if isinstance(hf, dict) and hf.get("model_type", "t5") in ("t5", "mt5") else None


def load_fit5(
    path: str | os.PathLike, allow_pickle: bool = False, lazy: bool = False
) -> tuple[T5Config, Any]:
    """-> (config, params as float32 numpy) of an authors' checkpoint (file or directory);
    `lazy`: params as `formats.TensorRef`s (a `.safetensors` file is then memory-mapped, not
    read)."""
    path = os.fspath(path)
    file = weights_file(path)
    if file is None:
        raise CheckpointError(
            f"{path}: no FiT5 weights file (one .safetensors, .bin, .pt or .pth, or a directory "
            "holding exactly one)"
        )
    tensors = strip_prefixes(read_state_dict(file, allow_pickle, lazy), file)
    config = infer_config(tensors, file, _hf_config_beside(file))
    refs = param_refs_from_state_dict(tensors, config, file)
    return config, refs if lazy else formats.to_numpy(refs)


def load_fit5_spec(
    path: str | os.PathLike, vocab: Any, allow_pickle: bool = False, lazy: bool = False
) -> tuple[dict[str, Any], Any]:
    """-> (spec, params; `lazy`: as in `load_fit5`) of a `fit5` model as the authors ran it:
    "true"/"false" ids looked up in `vocab`, their template (`[CLS]` as id `vocab.size`,
    `score:`) and fixed feature range [165, 190], and their ranking by the raw "true" logit
    (`score="true_logit"`)."""
    config, params = load_fit5(path, allow_pickle, lazy)
    if vocab.size >= config.vocab_size:
        raise CheckpointError(
            f"{path}: the authors' {CLS_TOKEN} is id {vocab.size} (after the vocabulary's "
            f"{vocab.size} ids), outside the model's {config.vocab_size} embeddings: wrong "
            "vocabulary?"
        )
    spec = registry.make_spec(VARIANT, config, vocab)
    spec["features"] = FeatureConfig(**FEATURES, added_tokens={CLS_TOKEN: vocab.size}).to_dict()
    spec["score"] = "true_logit"  # their inference ranks by the raw "true" logit
    return spec, params
