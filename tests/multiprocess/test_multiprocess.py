"""Multi-process JAX for real: 2 processes x 4 CPU devices joined on loopback, against this test
process (1 process x 8 devices).

One launch of `mp_worker.py` does all the multi-process work (each JAX start costs seconds):
  t1  3 training steps on a 2-process 8x1 mesh (1-D partitioning), checkpoint at step 3;
  t2  3 training steps on a 2-process 4x2 mesh with 2-D parameter partitioning;
  t3  `rankt5 train --multihost ...` (the CLI, gin) resuming, on the 4x2 2-D mesh, a checkpoint
      this process wrote at step 3, up to step 5;
  rr  `rankt5 rerank --multihost ...` over t1's checkpoint.
Meanwhile, here: the one-process reference (steps 1-5, checkpoints at 3 and 5, the same 2 data
shards), then t1's checkpoint re-ranked and resumed (steps 4-5) by this one process. Every
process records the batch rows it fed. SGD throughout: adaptive optimizers turn reassociation
noise into updates (docs/design.md).
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from rankt5_jax.data import formats

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

import mp_worker  # noqa: E402

pytestmark = pytest.mark.multiprocess
LAUNCH_TIMEOUT_S = 300  # a hard limit: every worker's process group is killed past it


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Job:
    """`mp_worker.py` as `num_processes` processes of one JAX job on loopback. Each process is a
    session of its own; `close()` kills what still runs with its children. The test fails
    unless every process exits 0 by itself within `LAUNCH_TIMEOUT_S`."""

    def __init__(self, plan: dict, num_processes: int, devices: int, workdir):
        plan = dict(plan, coordinator=f"127.0.0.1:{free_port()}", num_processes=num_processes)
        plan_path = os.path.join(workdir, "plan.json")
        with open(plan_path, "w") as handle:
            json.dump(plan, handle)
        env = dict(
            os.environ,
            XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
            JAX_PLATFORMS="cpu",
            TF_CPP_MIN_LOG_LEVEL="3",
            # t3 runs t2's programs: compiled once (JAX's persistent cache, written by process 0).
            JAX_COMPILATION_CACHE_DIR=os.path.join(workdir, "jax_cache"),
            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5",
        )
        self.logs = [os.path.join(workdir, f"worker.p{i}.log") for i in range(num_processes)]
        self.deadline = time.time() + LAUNCH_TIMEOUT_S
        self.procs = []
        for index, log in enumerate(self.logs):
            with open(log, "w") as handle:
                self.procs.append(
                    subprocess.Popen(
                        [sys.executable, os.path.join(HERE, "mp_worker.py"), plan_path, str(index)],
                        stdout=handle,
                        stderr=subprocess.STDOUT,
                        env=env,
                        cwd=REPO,
                        start_new_session=True,
                    )
                )

    def check(self) -> None:
        """Fails the test (killing the rest) once a process failed or the time is up."""
        codes = [proc.poll() for proc in self.procs]
        if any(code not in (None, 0) for code in codes) or time.time() > self.deadline:
            self.close()
            codes = [proc.returncode for proc in self.procs]
            tails = "\n".join(
                f"--- {log}\n" + "".join(open(log).readlines()[-25:]) for log in self.logs
            )
            pytest.fail(f"workers exited {codes} (negative: killed at the time limit)\n{tails}")

    def wait_for(self, path) -> None:
        """Waits until the workers wrote `path` (or all exited)."""
        while not os.path.exists(path) and any(proc.poll() is None for proc in self.procs):
            self.check()
            time.sleep(0.2)
        self.check()

    def wait(self) -> None:
        while any(proc.poll() is None for proc in self.procs):
            self.check()
            time.sleep(0.2)
        self.check()

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _fed(out, name, processes=2):
    return [np.load(os.path.join(out, f"{name}.fed.p{i}.npy")) for i in range(processes)]


@pytest.fixture(scope="module")
def job(tmp_path_factory, smoke_lists_dir):
    from rankt5_jax.inference import rerank

    root = tmp_path_factory.mktemp("multiprocess")
    data_dir = smoke_lists_dir  # the session's smoke lists: mp_worker.SMOKE's settings
    data = mp_worker.smoke_data(data_dir)
    formats.Corpus(data["dev"]["corpus"]).close()  # its index, before the workers read it
    out = root / "out"
    out.mkdir()
    dev = data["dev"]
    rerank_argv = ["rerank", "--checkpoint", str(root / "two_1d"), "--output", str(out / "two.run")]
    rerank_argv += ["--max_length", "32", "--batch_size", "16", "--queries", dev["queries"]]
    rerank_argv += ["--corpus", dev["corpus"], "--run", dev["run"]]
    one_at_3 = root / "one_at_3"
    gin = ["train", "--gin_file=experiments/smoke_cpu.gin", f"--gin.MODEL_DIR='{one_at_3}'"]
    gin += [f"--gin.DATA_DIR='{root / 'data'}'", "--gin.TRAIN_STEPS=5", "--gin.CHECKPOINT_PERIOD=3"]
    gin += [f"--gin.BATCH_SIZE={mp_worker.BATCH_SIZE}"]
    gin += [f"--gin.TASK_FEATURE_LENGTHS={mp_worker.LENGTHS}", "--gin.LEARNING_RATE=0.05"]
    gin += ["--gin.trainer.make_optimizer.name='sgd'", "--gin.EVAL_TASK=None"]
    gin += ["--gin.EVAL_PERIOD=None", "--gin.EVAL_QRELS=None", "--gin.DATA_AXIS=4"]
    gin += ["--gin.MODEL_AXIS=2", "--gin.PARAMETER_PARTITIONING_DIMS=2"]
    gin += [f"--gin.smoke.smoke_data.{key}={value}" for key, value in mp_worker.SMOKE.items()]
    t1 = dict(name="t1", kind="train", model_dir=str(root / "two_1d"), steps=5, stop_after=3)
    t2 = dict(name="t2", kind="train", model_dir=str(root / "two_2d"), steps=3)
    plan = {
        "data_dir": data_dir,
        "out": str(out),
        "tasks": [
            dict(t1, mesh=[-1, 1, 1]),
            dict(t2, mesh=[4, 2, 2]),
            dict(name="ready", kind="wait", path=str(root / "one_at_3.ready")),
            dict(name="t3", kind="cli", argv=gin),
            dict(name="rr", kind="cli", argv=rerank_argv),
        ],
    }
    # The one-process work runs beside the workers (each side idles while the other computes).
    started = time.time()
    job = Job(plan, 2, 4, str(root))
    try:
        # The reference: steps 1-5 on 1 x 8 devices from the same 2 data shards; its step-3
        # checkpoint (step 5 removed) is t3's to resume.
        with mp_worker.recording() as one_fed:
            one = mp_worker.train_tiny(data, root / "one", 5, (-1, 1, 1), data_shards=2)
        shutil.copytree(root / "one", one_at_3)
        shutil.rmtree(one_at_3 / "checkpoints" / "5")
        shutil.rmtree(one_at_3 / "data_state" / "5")
        (root / "one_at_3.ready").touch()
        # t1's checkpoint (step 3, by 2 processes): re-ranked here, and resumed here (a copy).
        job.wait_for(out / "t1.json")
        one_run = rerank.rerank_files(
            str(root / "two_1d"),
            dev["queries"],
            dev["corpus"],
            dev["run"],
            str(out / "one.run"),
            max_length=32,
            batch_size=16,
            progress=False,
        )
        shutil.copytree(root / "two_1d", root / "two_1d_resumed")
        with mp_worker.recording() as resumed_fed:
            resumed = mp_worker.train_tiny(data, root / "two_1d_resumed", 5, (-1, 1, 1))
        job.wait()
    finally:
        job.close()
    print(f"multiprocess fixture: {time.time() - started:.1f}s")
    from rankt5_jax.checkpoints import model_dir as model_dir_lib

    one_p3 = model_dir_lib.load_model_dir(str(root / "one"), step=3)[1]
    return dict(
        root=root,
        out=out,
        data=data,
        one=one,
        one_p3=mp_worker.flat_params(one_p3),
        one_fed=np.stack(one_fed),
        one_run=one_run,
        resumed=resumed,
        resumed_fed=np.stack(resumed_fed),
    )


def _assert_close(a: dict, b: dict, atol=1e-5):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(a[key], b[key], atol=atol, rtol=0, err_msg=key)


def test_two_processes_train_as_one_process_1d_and_2d(job):
    out = job["out"]
    # The 2 processes really were 2 processes of 4 devices each, in one job of 8.
    for i in range(2):
        assert open(out / f"done.p{i}").read().strip() == f"{i} of 2: 8"
    one_p3 = job["one_p3"]
    one_p5 = mp_worker.flat_params(job["one"].params)
    moved = max(float(np.abs(one_p3[k] - one_p5[k]).max()) for k in one_p3)
    assert moved > 1e-3  # training moves the params: equality below is not trivial
    two_1d = dict(np.load(out / "t1.npz"))
    two_2d = dict(np.load(out / "t2.npz"))
    _assert_close(two_1d, one_p3)
    _assert_close(two_2d, one_p3)
    losses = {int(k): v for k, v in json.load(open(out / "t1.json"))["losses"].items()}
    one_losses = {int(h["step"]): h["loss"] for h in job["one"].history}
    assert sorted(losses) == [1, 2, 3]
    np.testing.assert_allclose([losses[s] for s in (1, 2, 3)], [one_losses[s] for s in (1, 2, 3)],
                               rtol=1e-5)  # fmt: skip


def _query_keys(tokens: np.ndarray) -> set[bytes]:
    """A list's query: the token prefix its candidates share ("Query: q Document: ...")."""
    keys = set()
    for lst in tokens.reshape((-1,) + tokens.shape[-2:]):
        rows = lst[lst.any(axis=1)]
        same = np.all(rows == rows[0], axis=0)
        length = int(np.argmin(same)) if not same.all() else rows.shape[1]
        keys.add(rows[0, :length].tobytes())
    return keys


def test_processes_read_disjoint_shards_that_make_the_one_process_batches(job):
    out, one_fed = job["out"], job["one_fed"]  # [5 steps, 8 lists, L, T]
    for name, steps in (("t1", slice(0, 3)), ("t3", slice(3, 5))):
        p0, p1 = _fed(out, name)
        # Process 0 fed rows 0-3 of each global batch, process 1 rows 4-7: together exactly the
        # one-process batches of the same steps, in the same order (t3: after a resume).
        assert p0.shape == p1.shape == (steps.stop - steps.start, 4) + one_fed.shape[2:]
        np.testing.assert_array_equal(np.concatenate([p0, p1], axis=1), one_fed[steps])
    p0, p1 = _fed(out, "t1")
    keys0, keys1 = _query_keys(p0), _query_keys(p1)
    assert len(keys0) > 4 and len(keys1) > 4
    assert not keys0 & keys1  # each process reads its own shard of the queries


def test_checkpoints_move_between_process_counts(job):
    from rankt5_jax.checkpoints import model_dir as model_dir_lib

    root = job["root"]
    one_p5 = mp_worker.flat_params(job["one"].params)
    # Written by 2 processes (1-D, 8x1), resumed here by 1 process: steps 4-5 read the same
    # data and give the same params as the uninterrupted one-process run.
    assert job["resumed"].step == 5
    np.testing.assert_array_equal(job["resumed_fed"], job["one_fed"][3:])
    _assert_close(mp_worker.flat_params(job["resumed"].params), one_p5)
    # Written by 1 process, resumed by 2 (`rankt5 train --multihost`, on a 2-D 4x2 mesh).
    assert model_dir_lib.checkpoint_manager(str(root / "one_at_3")).latest_step() == 5
    _, two_p5 = model_dir_lib.load_model_dir(str(root / "one_at_3"))
    _assert_close(mp_worker.flat_params(two_p5), one_p5)
    # The 2-process checkpoint kept one data position per data shard.
    assert model_dir_lib.recorded_data_shards(str(root / "two_1d"), 3) == 2
    assert model_dir_lib.checkpoint_manager(str(root / "two_1d")).latest_step() == 3


def test_rerank_over_two_processes_writes_one_complete_run(job):
    out, data = job["out"], job["data"]
    lines = open(out / "two.run").read().splitlines()
    two = formats.read_run(str(out / "two.run"))
    expected = formats.read_run(data["dev"]["run"])
    assert two.keys() == expected.keys() and len(two) == 8
    assert sum(len(docs) for docs in two.values()) == len(lines)  # no line twice
    qids_in_order = [line.split()[0] for line in lines]
    blocks = [q for i, q in enumerate(qids_in_order) if i == 0 or q != qids_in_order[i - 1]]
    assert len(blocks) == len(two)  # each query written once, in one block
    one = job["one_run"]
    for qid, docs in expected.items():
        assert two[qid].keys() == docs.keys() == one[qid].keys()
        np.testing.assert_allclose(
            [two[qid][d] for d in docs], [one[qid][d] for d in docs], atol=1e-5, rtol=0
        )
    assert open(out / "one.run").read().split("\n")[0].split()[:3] == lines[0].split()[:3]
