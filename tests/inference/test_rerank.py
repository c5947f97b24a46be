"""Re-ranking: `rerank_run` on a loaded Ranker (journal, resume, refused settings, --keep_rest),
`rerank_files` checks, and `rankt5 rerank` killed (SIGKILL at a random moment, SIGTERM) and rerun
giving a run byte-identical to an uninterrupted one (pairwise and FiT5)."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from rankt5_jax import Ranker, cli
from rankt5_jax.checkpoints.convert import write_params_model_dir
from rankt5_jax.data import formats, synthetic
from rankt5_jax.errors import ConfigError
from rankt5_jax.evaluation import measures
from rankt5_jax.inference import journal, rerank, run_scoring
from rankt5_jax.modeling import registry
from rankt5_jax.modeling.network import get_config
from rankt5_jax.retrieval import bm25

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# One CPU device in the subprocesses (the 8 fake devices of conftest are for mesh tests).
ENV = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
ENV.pop(journal.FAULT_ENV, None)


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_model_dir):
    """A tiny pairwise (encdec) and a tiny FiT5 model directory, and 60 queries x 12 BM25
    candidates (the collection the FiT5 vocabulary was trained on)."""
    out = tmp_path_factory.mktemp("rerank")
    collection = synthetic.make_collection(num_queries=60, seed=2)
    run = bm25.bm25_run(collection["corpus"], collection["queries"], top_k=12)
    paths = synthetic.write_collection(str(out / "data"), collection, run)
    for variant in ("encdec", "fit5"):
        paths[variant] = tiny_model_dir(variant, str(out / variant))
    formats.Corpus(paths["corpus"]).close()  # its index, before several processes read it
    return paths


# -- in process: rerank_run on a loaded Ranker -----------------------------------------------
class Killed(Exception):
    pass


@pytest.fixture(scope="module")
def loaded(files):
    ranker = Ranker.load(files["encdec"], max_length=48, batch_size=16)
    queries = formats.read_queries(files["queries"])
    corpus = formats.Corpus(files["corpus"])
    run = formats.read_run(files["run"])
    some = dict(list(run.items())[:12])
    yield ranker, some, corpus, queries
    corpus.close()


def test_rerank_run_resumes_from_its_journal_and_refuses_other_settings(loaded, tmp_path):
    ranker, run, corpus, queries = loaded
    common = dict(top_k=10, chunk_pairs=20, progress=False)
    reference = rerank.rerank_run(ranker, run, corpus, queries, **common)
    assert list(reference) == list(run)
    assert all(len(docs) == 10 for docs in reference.values())

    calls = []
    fail_at = [3]
    score = ranker.score_token_lists

    def failing(lists):  # the third chunk fails, as a killed process would
        calls.append(len(lists))
        if len(calls) == fail_at[0]:
            raise Killed
        return score(lists)

    folder = str(tmp_path / "journal")
    ranker.score_token_lists = failing
    try:
        with pytest.raises(Killed):
            rerank.rerank_run(ranker, run, corpus, queries, journal=folder, **common)
    finally:
        del ranker.score_token_lists
    with open(os.path.join(folder, "progress.p0.json")) as handle:
        assert json.load(handle)["chunks"] == 2
    # Another setting is refused, naming it.
    with pytest.raises(ConfigError, match=r"top_k: 10 -> 8"):
        rerank.rerank_run(ranker, run, corpus, queries, journal=folder, **{**common, "top_k": 8})
    # The same call continues after the two recorded chunks: same scores, bit for bit.
    calls.clear()
    fail_at[0] = 0
    ranker.score_token_lists = failing
    try:
        resumed = rerank.rerank_run(ranker, run, corpus, queries, journal=folder, **common)
    finally:
        del ranker.score_token_lists
    assert resumed == reference
    sizes = [min(10, len(docs)) for docs in run.values()]
    assert len(calls) == len(run_scoring._chunk_bounds(sizes, 20)) - 2
    assert not os.path.exists(folder)  # the journal goes once the run is complete


def test_keep_rest_appends_the_first_stage_below_top_k(loaded):
    ranker, run, corpus, queries = loaded
    top = rerank.rerank_run(ranker, run, corpus, queries, top_k=4, progress=False)
    full = rerank.rerank_run(ranker, run, corpus, queries, top_k=4, keep_rest=True, progress=False)
    for qid, docs in run.items():
        assert set(full[qid]) == set(docs)
        ranked = measures.rank_documents(full[qid])
        assert ranked[:4] == measures.rank_documents(top[qid])
        assert {d: full[qid][d] for d in ranked[:4]} == top[qid]
        first_stage = measures.rank_documents(docs)
        assert ranked[4:] == [d for d in first_stage if d not in top[qid]]
        assert max(full[qid][d] for d in ranked[4:]) < min(top[qid].values())


def test_output_equal_to_an_input_and_top_k_0_are_refused_before_any_work(files, capsys):
    # The checkpoint does not exist: the refusal comes before anything is loaded.
    for flag in ("run", "queries", "corpus", "qrels"):
        argv = ["rerank", "--checkpoint", "no_such_model", "--queries", files["queries"]]
        argv += ["--corpus", files["corpus"], "--run", files["run"], "--qrels", files["qrels"]]
        argv += ["--output", files[flag]]
        before = open(files[flag], "rb").read()
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and f"(--{flag})" in err and "rankt5: error:" in err
        assert open(files[flag], "rb").read() == before
    argv = ["rerank", "--checkpoint", "no_such_model", "--queries", files["queries"]]
    argv += ["--corpus", files["corpus"], "--run", files["run"], "--output", "x.run"]
    with pytest.raises(SystemExit) as done:  # refused by the flag's type, as argparse exits
        cli.main([*argv, "--top_k", "0"])
    assert done.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--top_k" in err and "rankt5: error:" in err


def test_tag_and_input_metrics_over_the_whole_input_run(files, tmp_path, capsys):
    output = str(tmp_path / "out.run")
    reranked = rerank.rerank_files(
        files["encdec"],
        files["queries"],
        files["corpus"],
        files["run"],
        output,
        files["qrels"],
        top_k=3,
        max_length=48,
        batch_size=12,
        json_metrics=True,
        progress=False,
    )
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    qrels = formats.read_qrels(files["qrels"])
    whole = formats.read_run(files["run"])
    # "input": the whole input run (12 deep), not its top 3
    assert printed["input"] == pytest.approx(measures.evaluate_run(whole, qrels), abs=1e-12)
    assert printed["reranked"] == pytest.approx(measures.evaluate_run(reranked, qrels), abs=1e-12)
    assert {line.split()[5] for line in open(output)} == {"encdec"}  # the variant's name
    assert not os.path.exists(output + ".journal")
    # --missing zero: a judged query the run lacks counts 0 in both means, as stderr says.
    more_qrels = str(tmp_path / "qrels.txt")
    with open(more_qrels, "w") as handle:
        handle.write(open(files["qrels"]).read() + "not_ranked 0 d1 1\n")
    qrels = formats.read_qrels(more_qrels)
    rerank.rerank_files(
        files["encdec"], files["queries"], files["corpus"], files["run"], output, more_qrels,
        top_k=3, max_length=48, batch_size=12, tag="my_run", progress=False, json_metrics=True,
        missing="zero",
    )  # fmt: skip
    assert {line.split()[5] for line in open(output)} == {"my_run"}
    captured = capsys.readouterr()
    printed = json.loads(captured.out.strip().splitlines()[-1])
    zero = measures.evaluate_run(whole, qrels, missing="zero")
    assert printed["input"] == pytest.approx(zero, abs=1e-12)
    assert printed["reranked"] == pytest.approx(
        measures.evaluate_run(reranked, qrels, missing="zero"), abs=1e-12
    )
    assert "mean over 61 queries (--missing zero)" in captured.err
    assert "lacks 1 of the 61 judged queries (counted 0)" in captured.err


def test_rerank_from_a_token_index_resumes_from_its_journal(
    files, tmp_path, fit5_spm_path, fit5_vocab
):
    """`index_dir` (UR2N: one checkpoint retrieves and re-ranks): a call that fails after two
    journaled chunks, then the same call, writes the run an uninterrupted call writes."""
    config = get_config("tiny", vocab_size=512, xtr_dim=16)
    model = registry.build_model(registry.make_spec("encdec", config, fit5_vocab))
    shapes = {"encoder_input_tokens": (1, 1, 8)}
    params = model.get_initial_variables(jax.random.PRNGKey(1), shapes)["params"]
    model_dir = str(tmp_path / "ur2n")
    params = jax.tree_util.tree_map(np.asarray, params)
    write_params_model_dir(model_dir, model.spec(), params, fit5_spm_path)
    index_dir = str(tmp_path / "index")
    argv = ["index", "--checkpoint", model_dir, "--corpus", files["corpus"], "--index_dir"]
    argv += [index_dir, "--max_length", "48", "--train_passages", "300"]
    assert cli.main([*argv, "--kmeans_iterations", "4"]) == 0
    common = dict(index_dir=index_dir, top_k=10, chunk_pairs=30, max_length=48, batch_size=12)
    common.update(progress=False, exact_search=True)
    args = (model_dir, files["queries"], files["corpus"], None)
    reference = str(tmp_path / "reference.run")
    rerank.rerank_files(*args, reference, **common)

    output = str(tmp_path / "resumed.run")
    score = Ranker.score_token_lists
    calls = []
    armed = [True]

    def failing(self, lists):
        calls.append(len(lists))
        if armed[0] and len(calls) == 3:
            raise Killed
        return score(self, lists)

    Ranker.score_token_lists = failing
    try:
        with pytest.raises(Killed):
            rerank.rerank_files(*args, output, **common)
        with open(os.path.join(output + ".journal", "progress.p0.json")) as handle:
            assert json.load(handle)["chunks"] == 2
        calls.clear()
        armed[0] = False
        rerank.rerank_files(*args, output, **common)
    finally:
        Ranker.score_token_lists = score
    with open(output, "rb") as a, open(reference, "rb") as b:
        assert a.read() == b.read()
    assert not os.path.exists(output + ".journal")
    sizes = [len(docs) for docs in formats.read_run(reference).values()]
    assert len(calls) == len(run_scoring._chunk_bounds(sizes, 30)) - 2  # resumed, not redone


# -- subprocesses: `rankt5 rerank` killed and rerun -------------------------------------------
def _command(files, variant, output, *extra):
    command = [sys.executable, "-m", "rankt5_jax", "rerank", "--checkpoint", files[variant]]
    command += ["--queries", files["queries"], "--corpus", files["corpus"], "--run", files["run"]]
    command += ["--output", output, "--top_k", "10", "--chunk_pairs", "10"]
    return command + ["--max_length", "48", "--batch_size", "16", *extra]


def _start(command):
    return subprocess.Popen(
        command, env=ENV, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _interrupt_mid_run(command, output, sig, delay):
    """Starts `command`, waits until its journal records a chunk, waits `delay` seconds more,
    sends `sig`; -> (return code, stderr, chunks recorded)."""
    proc = _start(command)
    progress = os.path.join(output + ".journal", "progress.p0.json")
    deadline = time.time() + 300
    while not os.path.isfile(progress):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        if time.time() > deadline:
            proc.kill()
            raise AssertionError("no chunk recorded in 300 s")
        time.sleep(0.01)
    time.sleep(delay)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    with open(progress) as handle:
        return proc.returncode, err, json.load(handle)["chunks"]


def _finish(proc):
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return out


@pytest.mark.parametrize("variant", ["encdec", "fit5"])
def test_killed_or_stopped_then_rerun_gives_the_same_bytes(files, tmp_path, variant):
    reference = str(tmp_path / "reference.run")
    uninterrupted = _start(_command(files, variant, reference))  # beside the killed one
    # SIGKILL at a random moment once the journal records a chunk.
    output = str(tmp_path / "killed.run")
    command = _command(files, variant, output)
    delay = random.Random().uniform(0.0, 0.1)
    code, err, chunks = _interrupt_mid_run(command, output, signal.SIGKILL, delay)
    assert code == -signal.SIGKILL, f"not killed mid-run (delay {delay:.3f}s): {err[-2000:]}"
    assert chunks >= 1 and not os.path.exists(output)
    _finish(_start(command))
    _finish(uninterrupted)
    with open(output, "rb") as a, open(reference, "rb") as b:
        assert a.read() == b.read()
    assert not os.path.exists(output + ".journal")
    if variant == "fit5":
        return
    # SIGTERM: the current chunk is finished and recorded, then the command stops (exit 143).
    output = str(tmp_path / "stopped.run")
    command = _command(files, variant, output)
    code, err, chunks = _interrupt_mid_run(command, output, signal.SIGTERM, 0.0)
    assert code == journal.STOPPED_EXIT, err[-2000:]
    assert f"stopped by SIGTERM after chunk {chunks} of " in err
    assert not os.path.exists(output)
    # The same command with another setting is refused, naming it; the journal stays.
    refused = _start(command + ["--top_k", "8"])
    _, err = refused.communicate(timeout=300)
    assert refused.returncode == 2 and "top_k: 10 -> 8" in err, err[-2000:]
    _finish(_start(command))
    with open(output, "rb") as a, open(reference, "rb") as b:
        assert a.read() == b.read()
    assert not os.path.exists(output + ".journal")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _two_processes(files, output):
    address = f"127.0.0.1:{_free_port()}"
    flags = ["--multihost", "--coordinator_address", address, "--num_processes", "2"]
    command = _command(files, "encdec", output, *flags)
    return [_start(command + ["--process_id", str(index)]) for index in range(2)]


def test_multihost_killed_then_rerun_gives_the_same_bytes(files, tmp_path):
    """2 processes (one CPU device each, loopback jax.distributed): both SIGKILLed at a random
    moment once each journals a chunk; the same two commands again write the run of an
    uninterrupted pair byte for byte."""
    reference = str(tmp_path / "reference.run")
    uninterrupted = _two_processes(files, reference)
    output = str(tmp_path / "killed.run")
    victims = _two_processes(files, output)
    progress = [os.path.join(output + ".journal", f"progress.p{i}.json") for i in range(2)]
    deadline = time.time() + 300
    while not all(os.path.isfile(path) for path in progress):
        for proc in victims:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline, "no chunk recorded in 300 s"
        time.sleep(0.01)
    time.sleep(random.Random().uniform(0.0, 0.1))
    for proc in victims:
        proc.send_signal(signal.SIGKILL)
    for proc in victims:
        proc.communicate(timeout=300)
        assert proc.returncode == -signal.SIGKILL
    assert not os.path.exists(output)
    for proc in _two_processes(files, output):
        _finish(proc)
    for proc in uninterrupted:
        _finish(proc)
    with open(output, "rb") as a, open(reference, "rb") as b:
        assert a.read() == b.read()
    assert not os.path.exists(output + ".journal")
