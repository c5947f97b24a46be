"""What a new user hits first: gin flag mistakes as one-line errors, train --help and
--list_macros, output paths checked before any work, empty checkpoint folders, pipes as input,
and no TensorFlow start-up lines before the command's own output."""

import os
import subprocess
import sys
import threading

import pytest

from rankt5_jax import cli
from rankt5_jax.data import formats
from rankt5_jax.errors import CheckpointError, ConfigError

SMOKE = "--gin_file=experiments/smoke_cpu.gin"


def _run_cli(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("rankt5: error: ")
    return lines[0]


def test_mistyped_macro_names_the_typo_and_the_closest_macro(capsys):
    code, _, err = _run_cli(
        capsys, "train", SMOKE, "--gin.TRAIN_STEPZ=5", "--gin.MODEL_DIR='/tmp/m'"
    )
    assert code == 2
    line = _one_error_line(err)
    assert "TRAIN_STEPZ" in line and "did you mean TRAIN_STEPS?" in line

    code, _, err = _run_cli(capsys, "train", SMOKE, "--gin.MODEL_DIRR='/tmp/m'")
    line = _one_error_line(err)
    assert code == 2 and "MODEL_DIRR" in line and "did you mean MODEL_DIR?" in line


@pytest.mark.parametrize(
    "flag, shown",
    [
        ("--gin.MODEL_DIR=/tmp/m", "--gin.MODEL_DIR=\"'/tmp/m'\""),
        ("--gin.LEARNING_RATE=oops", "oops"),
    ],
)
def test_unparsable_value_is_one_line_with_the_quoting(capsys, flag, shown):
    code, _, err = _run_cli(capsys, "train", SMOKE, flag)
    assert code == 2
    line = _one_error_line(err)
    assert flag.split("=")[0] in line and shown in line and "inner quotes" in line


def test_unset_required_macro_is_named(capsys):
    code, _, err = _run_cli(capsys, "train", SMOKE)
    assert code == 2 and "MODEL_DIR" in _one_error_line(err)


def test_unknown_gin_file_is_one_line(capsys):
    code, _, err = _run_cli(capsys, "train", "--gin_file=experiments/nope.gin")
    assert code == 2 and "nope.gin" in _one_error_line(err)


def test_train_help_and_list_macros(capsys):
    code, out, _ = _run_cli(capsys, "train", "--help")
    assert code == 0 and "--gin_file=FILE" in out and "--list_macros" in out
    assert "inner quotes" in out
    code, out, _ = _run_cli(capsys, "train", SMOKE, "--list_macros")
    assert code == 0
    assert "TRAIN_STEPS = 300" in out and "smoke_cpu.gin" in out
    assert "MODEL_DIR  (required" in out


def test_every_cli_flag_has_help():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, command in sub.choices.items():
        for action in command._actions:
            if action.dest != "help" and action.option_strings:
                assert action.help, f"rankt5 {name} {action.option_strings[0]} has no help"


def test_output_folder_is_made_or_refused_before_any_work(tmp_path):
    from rankt5_jax.inference import rerank

    made = tmp_path / "new" / "deeper" / "out.run"
    assert formats.check_output_path(str(made)) == str(made)
    assert made.parent.is_dir()
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    # The queries file does not exist either: the output is checked first, before any reading.
    with pytest.raises(ConfigError, match="output folder"):
        rerank.rerank_files(
            "no_ckpt", "missing_q.tsv", "missing_c.tsv", "missing.run", str(blocker / "out.run")
        )


def test_scores_are_kept_when_the_run_cannot_be_written(tmp_path):
    from rankt5_jax.inference.rerank import _write_or_keep

    target = tmp_path / "gone" / "out.run"  # the folder vanished after the check
    run = {"q1": {"d1": 0.5, "d2": 1.5}}
    with pytest.raises(ConfigError, match="scores are kept in") as info:
        _write_or_keep(str(target), run)
    kept = str(info.value).rsplit("kept in ", 1)[1]
    assert formats.read_run(kept) == {"q1": {"d1": 0.5, "d2": 1.5}}
    os.remove(kept)


def test_empty_checkpoint_folder_says_it_holds_no_checkpoint(tmp_path):
    from rankt5_jax.checkpoints.loading import load_checkpoint

    with pytest.raises(CheckpointError, match="holds no checkpoint") as info:
        load_checkpoint(tmp_path)
    assert "spiece" not in str(info.value)


def test_run_from_a_pipe(tmp_path):
    fifo = tmp_path / "run.fifo"
    os.mkfifo(fifo)

    def write():
        with open(fifo, "w") as handle:
            handle.write("q1 Q0 d1 1 2.0 bm25\nq1 Q0 d2 2 1.0 bm25\n")

    writer = threading.Thread(target=write)
    writer.start()
    assert formats.read_run(str(fifo)) == {"q1": {"d1": 2.0, "d2": 1.0}}
    writer.join()
    with pytest.raises(Exception, match="is a directory"):
        formats.read_run(str(tmp_path))


def test_no_tensorflow_startup_lines_before_our_output(tmp_path):
    # `rankt5 prepare` imports TensorFlow before parsing anything (cli._USES_TENSORFLOW);
    # `rankt5 train` once its flags are checked (gin_flags.main_from_flags): here the flags pass
    # the check, TensorFlow and the tasks are imported, and gin then refuses the binding.
    assert "prepare" in cli._USES_TENSORFLOW and "train" not in cli._USES_TENSORFLOW
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "XLA_FLAGS")}
    argv = [SMOKE, f"--gin.MODEL_DIR='{tmp_path}/m'", "--gin.no_such_configurable.x=1"]
    code = (
        "import sys; from rankt5_jax import cli; rc = cli.main(sys.argv[1:]); "
        "assert 'tensorflow' in sys.modules, 'TF not imported'; sys.exit(rc)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, "train", *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode == 2, out.stderr
    assert "no_such_configurable" in _one_error_line(out.stderr)
    for noise in ("oneDNN", "cuda", "absl::InitializeLog", "I0000", "W0000"):
        assert noise not in out.stderr, out.stderr
