"""Loading any checkpoint kind: our model directories, Hugging Face T5 directories, T5X checkpoints.

Both the `Ranker` (serving) and the training loop (`init_checkpoint`) load through here.
"""

from __future__ import annotations

import os
from typing import Any

import flax
import numpy as np

from rankt5_jax.checkpoints import formats, model_dir
from rankt5_jax.data.vocab import Vocabulary
from rankt5_jax.errors import CheckpointError
from rankt5_jax.modeling import registry


def checkpoint_kind(path: str) -> str:
    """`rankt5` (our training dir), `hf` (Hugging Face dir) or `t5x` (either T5X layout)."""
    if os.path.isfile(os.path.join(path, model_dir.SPEC_FILE)):
        return "rankt5"
    if os.path.isfile(os.path.join(path, "config.json")):
        return "hf"
    if formats.is_t5x_checkpoint(path):
        return "t5x"
    raise CheckpointError(
        f"{path} holds no checkpoint: neither a rankt5_jax model directory ({model_dir.SPEC_FILE}), "
        "a Hugging Face T5 directory (config.json) nor a T5X checkpoint (checkpoint or state/)"
    )


def load_checkpoint(
    path: str | os.PathLike,
    variant: str | None = None,
    vocab: str | os.PathLike | None = None,
    score_token: str = registry.SCORE_TOKEN,
    step: int | None = None,
) -> tuple[dict[str, Any], Any, Vocabulary]:
    """-> (spec, params as numpy, vocabulary) of a checkpoint directory of any kind.

    Args:
      path: our model directory, a Hugging Face T5 directory or a T5X checkpoint directory.
      variant: checked against the checkpoint where it says; else read from it.
      vocab: SentencePiece model, where the directory has no `spiece.model`.
      score_token: the EncDec score token of Hugging Face and T5X checkpoints.
      step: for our model directories, the step (default: the latest).
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise CheckpointError(f"checkpoint directory not found: {path}")
    if variant is not None:
        registry.get(variant)
    kind = checkpoint_kind(path)
    vocab_path = os.fspath(vocab) if vocab else os.path.join(path, model_dir.VOCAB_FILE)
    if not os.path.isfile(vocab_path):
        raise CheckpointError(
            f"{path} has no {model_dir.VOCAB_FILE}: give the vocabulary "
            "(--vocab on the command line, vocab= in Python)"
        )
    vocabulary = Vocabulary(vocab_path)
    if kind == "rankt5":
        spec, params = model_dir.load_model_dir(path, step=step)
        if variant is not None and variant != spec["variant"]:
            raise CheckpointError(f"{path} holds a {spec['variant']!r} model, not {variant!r}")
    elif kind == "hf":
        config, params, found = formats.load_hf(path, variant)
        spec = registry.make_spec(found, config, vocabulary, score_token)
    else:
        params = formats.load_t5x(path)
        found = formats.t5x_variant(params, variant, path)
        spec = registry.make_spec(found, formats.infer_config(params), vocabulary, score_token)
    return spec, params, vocabulary


def load_pretrained(path: str) -> Any:
    """Params of a pretrained checkpoint: our model dir, a Hugging Face dir or a T5X checkpoint."""
    kind = checkpoint_kind(path)
    if kind == "rankt5":
        return model_dir.load_model_dir(path)[1]
    if kind == "hf":
        return formats.load_hf(path, "encdec")[1]
    return formats.load_t5x(path)


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
