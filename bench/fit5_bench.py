"""What FiT5's global attention costs: one query's list scored by FiT5 against monoT5, one run.

    .venv/bin/python bench/fit5_bench.py [--sizes small,base] [--lengths 128,256]
        [--list_size 100] [--global_layers 3] [--repeats 5] [--dtype float32|bfloat16] [--ranker]

For each T5 v1.0-shaped size (random weights, standard 32128-row vocabulary) and input length,
one list of `--list_size` candidates of exactly that many tokens is scored in one call
(`score_lists`: `[1, L, T] -> [1, L]`, one compiled function per model) by:
  * monoT5 (`modeling.models.MonoT5`): every candidate on its own;
  * FiT5 (`modeling.models.FiT5`, `--global_layers` global attention layers after the last
    encoder layers, the list mask passed): the same weights, FiT5's params being monoT5's plus
    the global layers' (so the ratio is the global attention's cost and nothing else).
Timing: one warm-up call each (compilation), then `--repeats` rounds; each round times both
models back to back, alternating which goes first, so both see the same load of a shared
machine. Reported: each model's median seconds per list, the median of the rounds' FiT5/monoT5
ratios (and its range), and the global layers timed alone on the same hidden states (`[L, T,
embed]`, donated, so the position-0 update is in place as inside the model), as a share of
FiT5's time; and, from one profiled FiT5 call, the execution time of the XLA ops that come from
the global layers against all of the call's ops (a share that the machine's load hardly moves,
unlike the end-to-end ratio). The global layers' share of FiT5's matmul FLOPs is computed analytically
(`bench.common.global_layers_flops`) and checked against the dot products in the two models'
jaxprs (FiT5's minus monoT5's). `--ranker` adds the same list through `Ranker.score_tokens`, as
`rankt5 rerank` scores it: monoT5 in the Ranker's token-budget batches, FiT5 as one whole list
(a list-aware model is never split). Writes JSON to `--output`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import (  # noqa: E402
    FALSE_TOKEN,
    TRUE_TOKEN,
    config,
    cpu_model,
    device_name,
    global_layers_flops,
    jaxpr_dot_flops,
    monot5_score_flops,
    write_json,
)
from rankt5_jax.data.vocab import EOS_ID  # noqa: E402
from rankt5_jax.modeling.fit5 import GlobalAttention  # noqa: E402
from rankt5_jax.modeling.models import FiT5, MonoT5  # noqa: E402


def make_list(list_size: int, length: int, seed: int = 0) -> dict:
    """One query's list: `list_size` candidates of `length` tokens (EOS last), all real."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, 32000, size=(1, list_size, length)).astype(np.int32)
    tokens[..., -1] = EOS_ID
    return {"encoder_input_tokens": tokens, "mask": np.ones((1, list_size), bool)}


def make_models(size: str, global_layers: int, dtype: str):
    """(monoT5, FiT5, monoT5 params, FiT5 params): FiT5's params are monoT5's plus the global
    layers (one initialisation; monoT5's are FiT5's without `encoder/global_layers_*`)."""
    cfg = config(size).replace(dtype=dtype)
    fit5 = FiT5(
        cfg.replace(num_global_layers=global_layers),
        true_token_id=TRUE_TOKEN,
        false_token_id=FALSE_TOKEN,
    )
    mono = MonoT5(cfg, true_token_id=TRUE_TOKEN, false_token_id=FALSE_TOKEN)
    shapes = {"encoder_input_tokens": (1, 2, 8)}
    fit5_params = fit5.get_initial_variables(jax.random.PRNGKey(0), shapes)["params"]
    fit5_params = jax.tree_util.tree_map(np.asarray, fit5_params)
    mono_params = dict(fit5_params)
    mono_params["encoder"] = {
        k: v for k, v in fit5_params["encoder"].items() if not k.startswith("global_layers_")
    }
    return mono, fit5, mono_params, fit5_params


def global_layers_alone(fit5: FiT5, params, list_size: int, length: int):
    """A compiled function applying FiT5's global layers (only) to hidden states `[L, T, embed]`
    (donated: the position-0 update happens in place, as inside the encoder)."""
    cfg = fit5.config
    layers = [params["encoder"][f"global_layers_{k}"] for k in range(cfg.num_global_layers)]
    mask = jnp.ones((1, list_size), bool)

    def apply(hidden, layer_params):
        for layer in layer_params:
            hidden = GlobalAttention(cfg).apply({"params": layer}, hidden, mask, True)
        return hidden

    fn = jax.jit(apply, donate_argnums=0)
    shape = (list_size, length, cfg.emb_dim)
    hidden = jax.random.normal(jax.random.PRNGKey(1), shape).astype(cfg.activation_dtype)
    return fn, hidden, layers


def profiled_global_share(fn, params, batch, trace_dir: str) -> dict:
    """One profiled call of the compiled `fn`: the execution time of the XLA ops that come from
    the global layers (HLO metadata `.../global_layers_k/...`) against all of the call's ops.

    On CPU these are XLA's thunks on its worker threads (thread time: parallel ops count once
    per thread they ran on); on a GPU, the device's `XLA Ops` line. Inside one call both
    parts see the same machine load, so the share does not depend on how busy the machine is."""
    import glob
    import re
    import shutil

    hlo = fn.lower(params, batch).compile().as_text()
    op_names = {}
    for match in re.finditer(r'^\s*(?:ROOT )?%?([\w.\-]+) = .*?op_name="([^"]*)"', hlo, re.M):
        op_names.setdefault(match.group(1), match.group(2))
    shutil.rmtree(trace_dir, ignore_errors=True)
    with jax.profiler.trace(trace_dir):
        fn(params, batch).block_until_ready()
    (path,) = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
    planes = list(jax.profiler.ProfileData.from_file(path).planes)
    device = [p for p in planes if p.name.startswith("/device:")]
    lines = (
        [line for p in device for line in p.lines if line.name == "XLA Ops"]
        if device
        else [line for p in planes if p.name == "/host:CPU" for line in p.lines]
    )
    global_ns = total_ns = 0
    for line in lines:
        for event in line.events:
            op_name = op_names.get(event.name)
            if op_name is None:
                continue
            total_ns += event.duration_ns
            if "/global_layers_" in op_name:
                global_ns += event.duration_ns
    shutil.rmtree(trace_dir, ignore_errors=True)
    return {
        "profile_global_ms": global_ns / 1e6,
        "profile_ops_ms": total_ns / 1e6,
        "profile_global_share": global_ns / total_ns if total_ns else None,
    }


def measure_rankers(mono, fit5, mono_params, fit5_params, batch, args) -> dict:
    """The same list through `Ranker.score_tokens`, as `rankt5 rerank` scores it: monoT5 in the
    Ranker's token-budget batches (on CPU 2048 tokens: 16 rows of 128), FiT5 as one whole list
    (padded to 104 candidates). Rounds alternate as above."""
    from rankt5_jax.inference.ranker import Ranker

    sequences = [list(row) for row in batch["encoder_input_tokens"][0]]
    length = len(sequences[0])
    mono_ranker = Ranker(mono, mono_params, vocab=None, max_length=length)
    fit5_ranker = Ranker(fit5, fit5_params, vocab=None, max_length=length)
    mono_ranker.score_tokens(sequences)  # compile
    fit5_ranker.score_tokens(sequences)
    t_mono, t_fit5, ratios = [], [], []
    for repeat in range(args.repeats):
        order = [(mono_ranker, t_mono), (fit5_ranker, t_fit5)]
        for ranker, times in order if repeat % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            ranker.score_tokens(sequences)
            times.append(time.perf_counter() - start)
        ratios.append(t_fit5[-1] / t_mono[-1])
    rows = mono_ranker.rows(mono_ranker.buckets[int(np.searchsorted(mono_ranker.buckets, length))])
    return {
        "ranker_monot5_rows_per_call": int(rows),
        "ranker_monot5_s": statistics.median(t_mono),
        "ranker_fit5_s": statistics.median(t_fit5),
        "ranker_ratio": statistics.median(ratios),
        "ranker_ratio_min": min(ratios),
        "ranker_ratio_max": max(ratios),
    }


def measure(size: str, length: int, args) -> dict:
    mono, fit5, mono_params, fit5_params = make_models(size, args.global_layers, args.dtype)
    batch = make_list(args.list_size, length)
    mono_fn = jax.jit(mono.score_lists)
    fit5_fn = jax.jit(fit5.score_lists)
    mono_p = jax.device_put(mono_params)
    fit5_p = jax.device_put(fit5_params)
    device_batch = jax.device_put(batch)

    def run(fn, params):
        start = time.perf_counter()
        out = fn(params, device_batch).block_until_ready()
        return time.perf_counter() - start, out

    compile_mono, mono_scores = run(mono_fn, mono_p)  # warm-up: compilation
    compile_fit5, fit5_scores = run(fit5_fn, fit5_p)
    t_mono, t_fit5, ratios = [], [], []
    for repeat in range(args.repeats):
        if repeat % 2 == 0:
            a, _ = run(mono_fn, mono_p)
            b, _ = run(fit5_fn, fit5_p)
        else:
            b, _ = run(fit5_fn, fit5_p)
            a, _ = run(mono_fn, mono_p)
        t_mono.append(a)
        t_fit5.append(b)
        ratios.append(b / a)
        print(f"  {size} T={length} round {repeat}: monoT5 {a:.3f} s, FiT5 {b:.3f} s", flush=True)

    # The global layers alone, on the same list shape, timed between the same kind of calls.
    alone_fn, hidden, layers = global_layers_alone(fit5, fit5_p, args.list_size, length)
    alone_fn(jnp.copy(hidden), layers).block_until_ready()  # compile
    t_alone = []
    for _ in range(max(args.repeats, 5)):
        fresh = jnp.copy(hidden).block_until_ready()
        start = time.perf_counter()
        alone_fn(fresh, layers).block_until_ready()
        t_alone.append(time.perf_counter() - start)

    profile = profiled_global_share(fit5_fn, fit5_p, device_batch, args.trace_dir)
    ranker = (
        measure_rankers(mono, fit5, mono_params, fit5_params, batch, args) if args.ranker else {}
    )

    cfg = fit5.config
    mono_jaxpr = jax.make_jaxpr(mono.score_lists)(mono_params, batch).jaxpr
    fit5_jaxpr = jax.make_jaxpr(fit5.score_lists)(fit5_params, batch).jaxpr
    mono_flops_jaxpr = jaxpr_dot_flops(mono_jaxpr)
    global_flops_jaxpr = jaxpr_dot_flops(fit5_jaxpr) - mono_flops_jaxpr
    mono_flops = monot5_score_flops(cfg, args.list_size, length)
    global_flops = global_layers_flops(cfg, args.list_size)
    median_mono = statistics.median(t_mono)
    median_fit5 = statistics.median(t_fit5)
    median_alone = statistics.median(t_alone)
    row = {
        "size": size,
        "length": length,
        "list_size": args.list_size,
        "global_layers": args.global_layers,
        "dtype": args.dtype,
        "repeats": args.repeats,
        "monot5_s": median_mono,
        "fit5_s": median_fit5,
        "monot5_s_all": t_mono,
        "fit5_s_all": t_fit5,
        "ratio": statistics.median(ratios),  # median of the rounds' FiT5 / monoT5
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "ratio_of_medians": median_fit5 / median_mono,
        "global_alone_s": median_alone,
        "global_alone_share_of_fit5": median_alone / median_fit5,
        **profile,
        **ranker,
        "compile_s": {"monot5": compile_mono, "fit5": compile_fit5},
        "monot5_gflop": mono_flops / 1e9,
        "global_gflop": global_flops / 1e9,
        "global_flop_share": global_flops / (mono_flops + global_flops),
        "flops_match_jaxpr": mono_flops == mono_flops_jaxpr and global_flops == global_flops_jaxpr,
        "monot5_gflop_jaxpr": mono_flops_jaxpr / 1e9,
        "global_gflop_jaxpr": global_flops_jaxpr / 1e9,
        "monot5_gflops_achieved": mono_flops / median_mono / 1e9,
        "scores_finite": bool(
            np.isfinite(np.asarray(mono_scores)).all()
            and np.isfinite(np.asarray(fit5_scores)).all()
        ),
        "max_abs_score_diff_fit5_vs_monot5": float(
            np.abs(np.asarray(fit5_scores) - np.asarray(mono_scores)).max()
        ),
    }
    print(
        json.dumps({k: v for k, v in row.items() if not k.endswith("_all")}, default=str),
        flush=True,
    )
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="small,base")
    parser.add_argument("--lengths", default="128,256")
    parser.add_argument("--list_size", type=int, default=100)
    parser.add_argument("--global_layers", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--output", default="bench/fit5_results.json")
    parser.add_argument(
        "--ranker",
        action="store_true",
        help="also time both through Ranker.score_tokens (monoT5 in token-budget batches)",
    )
    parser.add_argument("--trace_dir", default="/tmp/fit5_bench_trace", help="profiler scratch")
    args = parser.parse_args(argv)

    results = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores ({cpu_model()}), "
        f"{platform.python_version()}",
        "device": device_name(),
        "jax": jax.__version__,
        "dtype": args.dtype,
        "load_average_start": os.getloadavg(),
        "rows": [],
    }
    for size in args.sizes.split(","):
        for length in args.lengths.split(","):
            results["rows"].append(measure(size, int(length), args))
    results["load_average_end"] = os.getloadavg()
    write_json(args.output, results)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
