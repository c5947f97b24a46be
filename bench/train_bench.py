"""Listwise training throughput: rankt5_jax vs a straightforward PyTorch equivalent, one run.

    .venv/bin/python bench/train_bench.py [--size small] [--lists 2] [--steps 3] [--dtype float32]

Both sides: RankT5-EncDec on T5 v1.0-shaped weights (identical at the start), lists of 36
candidates of 128 tokens, the listwise softmax loss, AdamW (lr 1e-4), the same thread count, on
the same kind of device (a GPU when JAX and PyTorch both see one). Ours is the trainer's own step
(`trainer.init_train_state` + `trainer.make_train_step`: params sharded over a `Partitioner` mesh,
donated state, gradient norm and finite check) without the input pipeline; PyTorch is HF
`T5ForConditionalGeneration` + `torch.optim.AdamW` + the same loss. `--dtype bfloat16`: ours runs
bf16 activations with float32 params, scores and loss; PyTorch runs float32 weights under
`torch.autocast(bfloat16)` (the standard mixed-precision recipe). `--grad_accum N` splits each
step's lists into N micro-batches on both sides (ours: the trainer's `grad_accum_steps`; PyTorch:
N backward passes, one optimizer step): the same update, a smaller working set.

Reports lists/s (median step time after a warm-up step), the ratio, the first-step loss of each
side, peak memory, and each side's matmul FLOP/s (3x its forward pass's products; ours does
fewer) against the matmul peak measured in the run through its own library, with what 1.3x
PyTorch would take of XLA's.

`--check_steps N` adds a training check: N steps of Adafactor (lr 1e-3) on a learnable
synthetic list task (the positive contains the query's two tokens), in float32 and in `--dtype`,
from the same init on the same lists; reports both loss curves, the dtypes of params and loss,
and that every step was finite.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import (  # noqa: E402
    SCORE_TOKEN,
    config,
    device_name,
    encdec_step_flops,
    jax_peak_memory_mb,
    matmul_peak,
    torch_device,
    torch_matmul_peak,
    torch_peak_memory_mb,
    write_json,
)
from rankt5_jax.checkpoints import formats as ckpt_formats  # noqa: E402
from rankt5_jax.modeling.models import RankT5EncDec  # noqa: E402
from rankt5_jax.modeling.partitioning import Partitioner  # noqa: E402
from rankt5_jax.training import optimizers, train_state, train_step  # noqa: E402


def random_batch(lists: int, list_size: int, length: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    shape = (lists, list_size, length)
    tokens = rng.integers(3, 32000, size=shape).astype(np.int32)
    tokens[..., -1] = 1
    labels = np.zeros(shape[:2], np.float32)
    labels[:, 0] = 1.0
    return _batch(tokens, labels)


def learnable_batch(lists: int, list_size: int, length: int, rng: np.random.Generator) -> dict:
    """Lists where the positive (at a random position) holds the query's two tokens adjacent,
    after `query q1 q2 | document ...`; negatives hold neither."""
    tokens = rng.integers(1000, 32000, size=(lists, list_size, length)).astype(np.int32)
    labels = np.zeros((lists, list_size), np.float32)
    for i in range(lists):
        q1, q2 = rng.integers(3, 1000, size=2)
        tokens[i, :, 0:2] = (q1, q2)
        positive = rng.integers(list_size)
        at = rng.integers(4, length - 3)
        tokens[i, positive, at : at + 2] = (q1, q2)
        labels[i, positive] = 1.0
    tokens[..., -1] = 1
    return _batch(tokens, labels)


def _batch(tokens: np.ndarray, labels: np.ndarray) -> dict:
    lists, list_size = labels.shape
    zeros = np.zeros((lists, list_size, 1), np.int32)
    return {
        "encoder_input_tokens": tokens,
        "decoder_input_tokens": zeros,
        "decoder_target_tokens": zeros,
        "label": labels,
        "mask": np.ones(labels.shape, bool),
    }


def our_trainer(
    size: str,
    dtype: str,
    lists: int,
    length: int,
    optimizer: tuple,
    seed: int = 0,
    grad_accum_steps: int = 1,
):
    """(state, step_fn) of the trainer's own step, for a fresh model."""
    model = RankT5EncDec(
        config(size).replace(dtype=dtype), score_token_id=SCORE_TOKEN, loss="softmax"
    )
    # Data parallel over as many devices as divide the lists per step.
    partitioner = Partitioner(devices=jax.devices()[: math.gcd(lists, jax.device_count())])
    tx, lr = optimizer
    state = train_state.init_train_state(model, tx, partitioner, length, seed)
    step_fn, shardings = train_step.make_train_step(
        model, tx, lr, partitioner, state, grad_accum_steps=grad_accum_steps
    )

    def run(state, batch):
        on_mesh = {key: jax.device_put(batch[key], shardings[key]) for key in shardings}
        with partitioner.context():
            return step_fn(state, on_mesh)

    return state, run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", default="small")
    parser.add_argument("--lists", type=int, default=2)
    parser.add_argument("--list_size", type=int, default=36)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3, help="timed steps; 0: no throughput")
    parser.add_argument(
        "--grad_accum",
        type=int,
        default=1,
        help="micro-batches per step, both sides (the lists split evenly; one optimizer update)",
    )
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--check_steps", type=int, default=0)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--output", default="bench/train_results.json")
    args = parser.parse_args(argv)

    import torch
    import transformers

    torch.set_num_threads(args.threads)
    result = {
        "size": args.size,
        "dtype": args.dtype,
        "device": device_name(),
        "lists_per_step": args.lists,
        "grad_accum": args.grad_accum,
        "list_size": args.list_size,
        "length": args.length,
        "threads": args.threads,
        "versions": {
            "jax": jax.__version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
    }
    if args.steps:
        result.update(throughput(args, torch, transformers))
        print(json.dumps(result, indent=2), flush=True)
    if args.check_steps:
        result["check"] = training_check(args)
        print(json.dumps(result["check"]["summary"], indent=2), flush=True)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    write_json(args.output, result)
    return 0


def throughput(args, torch, transformers) -> dict:
    """Lists/s of our trainer's step and of the PyTorch equivalent, same weights and lists."""
    device = torch_device(torch)
    batch = random_batch(args.lists, args.list_size, args.length)

    # -- ours: the trainer's step -----------------------------------------------------------
    if args.lists % args.grad_accum:
        raise SystemExit("--lists must be a multiple of --grad_accum")
    state, run = our_trainer(
        args.size,
        args.dtype,
        args.lists,
        args.length,
        optimizers.make_optimizer("adamw", 1e-4),
        grad_accum_steps=args.grad_accum,
    )
    params = jax.device_get(state["params"])
    times, ours_losses = [], []
    for i in range(args.steps + 1):
        start = time.perf_counter()
        state, metrics = run(state, batch)
        loss = float(metrics["loss"])  # waits for the step
        if i:
            times.append(time.perf_counter() - start)
        ours_losses.append(loss)
    ours = args.lists / statistics.median(times)
    ours_memory = jax_peak_memory_mb()
    del state

    # -- PyTorch ----------------------------------------------------------------------------
    with tempfile.TemporaryDirectory() as tmp:
        ckpt_formats.save_hf(tmp, config(args.size), params, "encdec")
        hf = transformers.T5ForConditionalGeneration.from_pretrained(tmp).to(device).train()
    optimizer = torch.optim.AdamW(hf.parameters(), lr=1e-4)
    tokens = batch["encoder_input_tokens"]
    ids = torch.tensor(tokens.reshape(-1, args.length), dtype=torch.long, device=device)
    mask = (ids > 0).long()
    start_tokens = torch.zeros((ids.shape[0], 1), dtype=torch.long, device=device)
    target = torch.tensor(batch["label"], device=device)
    autocast = torch.autocast(
        device_type=device, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16"
    )
    micro_lists = args.lists // args.grad_accum
    micro_rows = micro_lists * args.list_size
    times, torch_losses = [], []
    for i in range(args.steps + 1):
        start = time.perf_counter()
        optimizer.zero_grad()
        loss = 0.0
        for micro in range(args.grad_accum):  # the mean over all lists, one update
            rows = slice(micro * micro_rows, (micro + 1) * micro_rows)
            with autocast:
                logits = hf(
                    input_ids=ids[rows],
                    attention_mask=mask[rows],
                    decoder_input_ids=start_tokens[rows],
                ).logits
            scores = logits[:, 0, SCORE_TOKEN].float().reshape(micro_lists, args.list_size)
            labels = target[micro * micro_lists : (micro + 1) * micro_lists]
            micro_loss = (
                -(labels * torch.log_softmax(scores, dim=-1)).sum(-1).mean() / args.grad_accum
            )
            micro_loss.backward()
            loss = loss + micro_loss.detach()
        optimizer.step()
        torch_losses.append(float(loss))  # waits for the step
        if i:
            times.append(time.perf_counter() - start)
    theirs = args.lists / statistics.median(times)
    torch_memory = torch_peak_memory_mb(torch)
    del hf, optimizer

    # -- against the physical limit ----------------------------------------------------------
    # Matmul FLOPs per step: 3x the forward pass (each product's input and weight gradients
    # cost what it did). Ours skips the decoder's key/value projections of every input token
    # and the full-vocabulary logits, so the two sides do different amounts of work.
    cfg = config(args.size)
    sequences = args.lists * args.list_size
    ours_flops = 3 * encdec_step_flops(cfg, sequences, args.length, folded=True)
    torch_flops = 3 * encdec_step_flops(cfg, sequences, args.length, folded=False)
    xla_peak = matmul_peak(args.dtype) / 1e9
    torch_peak = torch_matmul_peak(torch, args.dtype) / 1e9
    ours_gflops = ours_flops * ours / args.lists / 1e9
    torch_gflops = torch_flops * theirs / args.lists / 1e9
    target_gflops = 1.3 * ours_flops * theirs / args.lists / 1e9

    return {
        "ours_lists_per_s": ours,
        "torch_lists_per_s": theirs,
        "ratio": ours / theirs,
        "ours_step_gflop": ours_flops / 1e9,
        "torch_step_gflop": torch_flops / 1e9,
        "xla_matmul_peak_gflops": xla_peak,
        "torch_matmul_peak_gflops": torch_peak,
        "ours_gflops": ours_gflops,
        "torch_gflops": torch_gflops,
        "ours_share_of_xla_peak": ours_gflops / xla_peak,
        "torch_share_of_torch_peak": torch_gflops / torch_peak,
        "target_1_3x_gflops": target_gflops,
        "target_1_3x_share_of_xla_peak": target_gflops / xla_peak,
        "first_loss_ours": ours_losses[0],
        "first_loss_torch": torch_losses[0],
        "ours_peak_device_mb": ours_memory,
        "torch_peak_device_mb": torch_memory,
    }


def training_check(args) -> dict:
    """float32 vs `--dtype` training on the same learnable lists from the same init."""
    curves, dtypes = {}, {}
    for dtype in dict.fromkeys(("float32", args.dtype)):
        state, run = our_trainer(
            args.size, dtype, args.lists, args.length, optimizers.make_optimizer("adafactor", 1e-3)
        )
        rng = np.random.default_rng(1)
        losses, finite = [], True
        start = time.perf_counter()
        for step in range(1, args.check_steps + 1):
            state, metrics = run(
                state, learnable_batch(args.lists, args.list_size, args.length, rng)
            )
            losses.append(metrics["loss"])
            finite &= metrics["finite"]
            if step % 10 == 0 or step == 1:
                print(
                    f"check {dtype} step {step}: loss {float(metrics['loss']):.4f} "
                    f"({time.perf_counter() - start:.1f} s)",
                    flush=True,
                )
        losses = [float(loss) for loss in losses]
        curves[dtype] = {
            "losses": losses,
            "all_finite": bool(finite),
            "seconds": time.perf_counter() - start,
            "loss_dtype": str(metrics["loss"].dtype),
            "param_dtypes": sorted(
                {str(x.dtype) for x in jax.tree_util.tree_leaves(state["params"])}
            ),
        }
        dtypes[dtype] = curves[dtype]["param_dtypes"]
    window = max(1, args.check_steps // 10)
    summary = {
        dtype: {
            "first_loss": curve["losses"][0],
            f"mean_loss_last_{window}": float(np.mean(curve["losses"][-window:])),
            "all_finite": curve["all_finite"],
            "loss_dtype": curve["loss_dtype"],
            "param_dtypes": curve["param_dtypes"],
            "seconds": curve["seconds"],
        }
        for dtype, curve in curves.items()
    }
    return {"steps": args.check_steps, "summary": summary, "curves": curves}


if __name__ == "__main__":
    sys.exit(main())
