"""`rankt5 convert`: Hugging Face or T5X checkpoints -> a Hugging Face T5 directory; the FiT5
authors' PyTorch checkpoints -> one of our model directories (Hugging Face T5 has no place for
the global layers)."""

from __future__ import annotations

import os
from typing import Any

from rankt5_jax.checkpoints import fit5, formats, model_dir, t5x_checkpoints
from rankt5_jax.errors import CheckpointError
from rankt5_jax.modeling import registry

SOURCES = ("hf", "t5x", "fit5")


def convert(
    source: str,
    input_dir: str,
    output_dir: str,
    variant: str | None,
    vocab: str | None,
    allow_pickle: bool = False,
) -> None:
    """Reads `input_dir` and writes `output_dir`.

    `hf`, `t5x` (legacy or Orbax): writes a Hugging Face directory for transformers.
    `fit5`: the authors' state dict (a `.safetensors`, or with `allow_pickle` a `.bin`/`.pt`
    read with `torch.load(weights_only=True)`; the file or a directory holding it) -> our model
    directory (`rankt5.json`, `spiece.model`, `checkpoints/0`) that `Ranker.load` reads.

    The vocabulary (`--vocab`, or the input's `spiece.model`) is copied alongside.
    """
    if source == "fit5":
        if not os.path.exists(input_dir):
            raise CheckpointError(f"checkpoint not found: {input_dir}")
    elif not os.path.isdir(input_dir):
        raise CheckpointError(f"checkpoint directory not found: {input_dir}")
    if source == "hf":
        config, params, variant = formats.load_hf(input_dir, variant)
    elif source == "t5x":
        params = t5x_checkpoints.load_t5x(input_dir)
        variant = t5x_checkpoints.t5x_variant(params, variant, input_dir)
        config = formats.infer_config(params)
        if registry.get(variant).score_head:
            params = {k: params[k] for k in ("token_embedder", "encoder", "score_head")}
            config = config.replace(has_decoder=False)
    elif source == "fit5":
        _convert_fit5(input_dir, output_dir, variant, vocab, allow_pickle)
        return
    else:
        raise CheckpointError(f"unknown source {source!r}; one of {', '.join(SOURCES)}")
    vocab = vocab or os.path.join(input_dir, "spiece.model")
    formats.save_hf(output_dir, config, params, variant, vocab if os.path.isfile(vocab) else None)
    print(f"wrote {variant} model to {output_dir}")


def _convert_fit5(
    input_path: str, output_dir: str, variant: str | None, vocab: str | None, allow_pickle: bool
) -> None:
    from rankt5_jax.data.vocab import Vocabulary

    if variant not in (None, fit5.VARIANT):
        raise CheckpointError(
            f"a FiT5 authors' checkpoint is a {fit5.VARIANT!r} model, not {variant!r}"
        )
    folder = input_path if os.path.isdir(input_path) else os.path.dirname(input_path)
    vocab_path = vocab or os.path.join(folder, model_dir.VOCAB_FILE)
    if not os.path.isfile(vocab_path):
        raise CheckpointError(
            f"{input_path} has no {model_dir.VOCAB_FILE} beside it: give the vocabulary "
            "(--vocab; the authors used t5-base's)"
        )
    spec, params = fit5.load_fit5_spec(input_path, Vocabulary(vocab_path), allow_pickle)
    write_params_model_dir(output_dir, spec, params, vocab_path)
    print(f"wrote {spec['variant']} model to {output_dir}")


def write_params_model_dir(
    output_dir: str, spec: dict[str, Any], params: Any, vocab_path: str, step: int = 0
) -> None:
    """One of our model directories holding `params` only, as checkpoint `step` (no optimizer
    state: `Ranker.load` and `init_checkpoint` read it; training cannot resume from it)."""
    import orbax.checkpoint as ocp

    os.makedirs(output_dir, exist_ok=True)
    ckpt_dir = os.path.join(output_dir, "checkpoints")
    if os.path.isdir(ckpt_dir) and os.listdir(ckpt_dir):
        raise CheckpointError(f"{output_dir} already holds checkpoints; use a new directory")
    model_dir.write_model_files(output_dir, spec, vocab_path)
    manager = model_dir.checkpoint_manager(output_dir)
    manager.save(
        step,
        args=ocp.args.Composite(
            params=ocp.args.StandardSave(params),
            meta=ocp.args.JsonSave({"step": step, "score": None}),
        ),
        force=True,
    )
    manager.wait_until_finished()
    manager.close()
