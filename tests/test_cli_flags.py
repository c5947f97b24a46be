"""One CLI vocabulary: docs/cli.md against the parsers, every --help, deprecated spellings,
--version, and the one metric convention of evaluate/compare (`--missing`, query counts)."""

import argparse
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from rankt5_jax import cli
from rankt5_jax.cli import flags
from rankt5_jax.data import formats
from rankt5_jax.evaluation import measures
from rankt5_jax.training import gin_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TABLE = os.path.join(REPO, "docs", "cli.md")


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {"rankt5": parser, **{n: p for n, p in sub.choices.items() if n != "train"}}


def _train_flags() -> set[str]:
    """The flags `rankt5 train --help` lists (gin's own parser, not argparse)."""
    found = set()
    for line in gin_flags.HELP.splitlines():
        if re.match(r"^  -", line):
            found |= {f.split("=")[0] for f in re.findall(r"--[\w.]+(?:=[A-Z:]+)?", line)}
    return {"--gin.NAME" if f.startswith("--gin.") else f for f in found}


def _table() -> list[dict]:
    rows = []
    with open(TABLE, encoding="utf-8") as handle:
        for line in handle:
            if not line.startswith("| `--"):
                continue
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            assert len(cells) == 4, line
            flag, commands, meaning, default = cells
            rows.append(
                {
                    "flag": flag.strip("`"),
                    "commands": [c.strip() for c in commands.split(",")],
                    "meaning": meaning,
                    "default": default,
                }
            )
    return rows


def _documented_default(cell: str, command: str) -> str:
    """The default a cell gives `command`: `value`, or `a, b: value; c: other`."""
    for entry in (e.strip() for e in cell.split(";")):
        names, colon, value = entry.partition(":")
        if colon and command in [n.strip() for n in names.split(",")]:
            return value.strip().strip("`")
    return cell.strip("`")


def _parser_flags() -> dict[tuple[str, str], argparse.Action | None]:
    out: dict[tuple[str, str], argparse.Action | None] = {}
    for name, parser in _commands().items():
        for action in parser._actions:
            for option in action.option_strings:
                if option.startswith("--"):
                    out[(name, option)] = action
    for flag in _train_flags() | {"--verbose"}:
        out[("train", flag)] = None
    return out


def _row_line(command: str, flag: str, action) -> str:
    default = getattr(action, "default", None)
    shown = "—" if default in (None, False, argparse.SUPPRESS) else f"`{default}`"
    return f"| `{flag}` | {command} | {getattr(action, 'help', '') or ''} | {shown} |"


def test_flag_table_matches_the_parsers():
    rows = _table()
    documented = {(c, r["flag"]): r for r in rows for c in r["commands"]}
    parsed = _parser_flags()
    undocumented = [
        _row_line(c, f, a) for (c, f), a in sorted(parsed.items()) if (c, f) not in documented
    ]
    assert not undocumented, "flags missing from docs/cli.md:\n" + "\n".join(undocumented)
    stale = sorted(key for key in documented if key not in parsed)
    assert not stale, f"docs/cli.md rows with no such flag in the parser: {stale}"
    for (command, flag), action in parsed.items():
        row = documented[(command, flag)]
        deprecated = isinstance(action, flags.DeprecatedAlias)
        assert deprecated == row["meaning"].startswith("*deprecated*"), (command, flag)
        if deprecated:
            assert f"`{action.new}`" in row["meaning"], (command, flag)
            continue
        if action is None or action.default in (None, False, argparse.SUPPRESS):
            continue
        assert _documented_default(row["default"], command) == str(action.default), (
            command,
            flag,
            row["default"],
        )


def test_one_meaning_one_name():
    rows = _table()
    # The renamed meanings: no command uses an old spelling as its current flag.
    current = {(c, r["flag"]) for r in rows for c in r["commands"]}
    parsers = _commands()
    for command, flag, meaning_flag in [
        ("search", "--exact", "--exact_search"),
        ("index", "--exact", "--store_vectors"),
        ("retrieve", "--index_dir", "--bm25_index"),
        ("search", "--dtype", "--search_dtype"),
        ("index", "--host_id", "--process_id"),
        ("index", "--num_hosts", "--num_processes"),
    ]:
        if (command, meaning_flag) not in current:
            pytest.fail(f"rankt5 {command} has no {meaning_flag}")
        alias = parsers[command]._option_string_actions[flag]
        assert isinstance(alias, flags.DeprecatedAlias) and alias.new == meaning_flag
    # Every command that reads a file has --lenient; every command printing metrics has --json.
    for command in ("evaluate", "compare", "rerank", "prepare", "index", "search"):
        assert "--lenient" in parsers[command]._option_string_actions, command
    for command in ("evaluate", "compare", "rerank", "sweep"):
        assert "--json" in parsers[command]._option_string_actions, command
    defaults = {
        c: parsers[c]._option_string_actions["--metrics"].default
        for c in ("evaluate", "compare", "sweep")
    }
    assert set(defaults.values()) == {",".join(measures.DEFAULT_MEASURES)}, defaults


def test_every_help_runs_and_shows_defaults(capsys):
    for name, parser in _commands().items():
        argv = ["--help"] if name == "rankt5" else [name, "--help"]
        with pytest.raises(SystemExit) as done:
            cli.main(argv)
        assert done.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith(f"usage: {parser.prog}"), out[:80]
        for action in parser._actions:
            if action.option_strings and action.help not in (None, argparse.SUPPRESS):
                assert action.option_strings[-1] in out, (name, action.option_strings)
            shown = action.default not in (None, False, argparse.SUPPRESS)
            if shown and action.help and "default:" not in action.help:
                assert f"(default: {action.default})" in " ".join(out.split()), (name, action)
    assert cli.main(["train", "--help"]) == 0
    assert "--gin_file=FILE" in capsys.readouterr().out


def _minimal_argv(parser: argparse.ArgumentParser) -> list[str]:
    argv = []
    for group in parser._mutually_exclusive_groups:
        if group.required:
            argv += [group._group_actions[0].option_strings[0], "x"]
    for action in parser._actions:
        if action.required and action.option_strings:
            argv += [action.option_strings[0], "x"] + (["y"] if action.nargs == "+" else [])
    return argv


def test_deprecated_spellings_work_and_say_so_once(capsys):
    seen = 0
    for name, parser in _commands().items():
        for old, new in flags.deprecated_aliases(parser).items():
            action = parser._option_string_actions[new]
            if action.nargs == 0:
                value = []
            elif action.choices:
                value = [list(action.choices)[-1]]
            else:
                value = ["7" if action.type is int else "x7"]
            base = _minimal_argv(parser)
            expected = parser.parse_args(base + [new, *value])
            assert capsys.readouterr().err == ""
            got = parser.parse_args(base + [old, *value])
            err = capsys.readouterr().err.strip().splitlines()
            assert got == expected, (name, old)
            assert len(err) == 1 and old in err[0] and new in err[0] and "deprecated" in err[0]
            seen += 1
    assert seen >= 6


def test_version_is_the_package_version():
    with open(os.path.join(REPO, "setup.py")) as handle:
        version = re.search(r'version="([^"]+)"', handle.read()).group(1)
    out = subprocess.run(
        [sys.executable, "-m", "rankt5_jax", "--version"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert out.returncode == 0 and out.stdout.strip() == f"rankt5 {version}"


def test_no_bare_except_exception_in_the_cli():
    folder = os.path.join(REPO, "rankt5_jax", "cli")
    for name in os.listdir(folder):
        if name.endswith(".py"):
            with open(os.path.join(folder, name)) as handle:
                assert not re.search(r"except (Exception|BaseException)\b", handle.read()), name


# ----------------------------------------------------------------------------------------------
# One metric convention: --missing, query counts, refusals
# ----------------------------------------------------------------------------------------------

pytrec_eval = pytest.importorskip("pytrec_eval")


def _case(seed: int = 3):
    rng = np.random.default_rng(seed)
    run, qrels = {}, {}
    for q in range(30):
        qid = f"q{q}"
        judged = rng.choice(50, size=int(rng.integers(2, 12)), replace=False)
        qrels[qid] = {f"d{i}": int(rng.integers(0, 3)) for i in judged}
        if q % 4 != 1:  # a quarter of the judged queries are missing from the run
            docs = rng.choice(50, size=int(rng.integers(3, 30)), replace=False)
            run[qid] = {f"d{i}": float(rng.normal()) for i in docs}
    run["unjudged"] = {"d1": 1.0}
    return run, qrels


def _write(tmp_path, run, qrels):
    run_path, qrels_path = tmp_path / "a.run", tmp_path / "qrels.txt"
    formats.write_trec_run(str(run_path), run, tag="a")
    qrels_path.write_text(
        "".join(f"{q} 0 {d} {g}\n" for q, docs in qrels.items() for d, g in docs.items())
    )
    return str(run_path), str(qrels_path)


def _pytrec(run, qrels, missing):
    per_query = pytrec_eval.RelevanceEvaluator(qrels, {"map", "ndcg_cut.10"}).evaluate(run)
    count = len(per_query) if missing == "skip" else len(qrels)
    return {
        "AP": sum(v["map"] for v in per_query.values()) / count,
        "nDCG@10": sum(v["ndcg_cut_10"] for v in per_query.values()) / count,
    }, count


@pytest.mark.parametrize("missing", ["skip", "zero"])
def test_evaluate_and_compare_missing_both_ways_equal_pytrec_eval(tmp_path, capsys, missing):
    run, qrels = _case()
    run_path, qrels_path = _write(tmp_path, run, qrels)
    expected, count = _pytrec(formats.read_run(run_path), qrels, missing)
    assert count == (22 if missing == "skip" else 30)
    argv = ["--run", run_path, "--qrels", qrels_path, "--metrics", "AP,nDCG@10", "--json"]
    assert cli.main(["evaluate", *argv, "--missing", missing]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out.strip().splitlines()[-1]) == pytest.approx(expected, abs=1e-9)
    assert f"mean over {count} queries (--missing {missing})" in err
    assert "lacks 8 of the 30 judged queries" in err and "1 ranked query is not judged" in err

    base = tmp_path / "base.run"
    formats.write_trec_run(str(base), {q: {"d0": 1.0} for q in qrels}, tag="base")
    code = cli.main(
        ["compare", "--qrels", qrels_path, "--runs", str(base), run_path,
         "--metrics", "AP,nDCG@10", "--missing", missing, "--json"]
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0
    printed = json.loads(out.strip().splitlines()[-1])
    assert printed["metrics"]["a"] == pytest.approx(expected, abs=1e-9)  # = evaluate's mean
    assert printed["queries"]["a"]["evaluated"] == count
    assert printed["queries"]["a"]["missing"] == 8
    assert all(t["queries"] == count for t in printed["tests"])
    assert "warning: run a lacks 8 of the 30 judged queries (27%)" in err
    assert "warning: run base" not in err


def test_evaluate_default_is_trec_eval_default_and_text_says_counts(tmp_path, capsys):
    run, qrels = _case()
    run_path, qrels_path = _write(tmp_path, run, qrels)
    assert cli.main(["evaluate", "--run", run_path, "--qrels", qrels_path, "--metrics", "AP"]) == 0
    out, err = capsys.readouterr()
    expected, _ = _pytrec(formats.read_run(run_path), qrels, "skip")
    assert f"AP\t{expected['AP']:.4f}" in out and "queries\t22" in out
    assert "(--missing skip)" in err


def test_evaluate_refuses_a_run_sharing_no_query(tmp_path, capsys):
    run_path, qrels_path = _write(tmp_path, {"x1": {"d1": 1.0}}, {"q1": {"d1": 1}})
    assert cli.main(["evaluate", "--run", run_path, "--qrels", qrels_path]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "shares no query with the qrels" in err[0] and run_path in err[0]


def test_evaluate_and_compare_read_stdin(tmp_path):
    run, qrels = _case()
    run_path, qrels_path = _write(tmp_path, run, qrels)
    with open(run_path) as handle:
        text = handle.read()
    out = subprocess.run(
        [sys.executable, "-m", "rankt5_jax", "evaluate", "--run", "-", "--qrels", qrels_path,
         "--metrics", "AP", "--json"],
        input=text, capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    expected, _ = _pytrec(formats.read_run(run_path), qrels, "skip")
    assert json.loads(out.stdout.splitlines()[-1])["AP"] == pytest.approx(expected["AP"])


def test_lenient_evaluate_skips_and_counts(tmp_path, capsys):
    run_path, qrels_path = _write(tmp_path, {"q1": {"d1": 1.0}}, {"q1": {"d1": 1}})
    with open(run_path, "a") as handle:
        handle.write("q1 Q0 broken\n")
    assert cli.main(["evaluate", "--run", run_path, "--qrels", qrels_path]) == 2
    assert f"{run_path}:2" in capsys.readouterr().err
    assert cli.main(["evaluate", "--run", run_path, "--qrels", qrels_path, "--lenient"]) == 0
    assert "skipped 1 lines" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# Inputs as they come; quiet
# ----------------------------------------------------------------------------------------------

BOM = "\ufeff"


def test_a_byte_order_mark_is_accepted_by_every_reader(tmp_path):
    def write(name, text):
        path = tmp_path / name
        path.write_text(BOM + text, encoding="utf-8")
        return str(path)

    assert formats.read_run(write("r.run", "q1 Q0 d1 1 2.0 t\n")) == {"q1": {"d1": 2.0}}
    assert formats.read_qrels(write("q.txt", "q1 0 d1 1\n")) == {"q1": {"d1": 1}}
    beir = write("test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t2\n")
    assert formats.read_qrels(beir) == {"q1": {"d1": 2}}
    assert formats.read_queries(write("q.jsonl", '{"_id": "q1", "text": "hi"}\n')) == {"q1": "hi"}
    assert formats.read_queries(write("q.tsv", "q1\thi\n")) == {"q1": "hi"}
    corpus_path = write(
        "c.jsonl", '{"_id": "d1", "title": "T", "text": "x"}\n{"_id": "d2", "text": "y"}\n'
    )
    corpus = formats.Corpus(corpus_path)
    assert corpus.get("d1") == ("T", "x") and corpus.text("d2") == "y"
    assert [doc[1] for doc in formats.iter_corpus(corpus_path)] == ["d1", "d2"]


def test_a_broken_json_line_shows_the_whole_decoder_message(tmp_path):
    path = tmp_path / "queries.jsonl"
    path.write_text('{"_id": "q1", "text": "a"}\n{"_id": "q2" "text": "b"}\n')
    with pytest.raises(formats.InputFormatError) as info:
        formats.read_queries(str(path))
    message = str(info.value)
    assert message.startswith(f"{path}:2: invalid JSON: Expecting ',' delimiter at column 14")
    assert '"q2" "text"' in message


def test_an_output_folder_that_is_a_file_is_named(tmp_path, capsys):
    blocker = tmp_path / "results"
    blocker.write_text("x")
    run_path, qrels_path = _write(tmp_path, {"q1": {"d1": 1.0}}, {"q1": {"d1": 1}})
    argv = ["evaluate", "--run", run_path, "--qrels", qrels_path, "--plot", str(blocker / "p.png")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"rankt5: error: cannot create the output folder {blocker}: {blocker} is a file, "
        "not a folder"
    )


def test_train_rejects_a_bad_flag_before_importing_jax_or_tensorflow():
    code = (
        "import sys; from rankt5_jax import cli; rc = cli.main(sys.argv[1:]); "
        "heavy = [m for m in ('jax', 'tensorflow', 'seqio') if m in sys.modules]; "
        "assert not heavy, heavy; sys.exit(rc)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, "train", "--gin_file=experiments/smoke_cpu.gin",
         "--gin.TRAIN_STEPZ=3"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [
        line for line in out.stderr.strip().splitlines() if line.startswith("rankt5: error:")
    ]
    assert "did you mean TRAIN_STEPS?" in out.stderr


def test_library_logs_are_hidden_unless_verbose(capsys):
    import logging

    from rankt5_jax import quiet

    quiet.silence_startup_logs()
    for name in ("absl", "bm25s"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.DEBUG)  # as absl's set_verbosity does after our silencing
        assert not logger.filter(logger.makeRecord(name, logging.WARNING, "f", 1, "m", (), None))
        assert logger.filter(logger.makeRecord(name, logging.ERROR, "f", 1, "m", (), None))
    quiet.verbose_logs()
    try:
        record = logging.getLogger("absl").makeRecord(
            "absl", logging.WARNING, "f", 1, "m", (), None
        )
        assert logging.getLogger("absl").filter(record)
    finally:
        quiet.silence_startup_logs()


def test_bad_flag_values_are_one_line_naming_the_flag(capsys):
    for argv, named in [
        (["compare", "--qrels", "q", "--runs", "a", "b", "--permutations", "0"], "--permutations"),
        (["evaluate", "--run", "r", "--qrels", "q", "--missing", "some"], "--missing"),
        (["evaluate", "--run", "r"], "--qrels"),
    ]:
        with pytest.raises(SystemExit) as done:
            cli.main(argv)
        assert done.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("rankt5: error: rankt5 ") and named in err[0]
    assert flags.positive_int("3") == 3 and flags.non_negative_int("0") == 0
    for bad in ("0", "-1", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            flags.positive_int(bad)


def test_help_of_every_command_imports_nothing_heavy():
    code = (
        "import sys\n"
        "from rankt5_jax import cli\n"
        "for name in sys.argv[1:]:\n"
        "    try:\n"
        "        cli.main([name, '--help'])\n"
        "    except SystemExit as done:\n"
        "        assert done.code == 0, name\n"
        "heavy = [m for m in ('jax', 'tensorflow', 'torch', 'faiss', 'bm25s') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    names = [n for n in _commands() if n not in ("rankt5", "prepare")]  # prepare: TF first
    out = subprocess.run(
        [sys.executable, "-c", code, *names], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert out.returncode == 0, out.stderr


def test_compare_reads_a_run_from_stdin(tmp_path):
    run, qrels = _case()
    run_path, qrels_path = _write(tmp_path, run, qrels)
    base = tmp_path / "base.run"
    formats.write_trec_run(str(base), {q: {"d0": 1.0} for q in qrels}, tag="base")
    with open(run_path) as handle:
        text = handle.read()
    out = subprocess.run(
        [sys.executable, "-m", "rankt5_jax", "compare", "--qrels", qrels_path,
         "--runs", str(base), "-", "--metrics", "AP", "--missing", "skip", "--json"],
        input=text, capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    expected, _ = _pytrec(formats.read_run(run_path), qrels, "skip")
    printed = json.loads(out.stdout.splitlines()[-1])
    assert printed["metrics"]["-"]["AP"] == pytest.approx(expected["AP"], abs=1e-9)


def test_an_output_dir_below_a_file_is_named(tmp_path):
    blocker = tmp_path / "results"
    blocker.write_text("x")
    for folder in (blocker, blocker / "deeper"):
        with pytest.raises(formats.ConfigError) as info:
            formats.check_output_dir(str(folder))
        assert str(info.value) == (
            f"cannot create the output folder {folder}: {blocker} is a file, not a folder"
        )
    made = tmp_path / "new" / "folder"
    assert formats.check_output_dir(str(made)) == str(made) and made.is_dir()
