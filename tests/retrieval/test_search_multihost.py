"""`rankt5 search --multihost`: two JAX processes joined on loopback, each searching its part of
the queries, write one run equal to one process's."""

import os
import socket
import subprocess
import sys

import pytest

from rankt5_jax import cli
from rankt5_jax.data import formats
from rankt5_jax.retrieval import xtr_retriever

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_query_parts_cover_every_query_once():
    for count in (0, 1, 5, 40):
        for processes in (1, 2, 3):
            parts = [xtr_retriever.query_part(count, processes, i) for i in range(processes)]
            assert parts[0][0] == 0 and parts[-1][1] == count
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))


@pytest.mark.multiprocess
def test_two_processes_write_the_run_of_one(trained_ur2n, tmp_path):
    dev, model = trained_ur2n["dev"], trained_ur2n["model"]
    index_dir = str(tmp_path / "index")
    assert cli.main([
        "index", "--checkpoint", model, "--corpus", dev["corpus"], "--index_dir", index_dir,
        "--max_length", "64", "--chunk_passages", "512", "--train_passages", "400",
        "--kmeans_iterations", "6",
    ]) == 0  # fmt: skip
    search = ["search", "--index_dir", index_dir, "--queries", dev["queries"], "--top_k", "20"]
    search += ["--token_k", "100"]
    single = str(tmp_path / "one.run")
    assert cli.main([*search, "--output", single]) == 0

    merged = str(tmp_path / "two.run")
    coordinator = f"127.0.0.1:{_free_port()}"
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=1",
        JAX_PLATFORMS="cpu",
    )
    logs = [open(tmp_path / f"p{i}.log", "w+") for i in range(2)]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rankt5_jax",
                *search,
                "--output",
                merged,
                "--multihost",
                "--coordinator_address",
                coordinator,
                "--num_processes",
                "2",
                "--process_id",
                str(i),
            ],
            stdout=logs[i],
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=env,
            start_new_session=True,
        )  # fmt: skip
        for i in range(2)
    ]
    try:
        codes = [proc.wait(timeout=300) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    outputs = []
    for log in logs:
        log.seek(0)
        outputs.append(log.read()[-2000:])
        log.close()
    assert codes == [0, 0], outputs
    one, two = formats.read_run(single), formats.read_run(merged)
    assert list(two) == list(one)
    for qid in one:
        assert list(two[qid]) == list(one[qid])
        assert two[qid] == pytest.approx(one[qid], abs=1e-6)
    # Each process searched half of the 40 queries (process 0 alone reports and writes).
    assert len(one) == 40 and "searched 20 queries" in outputs[0], outputs[0]
