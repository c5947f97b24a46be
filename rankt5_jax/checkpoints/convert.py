"""`rankt5 convert`: any checkpoint -> a Hugging Face T5 directory (`--to hf`: our model
directories, Hugging Face or T5X checkpoints) or -> one of our model directories (`--to rankt5`:
the FiT5 authors' PyTorch checkpoints, whose global layers Hugging Face T5 has no place for, and
any other kind).

An export to Hugging Face (`export_hf`) is `config.json` + `model.safetensors` + `spiece.model` +
the tokenizer files, loaded offline by transformers' `T5ForConditionalGeneration` (RankT5-EncDec:
the score is the step-0 logit of the score token; monoT5: log-softmax of true over false) or
`T5EncoderModel` (RankT5-Enc: the encoder; the score head is `classifier.weight`/`.bias` in the
same safetensors, over the first token's state, or the mean with `pooling: mean`). The model's
spec (token ids, template, pooling) is recorded in `config.json` under `rankt5_spec`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

from rankt5_jax.checkpoints import fit5, formats, model_dir, t5x_checkpoints
from rankt5_jax.data import paths
from rankt5_jax.errors import CheckpointError
from rankt5_jax.modeling import registry

SOURCES = ("rankt5", "hf", "t5x", "fit5")
TARGETS = ("hf", "rankt5")


def default_target(source: str) -> str:
    """`rankt5` for a FiT5 authors' checkpoint (Hugging Face T5 cannot hold it), else `hf`."""
    return "rankt5" if source == "fit5" else "hf"


def convert(
    source: str | None,
    input_dir: str,
    output_dir: str,
    variant: str | None,
    vocab: str | None,
    allow_pickle: bool = False,
    to: str | None = None,
    step: int | None = None,
) -> str:
    """Reads `input_dir` and writes `output_dir`; returns the model's variant.

    Args:
      source: `rankt5` (our model directory), `hf`, `t5x` (legacy or Orbax), `fit5` (the
        authors' state dict: a `.safetensors`, or with `allow_pickle` a `.bin`/`.pt` read with
        `torch.load(weights_only=True)`; the file or a directory holding it); None: detected
        (`loading.checkpoint_kind`).
      to: `hf` (a Hugging Face T5 directory, see the module) or `rankt5` (our model directory:
        `rankt5.json`, `spiece.model`, `checkpoints/<step>` with the params only, which
        `Ranker.load` reads); default `default_target(source)`.
      step: of our model directory (default: the latest).

    The vocabulary (`--vocab`, or the input's `spiece.model`) is copied alongside.
    """
    if source is not None and source not in SOURCES:
        raise CheckpointError(f"unknown source {source!r}; one of {', '.join(SOURCES)}")
    if not paths.exists(input_dir):
        raise CheckpointError(f"checkpoint not found: {input_dir}")
    if source not in (None, "fit5") and not paths.isdir(input_dir):
        raise CheckpointError(f"checkpoint directory not found: {input_dir}")
    if paths.is_remote(output_dir):  # a missing bucket: refused before any work
        from rankt5_jax.data import formats as data_formats

        data_formats.check_output_dir(output_dir)
    if paths.is_remote(input_dir) and not paths.isfile(paths.join(input_dir, model_dir.SPEC_FILE)):
        # Hugging Face, T5X and FiT5 readers take local names: this host's cached copy
        if paths.isdir(input_dir):
            input_dir = paths.local_tree(input_dir, "checkpoint")
        else:
            input_dir = paths.local_copy(input_dir)
    if source is None:
        from rankt5_jax.checkpoints import loading

        source = loading.checkpoint_kind(input_dir)
    to = to or default_target(source)
    if to not in TARGETS:
        raise CheckpointError(f"unknown target {to!r}; one of {', '.join(TARGETS)}")
    if to == "rankt5":
        variant = _to_model_dir(source, input_dir, output_dir, variant, vocab, allow_pickle, step)
    elif source == "fit5":
        raise CheckpointError(
            "a FiT5 authors' checkpoint has global layers Hugging Face T5 has no place for: "
            "convert it --to rankt5"
        )
    elif source == "rankt5":
        variant = export_hf(input_dir, output_dir, variant=variant, vocab=vocab, step=step)
    else:
        if source == "hf":
            config, params, variant = formats.load_hf(input_dir, variant)
        else:
            params = t5x_checkpoints.load_t5x(input_dir)
            variant = t5x_checkpoints.t5x_variant(params, variant, input_dir)
            config = formats.infer_config(params)
            if registry.get(variant).score_head:
                params = {k: params[k] for k in ("token_embedder", "encoder", "score_head")}
                config = config.replace(has_decoder=False)
        _refuse_list_aware(variant)
        vocab = vocab or paths.join(input_dir, model_dir.VOCAB_FILE)
        vocab = paths.local_copy(vocab) if paths.isfile(vocab) else None
        with _hf_output(output_dir) as folder:
            formats.save_hf(folder, config, params, variant, vocab)
    print(f"wrote {variant} model to {output_dir} ({to})")
    return variant


def _refuse_list_aware(variant: str) -> None:
    entry = registry.get(variant)
    if entry.global_layers or entry.list_aware:
        raise CheckpointError(
            f"a {variant!r} model has global layers Hugging Face T5 has no place for; "
            "it stays one of our model directories (--to rankt5)"
        )


def export_hf(
    input_dir: str,
    output_dir: str,
    variant: str | None = None,
    vocab: str | None = None,
    step: int | None = None,
) -> str:
    """Our model directory (`step`, default the latest) -> a Hugging Face T5 directory (see the
    module); returns the variant. Parameters Hugging Face T5 has no place for (a UR2N model's
    XTR layer) are left out and named on stderr."""
    import sys

    from rankt5_jax.checkpoints import loading
    from rankt5_jax.modeling.network import T5Config

    spec, params, vocabulary = loading.load_checkpoint(input_dir, variant, vocab, step=step)
    variant = spec["variant"]
    _refuse_list_aware(variant)
    spec = registry.build_model(spec).spec()  # every option, as the model reads it
    config = T5Config.from_dict(spec["t5"])
    left = formats.params_left_out(params, config, registry.get(variant).score_head)
    if left:
        print(
            f"rankt5: not exported (no place in Hugging Face T5): {', '.join(left)}",
            file=sys.stderr,
        )
    with _hf_output(output_dir) as folder:
        formats.save_hf(folder, config, params, variant, vocabulary.path, spec=spec)
    return variant


@contextlib.contextmanager
def _hf_output(output_dir: str) -> Iterator[str]:
    """The folder a Hugging Face export is written to: `output_dir` when local; for a bucket a
    fresh local folder, uploaded once the export is complete (each file one object,
    `config.json` last: a folder without it is no Hugging Face checkpoint to a reader) and then
    removed. A failed export uploads nothing."""
    if not paths.is_remote(output_dir):
        yield output_dir
        return
    folder = tempfile.mkdtemp(prefix="rankt5-hf-")
    try:
        yield folder
        names = sorted(os.listdir(folder), key=lambda name: (name == "config.json", name))
        for name in names:
            paths.upload(os.path.join(folder, name), paths.join(output_dir, name))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _to_model_dir(
    source: str,
    input_path: str,
    output_dir: str,
    variant: str | None,
    vocab: str | None,
    allow_pickle: bool,
    step: int | None,
) -> str:
    """Any checkpoint -> our model directory (its params as checkpoint 0)."""
    from rankt5_jax.checkpoints import loading

    if source == "fit5" and variant not in (None, fit5.VARIANT):
        raise CheckpointError(
            f"a FiT5 authors' checkpoint is a {fit5.VARIANT!r} model, not {variant!r}"
        )
    folder = input_path if paths.isdir(input_path) else paths.dirname(input_path)
    vocab_path = vocab or paths.join(folder, model_dir.VOCAB_FILE)
    if not paths.isfile(vocab_path):
        hint = "; the authors used t5-base's" if source == "fit5" else ""
        raise CheckpointError(
            f"{input_path} has no {model_dir.VOCAB_FILE} beside it: give the vocabulary "
            f"(--vocab{hint})"
        )
    spec, params, _ = loading.load_checkpoint(
        input_path, variant, vocab_path, step=step, allow_pickle=allow_pickle
    )
    write_params_model_dir(output_dir, spec, params, vocab_path)
    return spec["variant"]


def write_params_model_dir(
    output_dir: str, spec: dict[str, Any], params: Any, vocab_path: str, step: int = 0
) -> None:
    """One of our model directories holding `params` only, as checkpoint `step` (no optimizer
    state: `Ranker.load` and `init_checkpoint` read it; training cannot resume from it)."""
    paths.makedirs(output_dir)
    ckpt_dir = paths.join(output_dir, "checkpoints")
    if paths.isdir(ckpt_dir) and paths.listdir(ckpt_dir):
        raise CheckpointError(f"{output_dir} already holds checkpoints; use a new directory")
    model_dir.write_model_files(output_dir, spec, vocab_path)
    model_dir.save_params(output_dir, step, params)
