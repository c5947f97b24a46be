"""`rankt5 convert`: Hugging Face or T5X checkpoints -> a Hugging Face T5 directory."""

from __future__ import annotations

import os

from rankt5_jax.checkpoints import formats
from rankt5_jax.errors import CheckpointError
from rankt5_jax.modeling import registry


def convert(source: str, input_dir: str, output_dir: str, variant: str, vocab: str | None) -> None:
    """Reads `input_dir` (`hf` or `t5x`, legacy or Orbax) and writes `output_dir` for transformers.

    The vocabulary (`--vocab`, or the input's `spiece.model`) is copied alongside.
    """
    if not os.path.isdir(input_dir):
        raise CheckpointError(f"checkpoint directory not found: {input_dir}")
    if source == "hf":
        config, params, variant = formats.load_hf(input_dir, variant)
    elif source == "t5x":
        params = formats.load_t5x(input_dir)
        variant = formats.t5x_variant(params, variant, input_dir)
        config = formats.infer_config(params)
        if registry.get(variant).score_head:
            params = {k: params[k] for k in ("token_embedder", "encoder", "score_head")}
            config = config.replace(has_decoder=False)
    else:
        raise CheckpointError(f"unknown source {source!r}")
    vocab = vocab or os.path.join(input_dir, "spiece.model")
    formats.save_hf(output_dir, config, params, variant, vocab if os.path.isfile(vocab) else None)
    print(f"wrote {variant} model to {output_dir}")
