"""Reliability: kill -9 and resume, the non-finite guard, fuzzed readers and metrics."""

import os
import signal
import subprocess
import sys
import time

import flax
import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rankt5_jax.checkpoints import model_dir as model_dir_lib
from rankt5_jax.data import formats
from rankt5_jax.errors import InputFormatError, NonFiniteError
from rankt5_jax.evaluation import measures
from rankt5_jax.modeling.partitioning import Partitioner
from rankt5_jax.training import optimizers, setup
from rankt5_jax.training import train as train_lib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 30


def _train_cmd(model_dir, data_dir):
    return [
        sys.executable,
        "-m",
        "rankt5_jax",
        "train",
        "--gin_file=experiments/smoke_cpu.gin",
        f"--gin.MODEL_DIR='{model_dir}'",
        f"--gin.DATA_DIR='{data_dir}'",
        f"--gin.TRAIN_STEPS={STEPS}",
        "--gin.CHECKPOINT_PERIOD=10",
        "--gin.EVAL_PERIOD=None",
        "--gin.trainer.train.log_period=1",
        "--gin.smoke.smoke_data.num_queries=60",
        "--gin.smoke.smoke_data.dev_queries=10",
    ]


def _run_until(cmd, stop, env=None, timeout=300):
    """Starts `cmd`; SIGKILLs it as soon as `stop(stdout_so_far)` is true. Returns stdout."""
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=dict(os.environ, **(env or {})),
    )
    out = []
    deadline = time.time() + timeout
    for line in proc.stdout:
        out.append(line)
        if stop("".join(out)):
            proc.send_signal(signal.SIGKILL)
            break
        assert time.time() < deadline, "run did not reach the kill point"
    proc.wait()
    return "".join(out), proc.returncode


def _final_params(model_dir):
    spec, params = model_dir_lib.load_model_dir(str(model_dir))
    return flax.traverse_util.flatten_dict(params)


def test_kill_and_resume_three_points(tmp_path):
    data_dir = tmp_path / "data"
    straight = tmp_path / "straight"
    out, code = _run_until(_train_cmd(straight, data_dir), lambda s: False)
    assert code == 0, out[-2000:]
    reference = _final_params(straight)

    model_dir = tmp_path / "killed"
    ckpts = model_dir / "checkpoints"
    # 1. between checkpoints (after step 13, checkpoint 10 is done)
    out, code = _run_until(_train_cmd(model_dir, data_dir), lambda s: "step 13/" in s)
    assert code == -signal.SIGKILL and sorted(os.listdir(ckpts)) == ["10"]
    # 2. during a checkpoint save (data position of step 20 written, checkpoint not finalised)
    out, code = _run_until(
        _train_cmd(model_dir, data_dir),
        lambda s: "checkpoint: saving step 20" in s,
        env={"RANKT5_FAULT_PAUSE_IN_SAVE": "30"},
    )
    assert "resumed from step 10" in out and code == -signal.SIGKILL
    assert "20" not in os.listdir(ckpts) and (model_dir / "data_state" / "20").exists()
    # A half-written orbax directory is never taken as the latest checkpoint.
    partial = ckpts / "20.orbax-checkpoint-tmp-1234"
    partial.mkdir()
    (partial / "junk").write_text("partial")
    # 3. right after a checkpoint (checkpoint 20 finalised, killed before step 21 finishes)
    out, code = _run_until(
        _train_cmd(model_dir, data_dir), lambda s: "step 20/" in s and (ckpts / "20").exists()
    )
    assert "resumed from step 10" in out
    out, code = _run_until(_train_cmd(model_dir, data_dir), lambda s: False)
    assert code == 0 and "resumed from step 20" in out, out[-2000:]
    resumed = _final_params(model_dir)
    assert resumed.keys() == reference.keys()
    for key in reference:
        np.testing.assert_allclose(resumed[key], reference[key], atol=1e-6, err_msg=str(key))


@pytest.fixture(scope="module")
def small_data(smoke_lists):
    return smoke_lists  # the session's smoke lists (tests/conftest.py)


def _diverging_run(data, model_dir, non_finite):
    model = setup.make_model(
        variant="encdec", size="tiny", vocab_path=data["vocab"], dropout_rate=0.0
    )
    return train_lib.train(
        model_dir=str(model_dir),
        model=model,
        vocab_path=data["vocab"],
        train_task=data["train_task"],
        train_steps=6,
        task_feature_lengths={"inputs": 32, "targets": 1},
        batch_size=8,
        partitioner=Partitioner(devices=jax.devices()[:1]),  # one device: no mesh under test
        checkpoint_period=1,
        log_period=1,
        optimizer=optimizers.make_optimizer("sgd", learning_rate=1e38),
        non_finite=non_finite,
        progress=False,
    )


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(small_data, tmp_path):
    from rankt5_jax import Ranker

    with pytest.raises(NonFiniteError, match=r"at step (\d+)") as info:
        _diverging_run(small_data, tmp_path / "m", "stop")
    bad_step = int(str(info.value).split("at step ")[1].split()[0])
    saved = sorted(int(s) for s in os.listdir(tmp_path / "m" / "checkpoints") if s.isdigit())
    assert saved and max(saved) == bad_step - 1  # nothing saved at or after the bad step
    ranker = Ranker.load(tmp_path / "m")  # the last good checkpoint restores
    assert ranker.score("q", ["x"]).shape == (1,)


def test_non_finite_skip_mode_counts(small_data, tmp_path):
    result = _diverging_run(small_data, tmp_path / "s", "skip")
    assert result.step == 6 and result.skipped_steps >= 1
    leaves = [np.asarray(x) for x in flax.traverse_util.flatten_dict(result.params).values()]
    assert all(np.all(np.isfinite(x)) for x in leaves)


# ------------------------------------------------------------------------------------------
# Fuzzing (hypothesis). Example counts are in the settings of each property.
# ------------------------------------------------------------------------------------------

FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@FUZZ
@given(data=st.binary(max_size=400))
def test_fuzz_readers_random_bytes(tmp_path, data):  # 150 examples
    path = tmp_path / "fuzz.txt"
    path.write_bytes(data)
    for read in (
        formats.read_run,
        formats.read_qrels,
        formats.read_queries,
        lambda p: formats.Corpus(p, strict=True),
    ):
        try:
            read(str(path))
        except InputFormatError as err:
            assert str(path) in str(err)


line = st.lists(
    st.one_of(st.text(alphabet="qd0123 .-eE\tQ", min_size=0, max_size=6), st.just("Q0")),
    min_size=0,
    max_size=7,
).map(" ".join)


@FUZZ
@given(lines=st.lists(line, max_size=12))
def test_fuzz_readers_valid_looking_lines(tmp_path, lines):  # 150 examples
    path = tmp_path / "lines.txt"
    path.write_text("\n".join(lines))
    for read in (formats.read_run, formats.read_qrels, formats.read_queries):
        try:
            read(str(path))
        except InputFormatError as err:
            assert str(path) in str(err)
        skips = formats.Skips()
        try:
            read(str(path), strict=False, skips=skips)
        except InputFormatError as err:  # only whole-file problems remain errors
            assert err.line is None


run_strategy = st.dictionaries(
    st.sampled_from([f"d{i}" for i in range(12)]),
    st.floats(-5, 5, allow_nan=False).map(lambda x: round(x, 1)),
    min_size=1,
)
qrels_strategy = st.dictionaries(
    st.sampled_from([f"d{i}" for i in range(12)]), st.integers(0, 3), min_size=1
)


@settings(max_examples=200, deadline=None)
@given(run=run_strategy, judged=qrels_strategy)
def test_fuzz_metrics_match_trec_eval(run, judged):  # 200 examples
    pytrec_eval = pytest.importorskip("pytrec_eval")
    names = {"AP": "map", "nDCG@10": "ndcg_cut_10", "P@5": "P_5", "R@10": "recall_10"}
    expected = pytrec_eval.RelevanceEvaluator(
        {"q": judged}, {"map", "ndcg_cut.10", "P.5", "recall.10"}
    ).evaluate({"q": run})
    ours = measures.evaluate_run({"q": run}, {"q": judged}, list(names))
    for name, theirs in names.items():
        assert ours[name] == pytest.approx(expected["q"][theirs], abs=1e-6)


@settings(max_examples=150, deadline=None)
@given(judged=qrels_strategy, extra=st.integers(0, 6), seed=st.integers(0, 1000))
def test_fuzz_metric_invariants(judged, extra, seed):  # 150 examples
    relevant = sorted(judged, key=lambda d: -judged[d])
    perfect = {d: float(len(relevant) - i) for i, d in enumerate(relevant)}
    unjudged = [f"u{i}" for i in range(extra)]
    rng = np.random.default_rng(seed)
    for doc in unjudged:  # below every judged document, in random order
        perfect[doc] = -1.0 - rng.random()
    values = measures.evaluate_run({"q": perfect}, {"q": judged}, ["nDCG@10", "RR@10", "AP"])
    if any(g > 0 for g in judged.values()):
        assert values["RR@10"] == 1.0 and values["AP"] == pytest.approx(1.0)
        if sum(1 for g in judged.values() if g > 0) <= 10:
            assert values["nDCG@10"] == pytest.approx(1.0)
    shuffled = dict(perfect)
    scores = [shuffled[d] for d in unjudged]
    rng.shuffle(scores)
    shuffled.update(zip(unjudged, scores))
    again = measures.evaluate_run({"q": shuffled}, {"q": judged}, ["nDCG@10"])
    assert again["nDCG@10"] == pytest.approx(values["nDCG@10"])


def test_very_long_document_and_empty_query_text(tmp_path, spm_path):
    from rankt5_jax.data.vocab import EOS_ID, InputTemplate, Vocabulary

    vocab = Vocabulary(spm_path)
    template = InputTemplate(vocab, max_length=128)
    tokens = template.encode_pairs("fuma lemo", ["bako " * 20000])[0]  # a 100,000-char document
    assert len(tokens) == 128 and tokens[-1] == EOS_ID
    assert vocab.decode(tokens).startswith("Query: fuma lemo Document: bako")
    queries = tmp_path / "q.tsv"
    queries.write_text("q1\t\n")
    with pytest.raises(InputFormatError, match="empty text"):
        formats.read_queries(str(queries))


def test_corrupt_checkpoints_are_clear_errors(tmp_path):
    from rankt5_jax.checkpoints import formats as ckpt_formats
    from rankt5_jax.checkpoints import t5x_checkpoints
    from rankt5_jax.errors import CheckpointError

    t5x_dir = tmp_path / "checkpoint_1"
    t5x_dir.mkdir()
    (t5x_dir / "checkpoint").write_bytes(b"\x93\xff garbage")
    with pytest.raises(CheckpointError, match="checkpoint"):
        t5x_checkpoints.load_t5x_legacy(str(t5x_dir))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}xxxxxx")
    with pytest.raises(CheckpointError, match="corrupt"):
        ckpt_formats.read_safetensors(str(bad))
    hf_dir = tmp_path / "torch_only"
    hf_dir.mkdir()
    (hf_dir / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(CheckpointError, match="pickle"):
        ckpt_formats.read_hf_tensors(str(hf_dir))
    with pytest.raises(CheckpointError, match="allow_pickle"):
        ckpt_formats.read_torch_bin(str(hf_dir / "pytorch_model.bin"))


def test_torch_bin_with_explicit_flag_uses_weights_only(tmp_path):
    torch = pytest.importorskip("torch")
    from rankt5_jax.checkpoints import formats as ckpt_formats
    from rankt5_jax.errors import CheckpointError

    path = tmp_path / "w.bin"
    torch.save({"shared.weight": torch.ones(2, 3)}, path)
    tensors = ckpt_formats.read_torch_bin(str(path), allow_pickle=True)
    np.testing.assert_array_equal(tensors["shared.weight"], np.ones((2, 3), np.float32))

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"x": Evil()}, tmp_path / "evil.bin")
    with pytest.raises(CheckpointError, match="weights_only"):  # arbitrary objects refused
        ckpt_formats.read_torch_bin(str(tmp_path / "evil.bin"), allow_pickle=True)
