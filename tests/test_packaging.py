"""The wheel: the gin configs, seqio tasks and pretrained weights ship inside it (as
`rankt5_jax.gin`, `rankt5_jax.tasks` and `rankt5_jax/pretrained/`), and `rankt5 train --gin_file=experiments/smoke_cpu.gin` runs from a wheel
installed outside the checkout.

The wheel is built from a copy of the checkout's source files (tracked and not ignored), so the
build neither writes `build/` or `*.egg-info` into the checkout nor picks up a stale `build/`."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
IGNORED = (".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "*.pyc")


def _copy_sources(dest: Path) -> None:
    """Copies the files git would commit (tracked or untracked-but-not-ignored) to `dest`."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: copy all but these
        shutil.copytree(REPO, dest, ignore=shutil.ignore_patterns(*IGNORED))
        return
    for name in filter(None, listed.decode().split("\0")):
        source = REPO / name
        if source.is_file():  # a tracked file deleted in the working tree is not copied
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    _copy_sources(tmp / "src")
    out = tmp / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
        + ["--no-index", "-w", str(out), str(tmp / "src")],
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    (built,) = out.glob("rankt5_jax-*.whl")
    return built


def _repo_gin_files() -> set[str]:
    found = set()
    for root, _, files in os.walk(REPO / "gin"):
        for name in files:
            if name.endswith(".gin"):
                found.add((Path(root) / name).relative_to(REPO / "gin").as_posix())
    return found


def test_wheel_ships_every_gin_config_and_the_tasks_inside_the_package(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "rankt5_jax/gin/experiments/smoke_cpu.gin" in names
    assert "rankt5_jax/gin/models/tiny.gin" in names
    repo_gin = _repo_gin_files()
    assert len(repo_gin) > 2
    shipped_gin = {n[len("rankt5_jax/gin/") :] for n in names if n.startswith("rankt5_jax/gin/")}
    assert repo_gin - shipped_gin == set(), "gin files missing from the wheel"
    assert "rankt5_jax/tasks/__init__.py" in names
    # the demo's pretrained weights, every file of the model directory
    shipped = REPO / "rankt5_jax" / "pretrained" / "tiny_pseudo_query"
    weights = {p.relative_to(REPO).as_posix() for p in shipped.rglob("*") if p.is_file()}
    assert "rankt5_jax/pretrained/tiny_pseudo_query/rankt5.json" in weights
    assert weights - names == set(), "pretrained weights missing from the wheel"
    assert not [n for n in names if n.split("/")[0] == "tasks"], "top-level tasks/ in the wheel"
    assert not [n for n in names if "tests" in n.split("/")], "tests/ in the wheel"


_WHERE = """
import json, sys
import rankt5_jax, rankt5_jax.tasks
from rankt5_jax.training import gin_flags
print(json.dumps({
    "package": rankt5_jax.__file__,
    "tasks": rankt5_jax.tasks.__file__,
    "config_dir": gin_flags.config_dir(),
    "modules": sorted(
        m.__file__ for n, m in sys.modules.items()
        if (n == "rankt5_jax" or n.startswith("rankt5_jax.")) and getattr(m, "__file__", None)
    ),
}))
"""


def test_smoke_training_runs_from_the_installed_wheel(wheel, tmp_path):
    site = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index"]
        + ["--target", str(site), str(wheel)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stdout + install.stderr

    env = dict(os.environ, PYTHONPATH=str(site), JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)  # one CPU device: faster than the 8 fake ones of conftest.py

    # The installed copy shadows the editable install of the checkout.
    where = subprocess.run(
        [sys.executable, "-c", _WHERE],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert where.returncode == 0, where.stderr
    paths = json.loads(where.stdout.strip().splitlines()[-1])
    assert Path(paths["package"]).is_relative_to(site), paths["package"]
    assert Path(paths["tasks"]) == site / "rankt5_jax" / "tasks" / "__init__.py"
    assert Path(paths["config_dir"]) == site / "rankt5_jax" / "gin"
    assert paths["modules"] and all(Path(f).is_relative_to(site) for f in paths["modules"])

    model_dir, data_dir = tmp_path / "model", tmp_path / "data"
    train = subprocess.run(
        [sys.executable, "-m", "rankt5_jax", "train", "--gin_file=experiments/smoke_cpu.gin"]
        + [f"--gin.MODEL_DIR='{model_dir}'", f"--gin.DATA_DIR='{data_dir}'"]
        + ["--gin.TRAIN_STEPS=2", "--gin.CHECKPOINT_PERIOD=2", "--gin.EVAL_PERIOD=None"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert train.returncode == 0, train.stdout + train.stderr
    assert "done: step 2" in train.stderr, train.stderr
    assert (model_dir / "rankt5.json").is_file()
    assert (model_dir / "checkpoints" / "2").is_dir()
