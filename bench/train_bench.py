"""Listwise training throughput: rankt5_jax vs a straightforward PyTorch equivalent, one run.

    .venv/bin/python bench/train_bench.py [--size small] [--lists 2] [--steps 3]

Both sides: RankT5-EncDec on T5 v1.0-shaped weights (identical at the start), lists of 36
candidates of 128 tokens, the listwise softmax loss, AdamW (lr 1e-4), float32, the same thread
count. Ours is `model.loss_fn` + optax under `jax.jit` with donated state (the trainer's step
without the input pipeline); PyTorch is HF `T5ForConditionalGeneration` + `torch.optim.AdamW` +
the same loss. Reports lists/s (median step time after a warm-up step), the ratio, the first-step
loss of each side, and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import SCORE_TOKEN, config, write_json  # noqa: E402
from rankt5_jax import checkpoints  # noqa: E402
from rankt5_jax.models import RankT5EncDec  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", default="small")
    parser.add_argument("--lists", type=int, default=2)
    parser.add_argument("--list_size", type=int, default=36)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--output", default="bench/train_results.json")
    args = parser.parse_args(argv)

    import torch
    import transformers

    torch.set_num_threads(args.threads)
    cfg = config(args.size)
    model = RankT5EncDec(cfg, SCORE_TOKEN, loss="softmax")
    params = model.get_initial_variables(
        jax.random.PRNGKey(0), {"encoder_input_tokens": (1, 1, 8)}
    )["params"]
    params = jax.tree_util.tree_map(np.asarray, params)
    rng = np.random.default_rng(0)
    shape = (args.lists, args.list_size, args.length)
    tokens = rng.integers(3, 32000, size=shape).astype(np.int32)
    tokens[..., -1] = 1
    labels = np.zeros(shape[:2], np.float32)
    labels[:, 0] = 1.0
    batch = {"encoder_input_tokens": tokens, "label": labels, "mask": np.ones(shape[:2], bool)}

    # -- ours -------------------------------------------------------------------------------
    tx = optax.adamw(1e-4)
    state = (jax.device_put(params), tx.init(params))

    def step(state, batch):
        p, opt = state
        (loss, _), grads = jax.value_and_grad(model.loss_fn, has_aux=True)(p, batch, None)
        updates, opt = tx.update(grads, opt, p)
        return (optax.apply_updates(p, updates), opt), loss

    step = jax.jit(step, donate_argnums=(0,))
    times, ours_losses = [], []
    for i in range(args.steps + 1):
        start = time.perf_counter()
        state, loss = step(state, batch)
        loss = float(loss)
        if i:
            times.append(time.perf_counter() - start)
        ours_losses.append(loss)
    ours = args.lists / statistics.median(times)

    # -- PyTorch ----------------------------------------------------------------------------
    with tempfile.TemporaryDirectory() as tmp:
        checkpoints.save_hf(tmp, cfg, params, "encdec")
        hf = transformers.T5ForConditionalGeneration.from_pretrained(tmp).train()
    optimizer = torch.optim.AdamW(hf.parameters(), lr=1e-4)
    ids = torch.tensor(tokens.reshape(-1, args.length), dtype=torch.long)
    mask = (ids > 0).long()
    start_tokens = torch.zeros((ids.shape[0], 1), dtype=torch.long)
    target = torch.tensor(labels)
    times, torch_losses = [], []
    for i in range(args.steps + 1):
        start = time.perf_counter()
        logits = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=start_tokens).logits
        scores = logits[:, 0, SCORE_TOKEN].reshape(args.lists, args.list_size)
        loss = -(target * torch.log_softmax(scores, dim=-1)).sum(-1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if i:
            times.append(time.perf_counter() - start)
        torch_losses.append(float(loss))
    theirs = args.lists / statistics.median(times)

    result = {
        "size": args.size,
        "lists_per_step": args.lists,
        "list_size": args.list_size,
        "length": args.length,
        "threads": args.threads,
        "ours_lists_per_s": ours,
        "torch_lists_per_s": theirs,
        "ratio": ours / theirs,
        "first_loss_ours": ours_losses[0],
        "first_loss_torch": torch_losses[0],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "versions": {"jax": jax.__version__, "torch": torch.__version__},
    }
    print(json.dumps(result, indent=2))
    write_json(args.output, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
