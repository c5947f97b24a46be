"""Memory per device for training and serving RankT5 on a `data x model` mesh (docs/scaling.md).

    .venv/bin/python bench/memory_table.py [--output bench/memory_table.json] [--markdown]

Computed, not measured, on any machine (nothing is allocated: shapes come from `jax.eval_shape`):

* exact: parameter counts of our network (T5 v1.0 base/large/3B/11B, the released RankT5 sizes,
  and v1.1 base/large/xl/xxl) for RankT5-EncDec / monoT5 (one network) and RankT5-Enc; their
  float32 bytes per device under the trainer's rules (`partitioning.standard_logical_axis_rules`:
  1-D puts heads, MLP and vocabulary on `model`, 2-D also `embed` on `data`; a dimension the axis
  does not divide stays whole, as `Partitioner` does); the optimizer state of the trainer's
  Adafactor and AdamW (`jax.eval_shape` of their `init`).
* estimated: activations kept for the backward pass (bf16 activations, float32 attention
  softmax and q/k, as `network.py` computes them; the trainer's dropout 0.1) by the per-token
  count of `activation_bytes_per_token`; `--check` compares it with the peak device memory
  measured on an H100 in `bench/gpu_results/train_gpu.json` (base, AdamW, 8 lists of 36 x 128
  tokens, no dropout): the count is 1.12x the measured peak. JAX's own list of saved residuals
  (`jax_residual_bytes`, before XLA fuses and recomputes) is given as an upper bound.

Training lists are 36 candidates of 512 tokens here (the issue's setting; the paper's MS MARCO
runs use 128). Per device: params + gradients (float32, sharded as the params) + optimizer state
(AdamW's moments sharded as the params; Adafactor's factored rows/columns counted whole) +
activations of the lists it holds (`lists / data` per micro-batch, heads/MLP parts split over
`model`). Serving: float32 params (the `Ranker` keeps float32 weights and computes in bf16) plus
one layer's working set for a batch of 64 pairs of 512 tokens split over `data`.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rankt5_jax.modeling import registry  # noqa: E402
from rankt5_jax.modeling.network import get_config  # noqa: E402
from rankt5_jax.modeling.partitioning import standard_logical_axis_rules  # noqa: E402

GB = 1e9
SIZES = {  # label -> config name
    "base": "t5_1_0_base",
    "large": "t5_1_0_large",
    "3B": "t5_1_0_3B",
    "11B": "t5_1_0_11B",
    "v1.1 base": "t5_1_1_base",
    "v1.1 large": "t5_1_1_large",
    "v1.1 xl": "t5_1_1_xl",
    "v1.1 xxl": "t5_1_1_xxl",
}
MESHES = [(8, 1), (4, 2), (2, 4), (1, 8)]
DEVICE_GB = [16, 32, 80]
LIST_SIZE, LENGTH = 36, 512
SERVE_BATCH = 64  # pairs per call (`rankt5 rerank --batch_size`'s default)
USABLE = 0.9  # of a device's memory, for buffers XLA holds beyond these counts


class _Ids:
    """Token ids for building a model of the right shapes (ids never change shapes)."""

    @staticmethod
    def token_id(token: str) -> int:
        del token
        return 0


@functools.cache
def param_shapes(config_name: str, variant: str = "encdec") -> dict[str, tuple]:
    """Flat param path -> (shape, logical axes) of our network (abstract: nothing allocated)."""
    import flax
    from flax.linen import partitioning as nn_partitioning

    config = get_config(config_name, vocab_size=32128)
    if registry.get(variant).score_head:
        config = config.replace(has_decoder=False)
    model = registry.build_model(registry.make_spec(variant, config, _Ids()))
    abstract = jax.eval_shape(
        lambda: model.get_initial_variables(
            jax.random.PRNGKey(0), {"encoder_input_tokens": (1, 1, 8)}
        )
    )
    axes = flax.core.unfreeze(nn_partitioning.get_axis_names(abstract["params_axes"]))
    flat_axes = flax.traverse_util.flatten_dict(axes, sep="/")
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(abstract["params"]), sep="/")
    return {key: (tuple(value.shape), tuple(flat_axes[key])) for key, value in flat.items()}


def param_count(shapes: dict[str, tuple]) -> int:
    return sum(math.prod(shape) for shape, _ in shapes.values())


def shard_elements(shape, axes, data: int, model: int, dims: int = 1) -> int:
    """Elements of one device's shard of a parameter under the trainer's rules (uneven
    dimensions stay whole, as `Partitioner._spec_for`)."""
    rules = dict(standard_logical_axis_rules(dims))
    sizes = {"data": data, "model": model, None: 1}
    out = 1
    for dim, name in zip(shape, axes):
        split = sizes[rules.get(name)]
        out *= dim // split if dim % split == 0 else dim
    return out


def params_per_device(shapes, data: int, model: int, dims: int = 1) -> int:
    return sum(shard_elements(s, a, data, model, dims) for s, a in shapes.values())


def optimizer_state_elements(shapes: dict[str, tuple], name: str) -> int:
    """Elements of the trainer's optimizer state (`training.optimizers.make_optimizer`)."""
    from rankt5_jax.training.optimizers import make_optimizer

    tx, _ = make_optimizer(name)
    params = {key: jax.ShapeDtypeStruct(shape, np.float32) for key, (shape, _) in shapes.items()}
    state = jax.eval_shape(tx.init, params)
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(state))


def _split(n: int, model: int) -> float:
    """Per-device share of an activation dimension on `model` (XLA pads uneven splits)."""
    return math.ceil(n / model)


def activation_bytes_per_token(
    config, length: int, model: int = 1, dropout: bool = True
) -> dict[str, float]:
    """Bytes per encoder token kept for the backward pass, per layer and in all (bf16
    activations; q, k and the softmax in float32, as `network.py` with
    `float32_attention_logits`). Per layer:

      residual stream and layer norms: x, LN(x), x', LN(x')            4 d x 2 B
      q, k (float32), v, attention output (bf16)                      HD/M x (4 + 4 + 2 + 2) B
      softmax probabilities (float32), over `length` keys             H/M x length x 4 B
      with dropout: its keep mask and the dropped probabilities       H/M x length x (1 + 2) B
      MLP: ReLU pre/post (v1.0) or wi_0, wi_1, GELU, product (v1.1)   2 or 4 x F/M x 2 B

    (The other dropout masks are broadcast over the length: negligible.) `none`: every layer's
    set; `full` (`T5Config.remat='full'`): each layer's input kept, one layer's set recomputed at
    a time. The decoder's one position per candidate is left out (under 0.5% at 512 tokens).
    """
    d, heads, head_dim, mlp = config.emb_dim, config.num_heads, config.head_dim, config.mlp_dim
    hd = _split(heads, model) * head_dim
    per_layer = (
        4 * d * 2
        + hd * (4 + 4 + 2 + 2)
        + _split(heads, model) * length * (4 + (3 if dropout else 0))
        + (2 if len(config.mlp_activations) == 1 else 4) * _split(mlp, model) * 2
    )
    layers = config.num_encoder_layers
    return {
        "per_layer": per_layer,
        "none": layers * per_layer,
        "full": layers * d * 2 + per_layer,
    }


def jax_residual_bytes(config_name: str, lists: int, dropout: float = 0.1) -> float:
    """Bytes of what JAX's autodiff keeps for the backward pass of the trainer's loss (RankT5-
    EncDec, softmax loss, bf16) on `lists` lists of 36 x 512, on one device: an upper bound of
    the activations (XLA fuses and recomputes cheap ones; float32 layer-norm copies are most of
    the difference). Uses jax's `saved_residuals` (jax._src: the public API only prints it)."""
    import jax.numpy as jnp
    from jax._src.ad_checkpoint import saved_residuals

    from rankt5_jax.modeling.models import RankT5EncDec

    config = get_config(config_name, vocab_size=32128, dtype="bfloat16", dropout_rate=dropout)
    model = RankT5EncDec(config, score_token_id=0, loss="softmax")
    params = jax.eval_shape(
        lambda: model.get_initial_variables(
            jax.random.PRNGKey(0), {"encoder_input_tokens": (1, 1, 8)}
        )["params"]
    )
    shape = (lists, LIST_SIZE)
    batch = {
        "encoder_input_tokens": jax.ShapeDtypeStruct(shape + (LENGTH,), jnp.int32),
        "decoder_input_tokens": jax.ShapeDtypeStruct(shape + (1,), jnp.int32),
        "decoder_target_tokens": jax.ShapeDtypeStruct(shape + (1,), jnp.int32),
        "label": jax.ShapeDtypeStruct(shape, jnp.float32),
        "mask": jax.ShapeDtypeStruct(shape, jnp.bool_),
    }
    rng = jax.ShapeDtypeStruct((2,), jnp.uint32)
    residuals = saved_residuals(lambda p, b, r: model.loss_fn(p, b, r)[0], params, batch, rng)
    return sum(
        math.prod(aval.shape) * aval.dtype.itemsize
        for aval, source in residuals
        if "from the argument" not in source
    )


def serving_activation_bytes(config, rows: int, length: int, model: int) -> float:
    """One layer's working set when scoring `rows` pairs of `length` tokens on one device:
    float32 attention logits and probabilities, q/k/v/output, the MLP hidden, the residual
    stream (forward only: nothing is kept across layers)."""
    d, heads, head_dim, mlp = config.emb_dim, config.num_heads, config.head_dim, config.mlp_dim
    hd = _split(heads, model) * head_dim
    per_token = (
        _split(heads, model) * length * 4 * 2 + hd * (4 + 4 + 2 + 2) + 2 * _split(mlp, model) * 2
    )
    return rows * length * (per_token + 4 * d * 2)


def size_row(label: str, config_name: str, residuals: bool = True) -> dict:
    encdec = param_shapes(config_name, "encdec")
    enc = param_shapes(config_name, "enc")
    config = get_config(config_name, vocab_size=32128)
    row = {
        "size": label,
        "config": config_name,
        "params_encdec": param_count(encdec),
        "params_enc": param_count(enc),
        "adafactor_state_elements": optimizer_state_elements(encdec, "adafactor"),
        "adamw_state_elements": optimizer_state_elements(encdec, "adamw"),
        "meshes": {},
    }
    row["params_encdec_gb"] = row["params_encdec"] * 4 / GB
    if residuals:
        row["jax_residuals_per_list_gb"] = jax_residual_bytes(config_name, 1) / GB
    per_list = {}
    for data, model in MESHES:
        params_1d = params_per_device(encdec, data, model, 1) * 4
        params_2d = params_per_device(encdec, data, model, 2) * 4
        acts = activation_bytes_per_token(config, LENGTH, model)
        tokens = LIST_SIZE * LENGTH
        per_list[model] = {k: acts[k] * tokens for k in ("none", "full")}
        adafactor = row["adafactor_state_elements"] * 4
        adamw_1d = 2 * params_1d
        serve_rows = max(1, SERVE_BATCH // data)
        serve = params_1d + serving_activation_bytes(config, serve_rows, LENGTH, model)
        train_1d = 2 * params_1d + adafactor  # params + grads + Adafactor
        train_2d = 2 * params_2d + adafactor
        entry = {
            "params_per_device_gb": params_1d / GB,
            "params_per_device_2d_gb": params_2d / GB,
            "serve_gb": serve / GB,
            "train_state_adafactor_gb": train_1d / GB,
            "train_state_adafactor_2d_gb": train_2d / GB,
            "train_state_adamw_gb": (2 * params_1d + adamw_1d) / GB,
            "activations_per_list_gb": per_list[model]["none"] / GB,
            "activations_per_list_remat_gb": per_list[model]["full"] / GB,
            "lists_per_device": {},
        }
        for memory in DEVICE_GB:
            free = memory * GB * USABLE
            entry["lists_per_device"][str(memory)] = {
                "serve_fits": serve <= free,
                "adafactor": _lists(free - train_1d, per_list[model]["none"]),
                "adafactor_remat": _lists(free - train_1d, per_list[model]["full"]),
                "adafactor_2d_remat": _lists(free - train_2d, per_list[model]["full"]),
            }
        row["meshes"][f"{data}x{model}"] = entry
    return row


def _lists(free: float, per_list: float) -> int | None:
    """Whole lists of 36 x 512 a device can hold per micro-batch (a list is never split across
    micro-batches: 0 means not one fits); None: the training state alone does not fit."""
    return None if free < 0 else int(free // per_list)


def check_against_gpu(path: str) -> dict:
    """The estimate for `bench/gpu_results/train_gpu.json`'s run against its measured peak."""
    with open(path) as handle:
        run = json.load(handle)
    config = get_config(f"t5_1_0_{run['size']}", vocab_size=32128)
    shapes = param_shapes(f"t5_1_0_{run['size']}", "encdec")
    params = param_count(shapes) * 4
    state = params * 2 + optimizer_state_elements(shapes, "adamw") * 4  # params, grads, AdamW
    tokens = run["lists_per_step"] * run["list_size"] * run["length"]
    activations = activation_bytes_per_token(config, run["length"], dropout=False)["none"] * tokens
    estimate = (state + activations) / 1e6
    return {
        "run": os.path.relpath(path),
        "estimate_mb": round(estimate, 1),
        "measured_peak_mb": round(run["ours_peak_device_mb"], 1),
        "estimate_over_measured": round(estimate / run["ours_peak_device_mb"], 3),
    }


def markdown(rows: list[dict], check: dict | None) -> str:
    lines = [
        "| size | params EncDec / monoT5 | params Enc | float32 | Adafactor state | AdamW state |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['size']} | {row['params_encdec']:,} | {row['params_enc']:,} | "
            f"{row['params_encdec_gb']:.2f} GB | {row['adafactor_state_elements'] * 4 / GB:.3f} GB"
            f" | {row['adamw_state_elements'] * 4 / GB:.2f} GB |"
        )
    head = " | ".join(f"{d}x{m}" for d, m in MESHES)
    lines += ["", "Serving (EncDec, float32 params + 64 x 512-token batch), GB per device:", ""]
    lines += [f"| size | {head} |", "|---|" + "---:|" * len(MESHES)]
    for row in rows:
        cells = [f"{row['meshes'][f'{d}x{m}']['serve_gb']:.1f}" for d, m in MESHES]
        lines.append(f"| {row['size']} | " + " | ".join(cells) + " |")
    lines += ["", "Training state (params + grads + Adafactor, 1-D rules), GB per device:", ""]
    lines += [f"| size | {head} |", "|---|" + "---:|" * len(MESHES)]
    for row in rows:
        cells = [f"{row['meshes'][f'{d}x{m}']['train_state_adafactor_gb']:.1f}" for d, m in MESHES]
        lines.append(f"| {row['size']} | " + " | ".join(cells) + " |")
    lines += ["", f"Activations per list of {LIST_SIZE} x {LENGTH} (bf16, dropout), GB per "
              "device, no remat / remat='full' (JAX's saved residuals, an upper bound, on one "
              "device without remat):", ""]  # fmt: skip
    lines += [f"| size | {head} |", "|---|" + "---:|" * len(MESHES)]
    for row in rows:
        cells = [
            f"{row['meshes'][f'{d}x{m}']['activations_per_list_gb']:.1f} / "
            f"{row['meshes'][f'{d}x{m}']['activations_per_list_remat_gb']:.2f}"
            for d, m in MESHES
        ]
        bound = row.get("jax_residuals_per_list_gb")
        cells[0] += f" ({bound:.1f})" if bound is not None else ""
        lines.append(f"| {row['size']} | " + " | ".join(cells) + " |")
    for memory in DEVICE_GB:
        lines += ["", f"Lists of {LIST_SIZE} x {LENGTH} per device per micro-batch on {memory} GB "
                  "devices, Adafactor: no remat / remat='full' / remat and 2-D rules "
                  "(- : the training state alone does not fit):", ""]  # fmt: skip
        lines += [f"| size | {head} |", "|---|" + "---:|" * len(MESHES)]
        for row in rows:
            cells = []
            for d, m in MESHES:
                fit = row["meshes"][f"{d}x{m}"]["lists_per_device"][str(memory)]
                keys = ("adafactor", "adafactor_remat", "adafactor_2d_remat")
                cells.append(" / ".join("-" if fit[k] is None else str(fit[k]) for k in keys))
            lines.append(f"| {row['size']} | " + " | ".join(cells) + " |")
    if check:
        lines += [
            "",
            f"Check: the estimate for {check['run']} is {check['estimate_mb']:,} MB against "
            f"{check['measured_peak_mb']:,} MB measured ({check['estimate_over_measured']}x).",
        ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(SIZES), help="comma-separated labels")
    parser.add_argument("--output", help="write the figures as JSON")
    parser.add_argument("--markdown", action="store_true", help="print the docs' tables")
    parser.add_argument(
        "--no_residuals", action="store_true", help="skip JAX's residual count (a few s a size)"
    )
    parser.add_argument(
        "--check",
        default=os.path.join(os.path.dirname(__file__), "gpu_results", "train_gpu.json"),
        help="a bench/train_bench.py result with a measured peak to compare the estimate with",
    )
    args = parser.parse_args(argv)
    rows = [size_row(label, SIZES[label], not args.no_residuals) for label in args.sizes.split(",")]
    check = check_against_gpu(args.check) if args.check and os.path.isfile(args.check) else None
    result = {"list_size": LIST_SIZE, "length": LENGTH, "rows": rows, "check": check}
    if args.output:
        with open(args.output, "w") as handle:
            json.dump(result, handle, indent=2)
    print(markdown(rows, check) if args.markdown else json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
