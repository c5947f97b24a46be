"""run_tpu.sh's dry runs: the commands it would start on a TPU slice and on GPU hosts, read
back with the shell's own quoting and with `rankt5 train`'s flag parser."""

import os
import shlex
import subprocess

import pytest

from rankt5_jax.training import gin_flags

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN_FLAGS = ["--gin_file=experiments/smoke_cpu.gin", "--gin.MODEL_DIR='/shared/run 1'"]


def dry_run(*options: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", os.path.join(REPO, "run_tpu.sh"), *options, "--dry_run", "--", *TRAIN_FLAGS],
        capture_output=True,
        text=True,
        timeout=10,
        env=dict(os.environ, PYTHON="python3"),
    )


def commands(*options: str) -> list[list[str]]:
    done = dry_run(*options)
    assert done.returncode == 0, done.stderr
    return [shlex.split(line) for line in done.stdout.splitlines()]


def test_tpu_slice_every_worker_runs_multihost_with_detected_processes():
    (ssh,) = commands("--tpu", "my-v4-32", "--zone", "us-central2-b", "--project", "p")
    assert ssh[:8] == [
        "gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-v4-32", "--zone=us-central2-b",
        "--project=p",
    ]  # fmt: skip
    assert "--worker=all" in ssh
    remote = shlex.split(next(a for a in ssh if a.startswith("--command=")).split("=", 1)[1])
    assert remote[:3] == ["cd", "~/rankt5_jax", "&&"]
    argv = remote[3:]
    assert argv[:4] == ["python3", "-m", "rankt5_jax", "train"]
    # The remote shell sees the flags as given; JAX detects the slice's processes itself.
    flags = gin_flags.parse_gin_flags(argv[4:])
    assert flags.multihost and flags.files == ["experiments/smoke_cpu.gin"]
    assert flags.bindings == [("MODEL_DIR", "'/shared/run 1'")]
    assert (flags.coordinator_address, flags.num_processes, flags.process_id) == (None,) * 3


def test_tpu_setup_copies_and_installs_first():
    lines = commands("--tpu", "t", "--zone", "z", "--setup")
    assert [line[:5] for line in lines] == [["gcloud", "compute", "tpus", "tpu-vm", "scp"]] + [
        ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]
    ] * 2
    assert "pip install -e '.[tpu]'" in lines[1][-1]


def _process(argv: list[str]) -> tuple[str, gin_flags.Flags]:
    env, visible, python, *rest = argv
    assert env == "env" and python == "python3" and rest[:3] == ["-m", "rankt5_jax", "train"]
    return visible, gin_flags.parse_gin_flags(rest[3:])


def test_multi_gpu_host_one_process_per_gpu():
    lines = commands("--gpu", "--num_gpus", "4", "--port", "12345")
    assert len(lines) == 4
    for gpu, argv in enumerate(lines):
        visible, flags = _process(argv)
        assert visible == f"CUDA_VISIBLE_DEVICES={gpu}"
        assert flags.multihost and flags.process_id == gpu and flags.num_processes == 4
        assert flags.coordinator_address == "127.0.0.1:12345"
        assert flags.bindings == [("MODEL_DIR", "'/shared/run 1'")]


def test_gpu_cluster_node_ranks_number_the_processes():
    lines = commands(
        "--gpu", "--num_gpus", "2", "--num_nodes", "3", "--node_rank", "1",
        "--coordinator", "10.0.0.1:8476",
    )  # fmt: skip
    parsed = [_process(argv) for argv in lines]
    assert [visible for visible, _ in parsed] == [
        "CUDA_VISIBLE_DEVICES=0",
        "CUDA_VISIBLE_DEVICES=1",
    ]
    assert [flags.process_id for _, flags in parsed] == [2, 3]
    assert {(f.coordinator_address, f.num_processes) for _, f in parsed} == {("10.0.0.1:8476", 6)}


def test_gpu_without_num_gpus_is_one_process_for_all_gpus():
    (argv,) = commands("--gpu")
    assert argv[:4] == ["python3", "-m", "rankt5_jax", "train"] and "--multihost" not in argv


@pytest.mark.parametrize(
    "options, message",
    [
        (["--gpu", "--num_gpus", "0"], "--num_gpus must be at least 1"),
        (["--gpu", "--num_gpus", "two"], "--num_gpus needs a whole number"),
        (["--gpu", "--num_gpus", "2", "--num_nodes", "2"], "needs --coordinator HOST:PORT"),
        (
            [
                "--gpu",
                "--num_gpus",
                "2",
                "--num_nodes",
                "2",
                "--node_rank",
                "2",
                "--coordinator",
                "h:1",
            ],
            "--node_rank must be in 0..1",
        ),  # fmt: skip
        (["--gpu", "--num_nodes", "2"], "need --num_gpus"),
        (["--tpu", "t", "--zone", "z", "--num_gpus", "2"], "GPU options"),
    ],
)
def test_bad_launch_options_fail_in_one_line(options, message):
    done = dry_run(*options)
    assert done.returncode == 2 and done.stdout == ""
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1
