"""Weights in and out: Hugging Face T5 directories, T5X checkpoints, and config inference.

Formats read (never pickle):
  * Hugging Face: `config.json` + `model.safetensors` (or a sharded `model.safetensors.index.json`),
    parsed here with numpy (float32, float16, bfloat16 via ml_dtypes): torch is never imported.
  * T5X checkpoints (legacy msgpack + zarr, and Orbax): `checkpoints/t5x_checkpoints.py`, over
    this module's lazy leaves.

Parameter trees are T5X-shaped nested dicts of numpy arrays (see `network.py`). With `lazy=True`
the loaders return the same trees with `TensorRef` leaves (safetensors memory-mapped, zarr arrays
opened, nothing read) or `OrbaxRef` leaves (T5X Orbax), so `loading.place_params` can read each
device's slice of each array by itself and a model never passes through one device or host whole.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
from collections.abc import Mapping
from typing import Any

import flax
import numpy as np

from rankt5_jax.errors import CheckpointError
from rankt5_jax.modeling import registry
from rankt5_jax.modeling.network import T5Config

Params = dict[str, Any]


_SAFETENSORS_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


# ----------------------------------------------------------------------------------------------
# safetensors
# ----------------------------------------------------------------------------------------------


class TensorRef:
    """A stored array read on demand: its `shape`, and any slice as float32 (integers as stored).

    Args:
      source: a numpy array or memory map (a safetensors tensor) or a tensorstore array (a T5X
        zarr array); nothing is read until a slice is asked for.
      transpose: read it as its transpose (Hugging Face keeps kernels `[out, in]`).
      name: for error messages.

    `ref[index]` reads only `index` (a tuple of slices, as `jax.make_array_from_callback` gives),
    so each device's shard of a sharded parameter is read by itself; `ref.read()` reads it whole.
    """

    def __init__(self, source: Any, transpose: bool = False, name: str = ""):
        self.source = source
        self.transpose = transpose
        self.name = name
        shape = tuple(int(n) for n in source.shape)
        self.shape = shape[::-1] if transpose else shape

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def transposed(self) -> TensorRef:
        return TensorRef(self.source, not self.transpose, self.name)

    def __getitem__(self, index: Any) -> np.ndarray:
        index = tuple(index) if isinstance(index, tuple) else (index,)
        index = index + (slice(None),) * (self.ndim - len(index))
        if self.transpose:
            index = index[::-1]
        try:
            part = self.source[index]
            if hasattr(part, "read"):  # tensorstore: read just this region
                part = part.read().result()
            part = np.asarray(part)
        except Exception as err:
            raise CheckpointError(f"cannot read {self.name or 'an array'}: {err}") from err
        if self.transpose:
            part = part.T
        if part.dtype.kind in "fV":  # float16/bfloat16/float64 -> float32 (always a copy)
            return part.astype(np.float32)
        return np.array(part)  # a copy: never a view of a memory map

    def read(self) -> np.ndarray:
        return self[()]

    def __repr__(self) -> str:
        return f"TensorRef({self.name!r}, shape={self.shape}, transpose={self.transpose})"


@dataclasses.dataclass(frozen=True)
class OrbaxRef:
    """An array in an Orbax checkpoint, not read: `loading.place_params` restores every such leaf
    in one call with its target sharding (orbax reads each device's slices)."""

    directory: str
    path: tuple[str, ...]  # its key path in the checkpoint's tree
    shape: tuple[int, ...]

    @property
    def ndim(self) -> int:
        return len(self.shape)


def to_numpy(tree: Any) -> Any:
    """A tree of `TensorRef`s (or arrays) read whole, as float32 numpy."""
    if isinstance(tree, dict):
        return {key: to_numpy(value) for key, value in tree.items()}
    if isinstance(tree, TensorRef):
        return tree.read()
    if isinstance(tree, OrbaxRef):
        raise CheckpointError(f"internal: {tree.path} is placed by place_params, not read")
    return tree


def open_safetensors(path: str) -> dict[str, TensorRef]:
    """The tensors of a `.safetensors` file, memory-mapped (nothing is read but the header);
    validates the layout.

    Raises:
      CheckpointError: the file is missing, truncated, or its header is inconsistent.
    """
    import ml_dtypes

    dtypes = dict(_SAFETENSORS_DTYPES, BF16=ml_dtypes.bfloat16)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes)")
            (header_len,) = struct.unpack("<Q", head)
            if header_len > size - 8:
                raise CheckpointError(f"{path}: truncated safetensors header")
            raw_header = handle.read(header_len)
    except OSError as err:
        raise CheckpointError(f"cannot read {path}: {err}") from err
    try:
        header = json.loads(raw_header)
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
    except (UnicodeDecodeError, ValueError) as err:
        raise CheckpointError(f"{path}: corrupt safetensors header ({err})") from err
    body_len = size - 8 - header_len
    if body_len:
        body = np.memmap(path, np.uint8, mode="r", offset=8 + header_len, shape=(body_len,))
    else:
        body = np.zeros(0, np.uint8)
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = dtypes.get(info.get("dtype"))
            if dtype is None:
                raise CheckpointError(
                    f"{path}: tensor {name} has unsupported dtype {info.get('dtype')}"
                )
            start, end = (int(n) for n in info["data_offsets"])
            shape = tuple(int(n) for n in info["shape"])
        except (AttributeError, KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{path}: corrupt safetensors header at {name} ({err})") from err
        expected = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if not 0 <= start <= end <= body_len or end - start != expected:
            raise CheckpointError(f"{path}: tensor {name} is truncated or inconsistent")
        array = body[start:end].view(dtype).reshape(shape)
        tensors[name] = TensorRef(array, name=f"{path}:{name}")
    return tensors


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """Reads a `.safetensors` file into numpy arrays as stored (float32, float16, bfloat16 via
    ml_dtypes, integers), validating its layout (see `open_safetensors`)."""
    return {name: np.array(ref.source) for name, ref in open_safetensors(path).items()}


def _hf_files(model_dir: str) -> list[str]:
    single = os.path.join(model_dir, "model.safetensors")
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.isfile(single):
        return [single]
    if os.path.isfile(index):
        try:
            with open(index) as handle:
                weight_map = json.load(handle)["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise CheckpointError(f"{index}: unreadable index ({err})") from err
        return [os.path.join(model_dir, shard) for shard in sorted(set(weight_map.values()))]
    if os.path.isfile(os.path.join(model_dir, "pytorch_model.bin")):
        raise CheckpointError(
            f"{model_dir} holds only pytorch_model.bin (pickle); convert it to safetensors with "
            "transformers (`save_pretrained(safe_serialization=True)`) or call "
            "rankt5_jax.checkpoints.read_torch_bin(path, allow_pickle=True) explicitly"
        )
    raise CheckpointError(f"{model_dir}: no model.safetensors found")


def open_hf_tensors(model_dir: str) -> dict[str, TensorRef]:
    """The tensors of a Hugging Face directory (one or several safetensors files), memory-mapped."""
    tensors: dict[str, TensorRef] = {}
    for file in _hf_files(model_dir):
        tensors.update(open_safetensors(file))
    return tensors


def read_hf_tensors(model_dir: str) -> dict[str, np.ndarray]:
    return {name: np.array(ref.source) for name, ref in open_hf_tensors(model_dir).items()}


def read_torch_bin(path: str, allow_pickle: bool = False) -> dict[str, np.ndarray]:
    """Reads a PyTorch `.bin` state dict; only with an explicit flag, and `weights_only=True`."""
    if not allow_pickle:
        raise CheckpointError(f"{path}: reading a pickle file needs allow_pickle=True")
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError for anything but tensors and plain containers
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        reason = next(
            (line for line in lines if "Unpickler error" in line), lines[0] if lines else ""
        )
        raise CheckpointError(
            f"{path}: refused or unreadable with weights_only=True ({reason})"
        ) from err
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors")
    return {name: value.float().numpy() for name, value in state.items()}


# ----------------------------------------------------------------------------------------------
# Hugging Face <-> T5X names
# ----------------------------------------------------------------------------------------------


# Spec keys recorded in an export's config.json (`rankt5_spec`) besides the variant: the score's
# token ids, the input template, the Enc pooling. The T5 config is config.json itself.
HF_SPEC_KEY = "rankt5_spec"
HF_MAX_LENGTH = 512  # T5's `n_positions` (T5's config.json files have it; pyterrier-t5 reads it)


def hf_scales_logits(hf: Mapping[str, Any]) -> bool:
    """Whether the output is `shared.attend(y) * d^-0.5` (T5 v1.0) rather than an unscaled head.

    transformers 4 signals this with `tie_word_embeddings`; transformers 5 always ties and writes
    `scale_decoder_outputs` instead.
    """
    if "scale_decoder_outputs" in hf:
        return bool(hf["scale_decoder_outputs"])
    return bool(hf.get("tie_word_embeddings", True))


def t5_config_from_hf(hf: Mapping[str, Any]) -> T5Config:
    """Maps a transformers `T5Config` dict to ours."""
    proj = hf.get("feed_forward_proj", "relu")
    if proj == "relu":
        activations: tuple[str, ...] = ("relu",)
    elif proj in ("gated-gelu", "gated-gelu_new"):
        activations = ("gelu", "linear")
    elif proj == "gated-relu":
        activations = ("relu", "linear")
    elif proj == "gated-silu":
        activations = ("silu", "linear")
    else:
        raise CheckpointError(f"unsupported feed_forward_proj {proj!r}")
    num_layers = hf["num_layers"]
    return T5Config(
        vocab_size=hf["vocab_size"],
        emb_dim=hf["d_model"],
        num_heads=hf["num_heads"],
        num_encoder_layers=num_layers,
        num_decoder_layers=hf.get("num_decoder_layers") or num_layers,
        head_dim=hf["d_kv"],
        mlp_dim=hf["d_ff"],
        mlp_activations=activations,
        dropout_rate=hf.get("dropout_rate", 0.1),
        logits_via_embedding=hf_scales_logits(hf),
        relative_attention_num_buckets=hf.get("relative_attention_num_buckets", 32),
        relative_attention_max_distance=hf.get("relative_attention_max_distance", 128),
        layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-6),
        pooling=(hf.get(HF_SPEC_KEY) or {}).get("pooling", "first"),
    )


def hf_config_from_t5(
    cfg: T5Config, variant: str, spec: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The transformers `T5Config` dict of `cfg`; `spec` (a model spec) is recorded under
    `rankt5_spec` without its T5 config (`hf_spec_values` reads it back)."""
    acts = cfg.mlp_activations
    if acts == ("relu",):
        proj = "relu"
    elif len(acts) == 2 and acts[1] == "linear":
        proj = {"gelu": "gated-gelu", "gelu_new": "gated-gelu", "relu": "gated-relu"}.get(acts[0])
        proj = proj or f"gated-{acts[0]}"
    else:
        raise CheckpointError(f"activations {acts} have no Hugging Face equivalent")
    return {
        "architectures": [registry.get(variant).hf_architecture],
        "model_type": "t5",
        "vocab_size": cfg.vocab_size,
        "d_model": cfg.emb_dim,
        "d_kv": cfg.head_dim,
        "d_ff": cfg.mlp_dim,
        "num_layers": cfg.num_encoder_layers,
        "num_decoder_layers": cfg.num_decoder_layers if cfg.has_decoder else cfg.num_encoder_layers,
        "num_heads": cfg.num_heads,
        "relative_attention_num_buckets": cfg.relative_attention_num_buckets,
        "relative_attention_max_distance": cfg.relative_attention_max_distance,
        "dropout_rate": cfg.dropout_rate,
        "layer_norm_epsilon": cfg.layer_norm_epsilon,
        "feed_forward_proj": proj,
        "tie_word_embeddings": cfg.logits_via_embedding,
        "is_encoder_decoder": True,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "decoder_start_token_id": 0,
        "n_positions": HF_MAX_LENGTH,
        "rankt5_variant": variant,
        **({HF_SPEC_KEY: recorded} if (recorded := _recorded_spec(cfg, spec)) else {}),
    }


def _recorded_spec(cfg: T5Config, spec: Mapping[str, Any] | None) -> dict[str, Any]:
    """The spec's options (not its T5 config or variant) and, for an encoder-only model, the
    pooling of its score head, which a transformers `T5Config` has no field for."""
    recorded = {k: v for k, v in (spec or {}).items() if k not in ("t5", "variant")}
    if not cfg.has_decoder:
        recorded["pooling"] = cfg.pooling
    return recorded


def hf_spec_values(model_dir: str, variant: str) -> dict[str, Any]:
    """The model options an export recorded in its `config.json` (`rankt5_spec`: token ids,
    template, loss) where it holds a `variant` model; `{}` otherwise (a directory written by
    transformers, or read as another variant)."""
    try:
        with open(os.path.join(model_dir, "config.json")) as handle:
            hf = json.load(handle)
        recorded = hf.get(HF_SPEC_KEY) or {}
    except (OSError, ValueError, AttributeError):
        return {}
    if hf.get("rankt5_variant") != variant or not isinstance(recorded, dict):
        return {}
    return {k: v for k, v in recorded.items() if k != "pooling"}


def _name_map(cfg: T5Config, with_score_head: bool) -> dict[str, tuple[str, bool]]:
    """Our flat param path -> (Hugging Face tensor name, transpose?)."""
    names: dict[str, tuple[str, bool]] = {"token_embedder/embedding": ("shared.weight", False)}
    if len(cfg.mlp_activations) == 1:
        mlp = {"wi": "wi"}
    else:
        mlp = {f"wi_{i}": f"wi_{i}" for i in range(len(cfg.mlp_activations))}
    mlp["wo"] = "wo"

    def attention(ours: str, theirs: str):
        for a, b in (("query", "q"), ("key", "k"), ("value", "v"), ("out", "o")):
            names[f"{ours}/{a}/kernel"] = (f"{theirs}.{b}.weight", True)

    stacks = [("encoder", cfg.num_encoder_layers)]
    if cfg.has_decoder:
        stacks.append(("decoder", cfg.num_decoder_layers))
    for stack, depth in stacks:
        names[f"{stack}/relpos_bias/rel_embedding"] = (
            f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
            True,
        )
        norm = "encoder_norm" if stack == "encoder" else "decoder_norm"
        names[f"{stack}/{norm}/scale"] = (f"{stack}.final_layer_norm.weight", False)
        for i in range(depth):
            ours, theirs = f"{stack}/layers_{i}", f"{stack}.block.{i}.layer"
            if stack == "encoder":
                names[f"{ours}/pre_attention_layer_norm/scale"] = (
                    f"{theirs}.0.layer_norm.weight",
                    False,
                )
                attention(f"{ours}/attention", f"{theirs}.0.SelfAttention")
                mlp_idx = 1
            else:
                names[f"{ours}/pre_self_attention_layer_norm/scale"] = (
                    f"{theirs}.0.layer_norm.weight",
                    False,
                )
                attention(f"{ours}/self_attention", f"{theirs}.0.SelfAttention")
                names[f"{ours}/pre_cross_attention_layer_norm/scale"] = (
                    f"{theirs}.1.layer_norm.weight",
                    False,
                )
                attention(f"{ours}/encoder_decoder_attention", f"{theirs}.1.EncDecAttention")
                mlp_idx = 2
            names[f"{ours}/pre_mlp_layer_norm/scale"] = (
                f"{theirs}.{mlp_idx}.layer_norm.weight",
                False,
            )
            for a, b in mlp.items():
                names[f"{ours}/mlp/{a}/kernel"] = (
                    f"{theirs}.{mlp_idx}.DenseReluDense.{b}.weight",
                    True,
                )
    if cfg.has_decoder and not cfg.logits_via_embedding:
        names["decoder/logits_dense/kernel"] = ("lm_head.weight", True)
    if with_score_head:
        names["score_head/kernel"] = ("classifier.weight", True)
        names["score_head/bias"] = ("classifier.bias", False)
    return names


def tensor_ref(value: Any, transpose: bool = False, name: str = "") -> TensorRef:
    """`value` (an array or a `TensorRef`) as a `TensorRef`, transposed if asked."""
    ref = value if isinstance(value, TensorRef) else TensorRef(np.asarray(value), name=name)
    return ref.transposed() if transpose else ref


def hf_param_refs(
    tensors: Mapping[str, Any], cfg: T5Config, with_score_head: bool, source: str = ""
) -> Params:
    """Our parameter tree over Hugging Face tensors (arrays or `TensorRef`s), as `TensorRef`
    leaves (kernels transposed on read), checking every name; nothing is read."""
    flat = {}
    missing = []
    for ours, (theirs, transpose) in _name_map(cfg, with_score_head).items():
        if theirs not in tensors:
            missing.append(theirs)
            continue
        flat[tuple(ours.split("/"))] = tensor_ref(tensors[theirs], transpose, theirs)
    if missing:
        raise CheckpointError(
            f"{source or 'checkpoint'} lacks {len(missing)} tensors, e.g. {missing[:3]}; "
            "is it the right variant?"
        )
    return flax.traverse_util.unflatten_dict(flat)


def params_from_hf_tensors(
    tensors: Mapping[str, Any], cfg: T5Config, with_score_head: bool, source: str = ""
) -> Params:
    """Builds our parameter tree from Hugging Face tensors (float32), checking every name."""
    return to_numpy(hf_param_refs(tensors, cfg, with_score_head, source))


def hf_tensors_from_params(params: Params, cfg: T5Config, with_score_head: bool) -> dict:
    flat = flax.traverse_util.flatten_dict(params, sep="/")
    out = {}
    for ours, (theirs, transpose) in _name_map(cfg, with_score_head).items():
        value = np.asarray(flat[ours], np.float32)
        out[theirs] = np.ascontiguousarray(value.T if transpose else value)
    return out


def params_left_out(params: Params, cfg: T5Config, with_score_head: bool) -> list[str]:
    """Our parameters a Hugging Face export has no tensor for (a UR2N model's XTR layer)."""
    mapped = set(_name_map(cfg, with_score_head))
    flat = flax.traverse_util.flatten_dict(params, sep="/")
    return sorted(name for name in flat if name not in mapped)


def load_hf(
    model_dir: str, variant: str | None = None, lazy: bool = False
) -> tuple[T5Config, Params, str]:
    """Reads a Hugging Face T5 directory -> (config, params, variant); `lazy`: params as
    `TensorRef`s over the memory-mapped files (nothing read)."""
    config_path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(config_path):
        raise CheckpointError(f"{model_dir}: no config.json")
    with open(config_path) as handle:
        hf = json.load(handle)
    if hf.get("model_type", "t5") not in ("t5", "mt5"):
        raise CheckpointError(f"{config_path}: model_type {hf.get('model_type')!r} is not T5")
    tensors = open_hf_tensors(model_dir)
    stored = hf.get("rankt5_variant")
    if stored is None:
        archs = hf.get("architectures") or []
        stored = "enc" if "classifier.weight" in tensors else "encdec"
        if "T5EncoderModel" in archs and "classifier.weight" not in tensors:
            stored = "enc"
    variant = variant or stored
    cfg = t5_config_from_hf(hf)
    score_head = registry.get(variant).score_head
    if not score_head and not cfg.logits_via_embedding and "lm_head.weight" not in tensors:
        # An unscaled head tied to the embedding (transformers 5 writes v1.1 models this way).
        tensors = dict(tensors, **{"lm_head.weight": tensors["shared.weight"]})
    if score_head:
        cfg = cfg.replace(has_decoder=False)
    params = hf_param_refs(tensors, cfg, score_head, source=model_dir)
    return cfg, params if lazy else to_numpy(params), variant


def save_hf(
    model_dir: str,
    cfg: T5Config,
    params: Params,
    variant: str,
    vocab_path: str | None = None,
    spec: Mapping[str, Any] | None = None,
) -> None:
    """Writes `config.json` + `model.safetensors` loadable by transformers (with a vocabulary:
    `spiece.model` and the tokenizer files `T5Tokenizer` reads); `spec` is recorded in
    `config.json` (`rankt5_spec`)."""
    from safetensors.numpy import save_file

    os.makedirs(model_dir, exist_ok=True)
    tensors = hf_tensors_from_params(params, cfg, registry.get(variant).score_head)
    save_file(tensors, os.path.join(model_dir, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(model_dir, "config.json"), "w") as handle:
        json.dump(hf_config_from_t5(cfg, variant, spec), handle, indent=2)
    if vocab_path:
        import shutil

        shutil.copyfile(vocab_path, os.path.join(model_dir, "spiece.model"))
        save_hf_tokenizer_files(model_dir, vocab_path)


def save_hf_tokenizer_files(model_dir: str, vocab_path: str, extra_ids: int = 100) -> None:
    """`tokenizer_config.json` and `special_tokens_map.json` for transformers' `T5Tokenizer`
    over `spiece.model`: T5's 100 extra ids after the pieces, the model's own pad/EOS/UNK pieces,
    `legacy` SentencePiece encoding (what `data.vocab.Vocabulary` does), 512 tokens."""
    import sentencepiece as spm

    processor = spm.SentencePieceProcessor()
    processor.Load(vocab_path)
    special = {
        "eos_token": processor.IdToPiece(processor.eos_id()),
        "unk_token": processor.IdToPiece(processor.unk_id()),
        "pad_token": processor.IdToPiece(processor.pad_id()),
    }
    extra = [f"<extra_id_{i}>" for i in range(extra_ids)]
    config = {
        "tokenizer_class": "T5Tokenizer",
        "model_max_length": HF_MAX_LENGTH,
        "extra_ids": extra_ids,
        "additional_special_tokens": extra,
        "legacy": True,
        **special,
    }
    for name, content in (
        ("tokenizer_config.json", config),
        ("special_tokens_map.json", {**special, "additional_special_tokens": extra}),
    ):
        with open(os.path.join(model_dir, name), "w") as handle:
            json.dump(content, handle, indent=2)


def infer_config(params: Params, **overrides: Any) -> T5Config:
    """Infers a `T5Config` from a T5X-shaped parameter tree (sizes, depth, v1.0/v1.1)."""
    flat = flax.traverse_util.flatten_dict(params, sep="/")
    try:
        vocab, emb = flat["token_embedder/embedding"].shape
        heads = flat["encoder/relpos_bias/rel_embedding"].shape[0]
        buckets = flat["encoder/relpos_bias/rel_embedding"].shape[1]
        joined = flat["encoder/layers_0/attention/query/kernel"].shape[1]
    except KeyError as err:
        raise CheckpointError(f"not a T5 parameter tree: missing {err}") from err

    def depth(stack):
        return len({k.split("/")[1] for k in flat if k.startswith(f"{stack}/layers_")})

    has_decoder = "decoder/decoder_norm/scale" in flat
    if "encoder/layers_0/mlp/wi/kernel" in flat:
        activations: tuple[str, ...] = ("relu",)
        mlp_dim = flat["encoder/layers_0/mlp/wi/kernel"].shape[1]
    else:
        activations = ("gelu", "linear")
        mlp_dim = flat["encoder/layers_0/mlp/wi_0/kernel"].shape[1]
    values = dict(
        vocab_size=vocab,
        emb_dim=emb,
        num_heads=heads,
        num_encoder_layers=depth("encoder"),
        num_decoder_layers=depth("decoder") if has_decoder else 0,
        head_dim=joined // heads,
        mlp_dim=mlp_dim,
        mlp_activations=activations,
        logits_via_embedding="decoder/logits_dense/kernel" not in flat,
        relative_attention_num_buckets=buckets,
        has_decoder=has_decoder,
    )
    values.update(overrides)
    return T5Config(**values)
