"""The benchmarks run (tiny sizes; speed is never asserted in tests)."""

import json
import os
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # `bench.common`: the benchmarks' FLOP counts, checked below


# Each benchmark's arguments (tiny sizes). All six start together from one fixture, at most
# PARALLEL at a time: each spends most of its time starting Python, JAX, TensorFlow or PyTorch
# and compiling, which overlaps well on two cores. Subprocesses run on one CPU device
# (tests/conftest.py).
BENCHES = {
    "score": ("score_bench.py", "--sizes tiny --docs 12 --repeats 1 --batch_size 4 "
              "--batch_tokens 256"),
    "train": ("train_bench.py", "--size tiny --lists 2 --list_size 4 --length 16 --steps 1 "
              "--check_steps 2 --grad_accum 2"),
    "prepare": ("prepare_bench.py", "--passages 2000 --queries 50 --candidates 20 "
                "--work_dir {tmp}/prepare_work"),
    "fit5": ("fit5_bench.py", "--sizes tiny --lengths 16 --list_size 6 --global_layers 2 "
             "--repeats 1 --ranker"),
    "bm25": ("bm25_bench.py", "--passages 2000 --queries 10 --vocab 3000 --top_k 50 "
             "--sides ours,bm25s --in_process --work_dir {tmp}/bm25_work"),
    "xtr": ("xtr_bench.py", "--passages 1200 --queries 8 --xtr_dim 16 --emb_dim 32 "
            "--chunk_passages 400 --shard_passages 800 --nprobe 2,8 --token_k 40 "
            "--vocab_size 400 --work_dir {tmp}/xtr_work"),
}  # fmt: skip
PARALLEL = 2


@pytest.fixture(scope="module")
def bench_runs(request, tmp_path_factory):
    """name -> (returncode, stderr, output path): the benchmarks of BENCHES whose test is
    selected, each run once."""
    tmp = tmp_path_factory.mktemp("bench")
    selected = {item.name for item in request.session.items}
    pending = [name for name in BENCHES if f"test_{name}_bench_runs" in selected]
    running, done = {}, {}
    while pending or running:
        while pending and len(running) < PARALLEL:
            name = pending.pop(0)
            script, args = BENCHES[name]
            out = tmp / f"{name}.json"
            command = [sys.executable, f"bench/{script}", *args.format(tmp=tmp).split()]
            log = open(tmp / f"{name}.stderr", "w+")
            proc = subprocess.Popen(
                command + ["--output", str(out)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=log
            )
            running[name] = (proc, log, out, time.time())
        for name, (proc, log, out, started) in list(running.items()):
            if proc.poll() is None and time.time() - started > 600:
                proc.kill()
                proc.wait()
            if proc.poll() is not None:
                log.seek(0)
                done[name] = (proc.returncode, log.read(), out)
                log.close()
                del running[name]
        time.sleep(0.2)
    return done


def _result(bench_runs, name):
    """The JSON benchmark `name` wrote (asserting it exited 0)."""
    returncode, stderr, out = bench_runs[name]
    assert returncode == 0, stderr[-3000:]
    return json.loads(out.read_text())


def test_score_bench_runs(bench_runs):
    result = _result(bench_runs, "score")
    assert len(result["rows"]) == 5 and result["matmul_peak_gflops"] > 0
    assert result["torch_matmul_peak_gflops"] > 0 and result["batch_tokens"] == 256
    from bench.common import config, enc_score_flops, encdec_step_flops

    per_doc = {  # our implementation's matmul FLOPs per 128-token pair
        "encdec": encdec_step_flops(config("tiny"), 1, 128, folded=True) / 1e9,
        "enc": enc_score_flops(config("tiny"), 1, 128) / 1e9,
    }
    for row in result["rows"]:
        if row["inputs"] == "fixed":  # what 1.3x HF as peers use it takes of the peak
            needed = 1.3 * row["hf_peer_docs_per_s"] * per_doc[row["variant"]]
            assert abs(row["target_1_3x_gflops"] - needed) < 1e-6 * needed
            share = needed / result["matmul_peak_gflops"]
            assert abs(row["target_1_3x_share_of_peak"] - share) < 1e-6 * share
            ratio = row["ours_scoring_gflops"] / needed  # the same FLOPs on both sides of it
            assert abs(ratio - row["ratio_vs_peer"] / 1.3) < 1e-6
    for row in result["rows"]:
        assert row["max_abs_score_diff"] < 1e-3
        assert row["ours_docs_per_s"] > 0 and row["hf_peer_docs_per_s"] > 0
    mix = [row for row in result["rows"] if row["inputs"] == "mix"]
    for row in mix:  # 12 pairs: at most 4 per call, fewer for long ones (256 tokens per call)
        assert row["ours_batches"] > 3 and row["hf_our_batches_docs_per_s"] > 0


def test_train_bench_runs(bench_runs):
    result = _result(bench_runs, "train")
    assert abs(result["first_loss_ours"] - result["first_loss_torch"]) < 1e-3
    # HF projects keys/values of every token in every decoder layer and the whole vocabulary
    assert result["torch_step_gflop"] > result["ours_step_gflop"] > 0
    step = result["ours_step_gflop"] / (result["lists_per_step"] / result["ours_lists_per_s"])
    assert abs(result["ours_gflops"] - step) < 1e-6 * step
    target = 1.3 * result["ours_step_gflop"] * result["torch_lists_per_s"] / 2
    assert abs(result["target_1_3x_gflops"] - target) < 1e-6 * target
    assert result["xla_matmul_peak_gflops"] > 0 and result["torch_matmul_peak_gflops"] > 0
    check = result["check"]["summary"]["float32"]
    assert check["all_finite"] and check["param_dtypes"] == ["float32"]
    assert check["loss_dtype"] == "float32"


def test_prepare_bench_runs(bench_runs):
    result = _result(bench_runs, "prepare")
    assert result["prepare_peak_rss_mb"] > 0 and "wrote 50 queries" in result["summary"]


def test_fit5_bench_runs(bench_runs):
    result = _result(bench_runs, "fit5")
    (row,) = result["rows"]
    # FiT5's matmul FLOPs are monoT5's plus the global layers', as counted in the jaxprs
    assert row["flops_match_jaxpr"] and 0 < row["global_flop_share"] < 1
    assert row["scores_finite"] and row["max_abs_score_diff_fit5_vs_monot5"] > 0
    assert row["monot5_s"] > 0 and row["fit5_s"] > 0 and row["global_alone_s"] > 0
    assert 0 < row["profile_global_share"] < 1  # the global layers' ops found in the profile
    assert row["ranker_monot5_s"] > 0 and row["ranker_fit5_s"] > 0
    assert abs(row["ratio_of_medians"] - row["fit5_s"] / row["monot5_s"]) < 1e-9


def test_bm25_bench_runs(bench_runs):
    result = _result(bench_runs, "bm25")
    # ours and bm25s called directly (same settings) give the same top-10 scores
    assert result["check"]["queries_same_top10_length"] == 10
    assert result["check"]["max_abs_top10_score_diff"] == 0.0
    ours, theirs = result["rows"]["ours"], result["rows"]["bm25s"]
    assert ours["terms"] > 1000 and ours["queries_per_s"] > 0 and theirs["docs_per_s"] > 0
    ratio = result["ours_over_bm25s"]["index_time"]
    assert abs(ratio - ours["index_s"] / theirs["index_s"]) < 1e-9 * ratio


def test_xtr_bench_runs(bench_runs):
    result = _result(bench_runs, "xtr")
    assert result["passages"] == 1200 and result["settings"]["pq_m"] == 2
    assert result["tokens"] == round(result["tokens_per_passage"] * 1200)
    assert result["flat_bytes_per_token"] == 64
    assert 2 < result["compressed_bytes_per_token"] < result["flat_bytes_per_token"]
    assert result["index_passages_per_s"] > 0 and result["exact_queries_per_s"] > 0
    assert [row["nprobe"] for row in result["compressed"]] == [2, 8]
    assert all(0 < row["recall_at_100"] <= 1 for row in result["compressed"])


def test_step_flops_match_exact_counts(tmp_path):
    """The benchmarks' FLOP formulas against counts of the real computations: the dot products
    in our models' jaxprs (EncDec folded, Enc's last layer for position 0, the encoder alone)
    and PyTorch's FLOP counter on HF T5 (unfolded)."""
    import jax
    import numpy as np
    import torch
    import transformers
    from torch.utils.flop_counter import FlopCounterMode

    from bench.common import (
        SCORE_TOKEN,
        config,
        enc_score_flops,
        encdec_step_flops,
        encoder_flops,
    )
    from bench.common import jaxpr_dot_flops as _jaxpr_dot_flops
    from rankt5_jax.checkpoints import formats as ckpt_formats
    from rankt5_jax.modeling.models import RankT5Enc, RankT5EncDec

    cfg = config("tiny")
    sequences, length = 3, 24
    model = RankT5EncDec(cfg, score_token_id=SCORE_TOKEN)
    tokens = np.random.default_rng(0).integers(3, 300, size=(1, sequences, length), dtype=np.int32)
    shape = tokens.shape
    params = model.get_initial_variables(jax.random.PRNGKey(0), {"encoder_input_tokens": shape})[
        "params"
    ]
    batch = {"encoder_input_tokens": tokens}
    ours = _jaxpr_dot_flops(jax.make_jaxpr(model.score_batch)(params, batch).jaxpr)
    assert ours == encdec_step_flops(cfg, sequences, length, folded=True)

    encode = jax.make_jaxpr(
        lambda p, t: model.module.apply({"params": p}, t, method=model.module.encode)
    )
    assert _jaxpr_dot_flops(encode(params, tokens[0]).jaxpr) == encoder_flops(
        cfg, sequences * length, length
    )

    enc = RankT5Enc(cfg)
    enc_params = enc.get_initial_variables(jax.random.PRNGKey(0), {"encoder_input_tokens": shape})
    enc_jaxpr = jax.make_jaxpr(enc.score_batch)(enc_params["params"], batch).jaxpr
    assert _jaxpr_dot_flops(enc_jaxpr) == enc_score_flops(cfg, sequences, length)

    ckpt_formats.save_hf(str(tmp_path), cfg, params, "encdec")
    hf = transformers.T5ForConditionalGeneration.from_pretrained(str(tmp_path)).eval()
    ids = torch.tensor(tokens[0], dtype=torch.long)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        hf(input_ids=ids, decoder_input_ids=torch.zeros((sequences, 1), dtype=torch.long))
    assert counter.get_total_flops() == encdec_step_flops(cfg, sequences, length, folded=False)
