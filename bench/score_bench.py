"""Re-ranking throughput: rankt5_jax `Ranker` vs Hugging Face PyTorch T5, same weights, one run.

    .venv/bin/python bench/score_bench.py [--sizes small,base] [--docs 256] [--repeats 3]
        [--dtype float32|bfloat16] [--batch_size 32] [--batch_tokens N] [--hf_batch_size 32]

For each T5 v1.0-shaped size (random weights, standard 32128-row vocabulary) and variant
(EncDec, Enc), scores the same tokenized pairs with:
  * rankt5_jax `Ranker.score_tokens` (length-sorted, bucketed, one compiled function per bucket,
    at most `--batch_size` pairs and `--batch_tokens` padded tokens per call);
  * HF as peers use it (pyterrier-t5 / rerankers style): input order, batches of 32, padded to the
    longest in the batch, full-vocabulary logits, then the score column;
  * HF length-sorted (sorted by length first, in batches of `--batch_size`);
  * HF fed our batches (the same index batches as ours, each padded to its longest pair): what
    is left of the ratio when HF copies our batching.
Inputs: fixed length 128, and a realistic mix of document lengths up to 512 tokens.
Both sides run on the same kind of device (a GPU when JAX and PyTorch both see one; on CPU with
the same number of threads) in `--dtype`: float32, or bfloat16 (ours: bf16 activations over
float32 params; HF: bf16 weights, as rerankers loads it on GPUs). Figures are medians of
`--repeats` timed runs after a warm-up run; the ratio is ours / HF in docs/s. Also reports the
max score difference to HF (and, in bfloat16, of both sides to our float32 scores), the
encoder's achieved matmul FLOP/s against the matmul peak measured in the same run through XLA
(and, beside it, the same product through PyTorch) at fixed 128, the whole scoring's model FLOP
utilisation, our scoring's own matmul FLOP/s and what 1.3x HF would take of the peak, and peak
memory. Writes JSON to `--output`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import (  # noqa: E402
    SCORE_TOKEN,
    config,
    device_name,
    enc_score_flops,
    encdec_step_flops,
    encoder_flops,
    jax_peak_memory_mb,
    matmul_peak,
    timed,
    torch_device,
    torch_matmul_peak,
    torch_peak_memory_mb,
    write_json,
)
from rankt5_jax.checkpoints import formats as ckpt_formats  # noqa: E402
from rankt5_jax.data.vocab import EOS_ID  # noqa: E402
from rankt5_jax.inference.ranker import Ranker  # noqa: E402
from rankt5_jax.modeling.models import RankT5Enc, RankT5EncDec  # noqa: E402


def make_inputs(kind: str, count: int, seed: int = 0) -> list[list[int]]:
    """Token sequences: `fixed` (128 tokens each) or `mix` (query 8-16 tokens + a document of a
    long-tailed length, like MS MARCO/BEIR passages; at most 512 tokens with EOS)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        if kind == "fixed":
            length = 128
        else:
            length = int(min(512, 16 + rng.lognormal(mean=4.4, sigma=0.6)))
        ids = rng.integers(3, 32000, size=length - 1).tolist() + [EOS_ID]
        out.append(ids)
    return out


def index_batches(sequences, batch_size: int, sort: bool) -> list[list[int]]:
    """Batches of `batch_size` indices, in input order or sorted by length."""
    order = list(range(len(sequences)))
    if sort:
        order.sort(key=lambda i: len(sequences[i]))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def hf_scores(model, sequences, batches, variant, torch, device="cpu"):
    """HF scores of `sequences`, run in `batches` (lists of indices), each padded to its
    longest pair."""
    scores = np.zeros(len(sequences), np.float32)
    with torch.inference_mode():
        for idx in batches:
            idx = list(idx)
            longest = max(len(sequences[i]) for i in idx)
            ids = torch.zeros((len(idx), longest), dtype=torch.long)
            for row, i in enumerate(idx):
                ids[row, : len(sequences[i])] = torch.tensor(sequences[i])
            ids = ids.to(device)
            mask = (ids > 0).long()
            if variant == "encdec":
                start_tokens = torch.zeros((len(idx), 1), dtype=torch.long, device=device)
                logits = model(
                    input_ids=ids, attention_mask=mask, decoder_input_ids=start_tokens
                ).logits
                out = logits[:, 0, SCORE_TOKEN]
            else:
                hidden = model.encoder_model(input_ids=ids, attention_mask=mask).last_hidden_state
                out = model.head(hidden[:, 0]).squeeze(-1)
            scores[idx] = out.float().cpu().numpy()
    return scores


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="small,base")
    parser.add_argument("--variants", default="encdec,enc")
    parser.add_argument("--docs", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--batch_size", type=int, default=32, help="ours (at most) and HF length-sorted"
    )
    parser.add_argument(
        "--batch_tokens",
        type=int,
        help="ours: padded tokens per call (default: the Ranker's, 2048 on CPU; 0: off)",
    )
    parser.add_argument("--hf_batch_size", type=int, default=32, help="HF as peers use it")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--skip_text", action="store_true", help="no tokenization-included row")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--output", default="bench/score_results.json")
    args = parser.parse_args(argv)

    import torch
    import transformers

    torch.set_num_threads(args.threads)
    results = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.python_version()}",
        "device": device_name(),
        "dtype": args.dtype,
        "batch_size": args.batch_size,
        "batch_tokens": args.batch_tokens,
        "hf_batch_size": args.hf_batch_size,
        "versions": {
            "jax": jax.__version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
        "threads": args.threads,
        "matmul_peak_gflops": matmul_peak(args.dtype) / 1e9,
        "torch_matmul_peak_gflops": torch_matmul_peak(torch, args.dtype) / 1e9,
        "rows": [],
    }
    print(
        f"matmul peak: XLA {results['matmul_peak_gflops']:.1f} GFLOP/s, "
        f"PyTorch {results['torch_matmul_peak_gflops']:.1f} GFLOP/s",
        flush=True,
    )
    for size in args.sizes.split(","):
        for variant in filter(None, args.variants.split(",")):
            results["rows"].extend(measure(size, variant, args, results["matmul_peak_gflops"]))
        if not args.skip_text:
            results["rows"].append(measure_text(size, args))
    results["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results["ours_peak_device_mb"] = jax_peak_memory_mb()
    results["hf_peak_device_mb"] = torch_peak_memory_mb(torch)
    write_json(args.output, results)
    print(f"peak RSS {results['peak_rss_mb']:.0f} MB; wrote {args.output}")
    return 0


def measure(size: str, variant: str, args, peak_gflops: float) -> list[dict]:
    """Rows for one size and variant: fixed-128 and length-mix inputs."""
    import torch
    import transformers

    device = torch_device(torch)
    cfg = config(size)
    model, params = _model(cfg, variant, "float32")
    hf = _hf_model(model, params, variant, transformers, torch, device, args.dtype)
    batching = {"max_length": 512, "batch_size": args.batch_size, "batch_tokens": args.batch_tokens}
    reference = Ranker(model, params, vocab=None, **batching)
    ranker = reference
    if args.dtype != "float32":  # the same params, activations in `dtype`
        model = _variant(cfg.replace(dtype=args.dtype), variant)
        ranker = Ranker(model, params, vocab=None, **batching)
    encode = jax.jit(lambda p, t: model.module.apply({"params": p}, t, method=model.module.encode))

    def peer(seqs, batches):
        return hf_scores(hf, seqs, batches, variant, torch, device)

    rows = []
    for kind in ("fixed", "mix"):
        seqs = make_inputs(kind, args.docs)
        ours = ranker.score_tokens(seqs)
        t_ours = timed(lambda: ranker.score_tokens(seqs), args.repeats)  # noqa: B023
        as_peers = index_batches(seqs, args.hf_batch_size, sort=False)
        length_sorted = index_batches(seqs, args.batch_size, sort=True)
        ours_batches = [indices for indices, _ in ranker.batches(seqs)]
        theirs = peer(seqs, as_peers)
        t_peer = timed(lambda: peer(seqs, as_peers), args.repeats)  # noqa: B023
        t_sorted = timed(lambda: peer(seqs, length_sorted), args.repeats)  # noqa: B023
        t_same = timed(lambda: peer(seqs, ours_batches), args.repeats)  # noqa: B023
        row = {
            "size": size,
            "variant": variant,
            "inputs": kind,
            "dtype": args.dtype,
            "docs": len(seqs),
            "ours_docs_per_s": len(seqs) / t_ours,
            "hf_peer_docs_per_s": len(seqs) / t_peer,
            "hf_sorted_docs_per_s": len(seqs) / t_sorted,
            "hf_our_batches_docs_per_s": len(seqs) / t_same,
            "ours_batches": len(ours_batches),
            "max_abs_score_diff": float(np.abs(ours - theirs).max()),
        }
        if args.dtype != "float32":
            exact = reference.score_tokens(seqs)
            row["float32_score_std"] = float(exact.std())
            row["ours_max_abs_diff_vs_float32"] = float(np.abs(ours - exact).max())
            row["hf_max_abs_diff_vs_float32"] = float(np.abs(theirs - exact).max())
        row["ratio_vs_peer"] = row["ours_docs_per_s"] / row["hf_peer_docs_per_s"]
        row["ratio_vs_sorted"] = row["ours_docs_per_s"] / row["hf_sorted_docs_per_s"]
        row["ratio_vs_our_batches"] = row["ours_docs_per_s"] / row["hf_our_batches_docs_per_s"]
        if kind == "fixed":
            tokens = jnp.asarray(np.array(seqs[: args.batch_size], np.int32))
            t_enc = timed(
                lambda: encode(ranker.params, tokens).block_until_ready(),  # noqa: B023
                args.repeats,
            )
            row["encoder_gflops"] = encoder_flops(cfg, tokens.size, 128) / t_enc / 1e9
            row["encoder_utilisation"] = row["encoder_gflops"] / peak_gflops
            # Whole scoring (host batching, transfers, decoder step included) against the peak.
            per_doc = encoder_flops(cfg, 128, 128)
            row["scoring_model_flops_utilisation"] = (
                row["ours_docs_per_s"] * per_doc / 1e9 / peak_gflops
            )
            row["hf_sorted_model_flops_utilisation"] = (
                row["hf_sorted_docs_per_s"] * per_doc / 1e9 / peak_gflops
            )
            # Our implementation's own matmul FLOPs (fewer than the encoder's nominal ones for
            # Enc, more for EncDec's decoder step): the rate our whole scoring reached, and
            # the rate that 1.3x HF as peers use it would take, against the peak.
            if variant == "encdec":
                ours_per_doc = encdec_step_flops(cfg, 1, 128, folded=True)
            else:
                ours_per_doc = enc_score_flops(cfg, 1, 128)
            row["ours_scoring_gflops"] = row["ours_docs_per_s"] * ours_per_doc / 1e9
            row["ours_scoring_share_of_peak"] = row["ours_scoring_gflops"] / peak_gflops
            row["target_1_3x_gflops"] = 1.3 * row["hf_peer_docs_per_s"] * ours_per_doc / 1e9
            row["target_1_3x_share_of_peak"] = row["target_1_3x_gflops"] / peak_gflops
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def _variant(cfg, variant: str):
    return RankT5EncDec(cfg, score_token_id=SCORE_TOKEN) if variant == "encdec" else RankT5Enc(cfg)


def _model(cfg, variant: str, dtype: str):
    """(model with activations in `dtype`, its random initial params as numpy)."""
    model = _variant(cfg.replace(dtype=dtype), variant)
    params = model.get_initial_variables(
        jax.random.PRNGKey(0), {"encoder_input_tokens": (1, 1, 8)}
    )["params"]
    return model, jax.tree_util.tree_map(np.asarray, params)


def measure_text(size: str, args) -> dict:
    """End to end from text (tokenization included): `Ranker.score` vs HF's T5Tokenizer +
    model as peers use them, on the realistic length mix, EncDec."""
    import torch
    import transformers

    from rankt5_jax.data import synthetic
    from rankt5_jax.data.vocab import Vocabulary

    tmp = tempfile.mkdtemp()
    spm_path = synthetic.train_sentencepiece(os.path.join(tmp, "spiece"), vocab_size=2000)
    vocab = Vocabulary(spm_path)
    rng = np.random.default_rng(1)
    words = [f"w{i}" for i in range(3000)]
    query = " ".join(rng.choice(words, size=6))
    docs = [
        " ".join(rng.choice(words, size=int(min(200, 8 + rng.lognormal(3.6, 0.6)))))
        for _ in range(args.docs)
    ]
    device = torch_device(torch)
    model, params = _model(config(size), "encdec", args.dtype)
    hf = _hf_model(model, params, "encdec", transformers, torch, device, args.dtype)
    tokenizer = transformers.T5Tokenizer(spm_path, extra_ids=100, legacy=True)
    ranker = Ranker(
        model,
        params,
        vocab,
        max_length=512,
        batch_size=args.batch_size,
        batch_tokens=args.batch_tokens,
    )
    step = args.hf_batch_size

    def peer():
        scores = []
        with torch.inference_mode():
            for start in range(0, len(docs), step):
                texts = [f"Query: {query} Document: {d}" for d in docs[start : start + step]]
                enc = tokenizer(
                    texts, padding=True, truncation=True, max_length=512, return_tensors="pt"
                ).to(device)
                start_tokens = torch.zeros((len(texts), 1), dtype=torch.long, device=device)
                logits = hf(**enc, decoder_input_ids=start_tokens).logits
                scores.append(logits[:, 0, SCORE_TOKEN].float().cpu().numpy())
        return np.concatenate(scores)

    ours = ranker.score(query, docs)
    theirs = peer()
    t_ours = timed(lambda: ranker.score(query, docs), args.repeats)
    t_peer = timed(peer, args.repeats)
    row = {
        "size": size,
        "variant": "encdec",
        "inputs": "text_mix",
        "dtype": args.dtype,
        "docs": len(docs),
        "ours_docs_per_s": len(docs) / t_ours,
        "hf_peer_docs_per_s": len(docs) / t_peer,
        "ratio_vs_peer": t_peer / t_ours,
        "max_abs_score_diff": float(np.abs(ours - theirs).max()),
    }
    print(json.dumps(row), flush=True)
    return row


def _hf_model(model, params, variant, transformers, torch, device="cpu", dtype="float32"):
    """The same weights in transformers (EncDec: T5ForConditionalGeneration; Enc: T5EncoderModel
    plus the dense head), on `device`, weights in `dtype`."""
    torch_dtype = getattr(torch, dtype)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt_formats.save_hf(tmp, model.config, params, variant)
        if variant == "encdec":
            hf = transformers.T5ForConditionalGeneration.from_pretrained(tmp)
            return hf.to(device=device, dtype=torch_dtype).eval()
        encoder = transformers.T5EncoderModel.from_pretrained(tmp)
    head = torch.nn.Linear(model.config.emb_dim, 1)
    with torch.no_grad():
        head.weight.copy_(torch.tensor(np.asarray(params["score_head"]["kernel"]).T))
        head.bias.copy_(torch.tensor(np.asarray(params["score_head"]["bias"])))
    wrapper = torch.nn.Module()
    wrapper.encoder_model = encoder
    wrapper.head = head
    return wrapper.to(device=device, dtype=torch_dtype).eval()


if __name__ == "__main__":
    sys.exit(main())
