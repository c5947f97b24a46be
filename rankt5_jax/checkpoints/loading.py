"""Loading any checkpoint kind: our model directories, Hugging Face T5 directories, T5X checkpoints.

Both the `Ranker` (serving) and the training loop (`init_checkpoint`) load through here.

Onto a mesh (`load_checkpoint(..., target=...)`), no device and no host buffer ever holds the
whole model, and no device more of a parameter than its shard: our model directories and T5X
Orbax checkpoints restore with target shardings (orbax reads each device's slices);
safetensors (Hugging Face, FiT5 authors') are memory-mapped and zarr arrays (legacy T5X) opened,
and `place_params` reads each device's slice of each array by itself. Only a FiT5 authors'
pickle (`.bin`/`.pt`) is read whole into host memory first (torch cannot read part of one).

From a bucket (`gs://`, see `data.paths`): our model directories are read in place (orbax reads
the bucket itself, each device's slices only); Hugging Face, T5X and FiT5 authors' checkpoints
are first copied to a local folder of this process (`paths.cache_dir`) and read from there.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import flax
import numpy as np

from rankt5_jax.checkpoints import fit5, formats, model_dir, t5x_checkpoints
from rankt5_jax.data import paths
from rankt5_jax.data.vocab import Vocabulary
from rankt5_jax.errors import CheckpointError
from rankt5_jax.modeling import registry


def checkpoint_kind(path: str) -> str:
    """`rankt5` (our training dir), `fit5` (the FiT5 authors' PyTorch checkpoint), `hf` (Hugging
    Face dir) or `t5x` (either T5X layout), in that order.

    `fit5`: a `.safetensors`/`.bin`/`.pt`/`.pth` file, or a directory whose only such file it is,
    naming `project_global` tensors (read from the safetensors header or the pickle's bytes,
    never unpickled). It comes before `hf`, so a `config.json` beside it (their `--config`) is
    read as its settings, not as a Hugging Face model.
    """
    if os.path.isfile(path):
        if fit5.is_authors_checkpoint(path):
            return "fit5"
        raise CheckpointError(
            f"{path} is a file: the only checkpoint file read is a FiT5 authors' state dict "
            "(.safetensors, .bin, .pt or .pth with encoder.project_global tensors); "
            "other kinds are directories"
        )
    if paths.isfile(paths.join(path, model_dir.SPEC_FILE)):
        return "rankt5"
    if fit5.is_authors_checkpoint(path):
        return "fit5"
    if os.path.isfile(os.path.join(path, "config.json")):
        return "hf"
    if t5x_checkpoints.is_t5x_checkpoint(path):
        return "t5x"
    raise CheckpointError(
        f"{path} holds no checkpoint: neither a rankt5_jax model directory ({model_dir.SPEC_FILE}), "
        "a Hugging Face T5 directory (config.json), a T5X checkpoint (checkpoint or state/) nor "
        "a FiT5 authors' checkpoint (one .safetensors/.bin with encoder.project_global tensors)"
    )


def load_checkpoint(
    path: str | os.PathLike,
    variant: str | None = None,
    vocab: str | os.PathLike | None = None,
    score_token: str = registry.SCORE_TOKEN,
    step: int | None = None,
    allow_pickle: bool = False,
    target: Callable[[dict[str, Any]], Any] | None = None,
) -> tuple[dict[str, Any], Any, Vocabulary]:
    """-> (spec, params as numpy, vocabulary) of a checkpoint directory of any kind.

    Args:
      path: our model directory, a Hugging Face T5 directory, a T5X checkpoint directory, or a
        FiT5 authors' checkpoint (a weights file, or a directory holding one).
      variant: checked against the checkpoint where it says; else read from it.
      vocab: SentencePiece model, where the directory has no `spiece.model`.
      score_token: the EncDec score token of Hugging Face and T5X checkpoints.
      step: for our model directories, the step (default: the latest).
      allow_pickle: a FiT5 authors' `.bin`/`.pt` may be read (`torch.load(weights_only=True)`).
      target: spec -> the params' layout on devices (`jax.ShapeDtypeStruct`s with shardings,
        as `Ranker.abstract_params` gives); then params are jax arrays placed so, each device's
        slices read by itself (see the module's notes).
    """
    path = _readable(os.fspath(path))
    if variant is not None:
        registry.get(variant)
    kind = checkpoint_kind(path)
    folder = path if paths.isdir(path) else paths.dirname(path)
    vocab_path = os.fspath(vocab) if vocab else paths.join(folder, model_dir.VOCAB_FILE)
    if not paths.isfile(vocab_path):
        raise CheckpointError(
            f"{path} has no {model_dir.VOCAB_FILE}: give the vocabulary "
            "(--vocab on the command line, vocab= in Python)"
        )
    vocabulary = Vocabulary(vocab_path)  # a bucket model: copied to this host
    lazy = target is not None
    if kind == "rankt5":
        spec = model_dir.read_spec(path)
        if variant is not None and variant != spec.get("variant"):
            raise CheckpointError(f"{path} holds a {spec.get('variant')!r} model, not {variant!r}")
        abstract = target(spec) if lazy else None
        spec, params = model_dir.load_model_dir(path, step=step, abstract=abstract)
        return spec, params, vocabulary
    if kind == "fit5":
        if variant is not None and variant != fit5.VARIANT:
            raise CheckpointError(
                f"{path} holds a FiT5 authors' ({fit5.VARIANT!r}) model, not {variant!r}"
            )
        spec, params = fit5.load_fit5_spec(path, vocabulary, allow_pickle, lazy=lazy)
    elif kind == "hf":
        config, params, found = formats.load_hf(path, variant, lazy=lazy)
        spec = registry.make_spec(found, config, vocabulary, score_token)
        # what our export recorded (template, token ids, loss): an old-template monoT5 or a
        # custom score token loads as it was saved; a score token asked for here still wins
        recorded = formats.hf_spec_values(path, found)
        if score_token != registry.SCORE_TOKEN:
            asked = registry.get(found).spec_token_ids(vocabulary, score_token)
            recorded = {k: v for k, v in recorded.items() if k not in asked}
        spec.update(recorded)
    else:
        params = t5x_checkpoints.load_t5x(path, lazy=lazy)
        found = t5x_checkpoints.t5x_variant(params, variant, path)
        spec = registry.make_spec(found, formats.infer_config(params), vocabulary, score_token)
    if lazy:
        params = place_params(params, target(spec), path)
    return spec, params, vocabulary


def _readable(path: str) -> str:
    """`path` if it exists locally or is our model directory in a bucket; a local copy of any
    other checkpoint in a bucket (`CheckpointError` if there is nothing at `path`)."""
    if not paths.isdir(path) and not paths.isfile(path):
        raise CheckpointError(f"checkpoint directory not found: {path}")
    if not paths.is_remote(path) or paths.isfile(paths.join(path, model_dir.SPEC_FILE)):
        return path
    local = os.path.join(paths.cache_dir(path, "checkpoint"), paths.basename(path))
    if paths.isfile(path):
        paths.copy(path, local)
    else:
        paths.download_tree(path, local)
    return local


def place_params(params: Any, abstract: Any, source: str) -> Any:
    """Puts a params tree (`formats.TensorRef`/`formats.OrbaxRef` leaves, or arrays) on devices
    laid out as `abstract` (`jax.ShapeDtypeStruct`s with shardings), as float32 jax arrays.

    Each device gets only its slice, read by itself (`jax.make_array_from_callback`; a slice
    replicated on several devices is read once); Orbax leaves are restored in one call with
    their shardings. Names and shapes must be the model's.
    """
    import jax

    flat = flax.traverse_util.flatten_dict(params, sep="/")
    wanted = flax.traverse_util.flatten_dict(flax.core.unfreeze(abstract), sep="/")
    missing = sorted(set(wanted) - set(flat))
    unexpected = sorted(set(flat) - set(wanted))
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: parameters differ from the model's: "
            + "; ".join(
                f"{what} {len(keys)} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
                for what, keys in (("missing", missing), ("unexpected", unexpected))
                if keys
            )
        )
    for key, leaf in flat.items():
        if tuple(leaf.shape) != tuple(wanted[key].shape):
            raise CheckpointError(
                f"{source}: {key} has shape {tuple(leaf.shape)}, the model wants "
                f"{tuple(wanted[key].shape)}"
            )
    placed: dict[str, Any] = {}
    orbax_keys = [key for key, leaf in flat.items() if isinstance(leaf, formats.OrbaxRef)]
    if orbax_keys:
        targets = [
            jax.ShapeDtypeStruct(wanted[key].shape, np.float32, sharding=wanted[key].sharding)
            for key in orbax_keys
        ]
        restored = t5x_checkpoints.restore_orbax_refs([flat[key] for key in orbax_keys], targets)
        placed.update(zip(orbax_keys, restored))
    for key, leaf in flat.items():
        if key in placed:
            continue
        if not isinstance(leaf, formats.TensorRef):
            leaf = formats.TensorRef(np.asarray(leaf), name=key)
        placed[key] = jax.make_array_from_callback(
            tuple(wanted[key].shape), wanted[key].sharding, _slice_reader(leaf)
        )
    return flax.traverse_util.unflatten_dict(placed, sep="/")


def _slice_reader(ref: formats.TensorRef) -> Callable[[Any], np.ndarray]:
    """`index -> float32 slice` of `ref`, reading each distinct slice once (replicas share it)."""
    cache: dict[tuple, np.ndarray] = {}

    def read(index: tuple) -> np.ndarray:
        key = tuple((s.start, s.stop, s.step) if isinstance(s, slice) else s for s in index)
        if key not in cache:
            cache[key] = np.asarray(ref[index], np.float32)
        return cache[key]

    return read


def load_pretrained(path: str, allow_pickle: bool = False) -> Any:
    """Params of a pretrained checkpoint: our model dir, a Hugging Face dir, a T5X checkpoint or
    a FiT5 authors' checkpoint (`allow_pickle` for its `.bin`/`.pt`)."""
    path = _readable(path)
    kind = checkpoint_kind(path)
    if kind == "rankt5":
        return model_dir.load_model_dir(path)[1]
    if kind == "fit5":
        return fit5.load_fit5(path, allow_pickle)[1]
    if kind == "hf":
        return formats.load_hf(path, "encdec")[1]
    return t5x_checkpoints.load_t5x(path)


def check_vocabulary(init_checkpoint: str, vocab_path: str) -> None:
    """`CheckpointError` if `init_checkpoint` carries a SentencePiece model (`spiece.model`:
    ours, Hugging Face) whose pieces differ from `vocab_path`'s: its embeddings would be read
    through another vocabulary's ids. Checkpoints without one (T5X) are not checked."""
    own = paths.join(init_checkpoint, model_dir.VOCAB_FILE)
    if not paths.isdir(init_checkpoint) or not paths.isfile(own):
        return
    theirs, ours = Vocabulary(own).pieces(), Vocabulary(vocab_path).pieces()
    if theirs != ours:
        first = next(
            (i for i, (a, b) in enumerate(zip(theirs, ours)) if a != b), min(len(theirs), len(ours))
        )
        raise CheckpointError(
            f"init_checkpoint {init_checkpoint}: its vocabulary ({own}, {len(theirs)} "
            f"pieces) is not the training data's ({vocab_path}, {len(ours)} pieces; first "
            f"difference at id {first}): train with the checkpoint's vocabulary"
        )


def merge_params(fresh: Any, loaded: Any, source: str) -> tuple[Any, list[str]]:
    """Takes every array of `loaded` whose path and shape exist in `fresh`; reports the rest."""
    flat_fresh = flax.traverse_util.flatten_dict(fresh, sep="/")
    flat_loaded = flax.traverse_util.flatten_dict(loaded, sep="/")
    fresh_only = []
    for key, value in flat_fresh.items():
        if key in flat_loaded:
            if tuple(flat_loaded[key].shape) != tuple(value.shape):
                raise CheckpointError(
                    f"{source}: {key} has shape {flat_loaded[key].shape}, model wants {value.shape}"
                )
            flat_fresh[key] = np.asarray(flat_loaded[key], np.float32)
        else:
            fresh_only.append(key)
    if len(fresh_only) == len(flat_fresh):
        raise CheckpointError(f"{source}: no parameter matches the model")
    return flax.traverse_util.unflatten_dict(flat_fresh, sep="/"), fresh_only
