"""`rankt5 train`: gin flags (`--gin_file`, `--gin.NAME=VALUE`), checked before anything runs.

T5X-style flags, checked against the gin files themselves (read with gin's own parser):
  * every `--gin.NAME=VALUE` macro must be one a gin file defines or uses: a typo is a one-line
    error naming the closest known macro, never silently ignored;
  * every value must parse as a gin value: strings need inner quotes (`--gin.MODEL_DIR="'/tmp/m'"`);
  * every macro a file uses (`%NAME`) must be given a value by a file or a flag.
Relative `--gin_file` paths are looked up in the configs shipped with the package (`config_dir()`)
and then in the working directory.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import sys

import gin
from gin import config_parser
from rankt5_jax.errors import ConfigError

HELP = """usage: rankt5 train --gin_file=FILE [--gin_file=FILE ...] [--gin.NAME=VALUE ...]
                    [--list_macros] [--verbose] [--multihost [--coordinator_address=HOST:PORT
                    --num_processes=N --process_id=I]]

Trains (or resumes) a ranking model configured with gin, as T5X's train.py is.

  --gin_file=FILE     a gin config; relative paths are looked up in the configs shipped with
                      rankt5_jax ({config_dir}) and then in the working directory,
                      e.g. experiments/smoke_cpu.gin or experiments/msmarco_encdec_softmax.gin
  --gin.NAME=VALUE    set the macro NAME, or bind a parameter (--gin.trainer.train.batch_size=16);
                      VALUE is a gin (Python) literal, so strings need inner quotes:
                      --gin.MODEL_DIR="'/tmp/model'"   --gin.LEARNING_RATE=3e-4
  --list_macros       print the macros the gin files define or need, then exit
  --multihost         one process per host or per GPU (TPU VM slices, GPU clusters): every
                      process runs this same command and they join as one JAX job
                      (jax.distributed); run_tpu.sh starts them
  --coordinator_address=HOST:PORT, --num_processes=N, --process_id=I
                      with --multihost where JAX cannot detect the processes itself (several
                      processes on one machine, GPU hosts without SLURM/Open MPI): process 0's
                      address and a free port, the number of processes, this one's index;
                      on Cloud TPU VMs leave them out
  --verbose           keep the libraries' own log lines (TensorFlow, absl, orbax), hidden otherwise
  -h, --help          this text

A rerun of the same command resumes from the latest checkpoint in MODEL_DIR.
Example: rankt5 train --gin_file=experiments/smoke_cpu.gin --gin.MODEL_DIR="'/tmp/m'\""""


def config_dir() -> str:
    """The gin configs: `rankt5_jax/gin` in an installed wheel, `gin/` in a source checkout."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # rankt5_jax/
    installed = os.path.join(package, "gin")
    return installed if os.path.isdir(installed) else os.path.join(os.path.dirname(package), "gin")


HELP = HELP.replace("{config_dir}", config_dir())


def search_paths() -> list[str]:
    return [config_dir(), os.getcwd()]


@dataclasses.dataclass
class Flags:
    files: list[str]
    bindings: list[tuple[str, str]]  # (NAME, VALUE) as given
    multihost: bool = False
    list_macros: bool = False
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None


_PROCESS_FLAGS = {"--coordinator_address": str, "--num_processes": int, "--process_id": int}


def parse_gin_flags(argv: list[str]) -> Flags:
    flags = Flags([], [])
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg.startswith("--gin_file="):
            flags.files.append(arg.split("=", 1)[1])
        elif arg == "--gin_file" and args:
            flags.files.append(args.pop(0))
        elif arg.startswith("--gin."):
            name, _, value = arg[len("--gin.") :].partition("=")
            if not value and args:
                value = args.pop(0)
            flags.bindings.append((name, value))
        elif arg.startswith("--gin_bindings="):
            name, _, value = arg.split("=", 1)[1].partition("=")
            flags.bindings.append((name.strip(), value.strip()))
        elif arg == "--multihost":
            flags.multihost = True
        elif arg == "--list_macros":
            flags.list_macros = True
        elif arg.split("=", 1)[0] in _PROCESS_FLAGS:
            name, eq, value = arg.partition("=")
            if not eq:
                if not args:
                    raise ConfigError(f"{name} needs a value (rankt5 train --help)")
                value = args.pop(0)
            try:
                parsed = _PROCESS_FLAGS[name](value)
            except ValueError:
                raise ConfigError(f"{name}={value}: not a whole number") from None
            setattr(flags, name[2:], parsed)
        else:
            raise ConfigError(
                f"unknown flag {arg!r}: use --gin_file=FILE and --gin.NAME=VALUE (rankt5 train --help)"
            )
    if not flags.files:
        raise ConfigError("train needs at least one --gin_file (rankt5 train --help)")
    process_flags = [name for name in _PROCESS_FLAGS if getattr(flags, name[2:]) is not None]
    if process_flags and not flags.multihost:
        raise ConfigError(f"{', '.join(process_flags)} only go with --multihost")
    if flags.multihost:
        from rankt5_jax.modeling import multihost

        multihost.check_flags(flags.coordinator_address, flags.num_processes, flags.process_id)
    return flags


# ----------------------------------------------------------------------------------------------
# Reading the gin files with gin's parser (macros defined and used, includes followed)
# ----------------------------------------------------------------------------------------------


class _Recorder(config_parser.ParserDelegate):
    """Records the macros a value uses; references stay unevaluated."""

    def __init__(self):
        self.used: set[str] = set()

    def configurable_reference(self, scoped_configurable_name, evaluate):
        return scoped_configurable_name

    def macro(self, macro_name):
        self.used.add(macro_name.rsplit("/", 1)[-1])
        return macro_name


@dataclasses.dataclass
class GinMacros:
    defined: dict[str, config_parser.Location]  # the last definition of each macro
    used: set[str]


def _find(path: str, search: list[str]) -> str:
    candidates = [path] + [os.path.join(base, path) for base in search]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    raise ConfigError(f"gin file not found: {path} (looked in {', '.join(['.'] + search)})")


def read_macros(files: list[str], search: list[str]) -> GinMacros:
    """The macros that `files` (and the files they include) define and use."""
    macros = GinMacros({}, set())
    seen: set[str] = set()

    def visit(path: str) -> None:
        path = _find(path, search)
        if path in seen:
            return
        seen.add(path)
        recorder = _Recorder()
        with open(path) as handle:
            parser = config_parser.ConfigParser(handle, recorder)
            try:
                for statement in parser:
                    if isinstance(statement, config_parser.IncludeStatement):
                        visit(statement.filename)
                    elif isinstance(statement, config_parser.BindingStatement):
                        if not statement.arg_name and "." not in statement.selector:
                            macros.defined[statement.selector] = statement.location
            except SyntaxError as err:
                raise ConfigError(f"{path}:{err.lineno}: gin syntax error: {err.msg}") from err
        macros.used |= recorder.used

    for path in files:
        visit(path)
    return macros


def check_value(name: str, value: str) -> set[str]:
    """Parses `VALUE` of `--gin.NAME=VALUE` as gin does; -> the macros it uses."""
    recorder = _Recorder()
    try:
        statements = list(config_parser.ConfigParser(f"{name} = {value}", recorder))
    except SyntaxError:
        statements = []
    if len(statements) != 1 or not value.strip():
        raise ConfigError(
            f"--gin.{name}={value}: not a gin value; strings need inner quotes, "
            f"e.g. --gin.{name}=\"'{value}'\" (numbers, True/False/None and @refs go bare)"
        )
    return recorder.used


def check_flags(flags: Flags, macros: GinMacros) -> None:
    """One-line errors for unknown macros, unparsable values and macros left unset."""
    known = set(macros.defined) | macros.used
    given = set()
    for name, value in flags.bindings:
        macros.used |= check_value(name, value)
        if "." in name or "/" in name:  # a parameter binding: gin checks the name itself
            continue
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ConfigError(
                f"--gin.{name}: no gin file defines or uses the macro {name}{hint} "
                "(rankt5 train --gin_file=... --list_macros lists them)"
            )
        given.add(name)
    unset = sorted(macros.used - set(macros.defined) - given)
    if unset:
        needed = " ".join(f"--gin.{name}=..." for name in unset)
        raise ConfigError(f"gin: macro(s) {', '.join(unset)} not set; pass {needed}")


def format_macros(macros: GinMacros) -> str:
    lines = []
    for name in sorted(set(macros.defined) | macros.used):
        location = macros.defined.get(name)
        if location is None:
            lines.append(f"{name}  (required: no file sets it; pass --gin.{name}=...)")
        else:
            source = (location.line_content or "").strip()
            lines.append(f"{source}    # {os.path.basename(location.filename)}:{location.line_num}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------


def main_from_flags(argv: list[str], verbose: bool = False):
    """`rankt5 train ...`: checks the flags against the gin files (importing neither JAX nor
    TensorFlow, so a mistake is refused at once), then parses them and trains."""
    flags = parse_gin_flags(argv)
    search = search_paths()
    macros = read_macros(flags.files, search)
    if flags.list_macros:
        print(format_macros(macros))
        return None
    check_flags(flags, macros)
    from rankt5_jax.quiet import import_tensorflow

    import_tensorflow(verbose=verbose)  # its C++ start-up lines hidden unless verbose
    if flags.multihost:  # one process per host or per GPU, joined before any device is used
        from rankt5_jax.modeling import multihost

        multihost.initialize(flags.coordinator_address, flags.num_processes, flags.process_id)
    for path in search:
        gin.add_config_file_search_path(path)
    import logging

    import rankt5_jax.data.tasks_lib  # noqa: F401  (registers gin configurables)
    from rankt5_jax.training.train import train

    bindings = [f"{name} = {value}" for name, value in flags.bindings]
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.CRITICAL)  # gin logs a spurious error before trying its search paths
    try:
        gin.parse_config_files_and_bindings(flags.files, bindings, finalize_config=False)
    except OSError as err:
        raise ConfigError(f"gin: {err}") from err
    except (ValueError, KeyError, TypeError, NameError, SyntaxError) as err:
        message = str(err).strip().splitlines()
        raise ConfigError(
            "gin: " + " | ".join(line.strip() for line in message if line.strip())
        ) from err
    finally:
        root.setLevel(level)
    try:
        result = train()
    except (ValueError, TypeError) as err:
        if "gin" in str(err).lower() or "REQUIRED" in str(err):
            raise ConfigError(f"gin: {str(err).splitlines()[0]}") from err
        raise
    print(f"done: step {result.step}", file=sys.stderr)
    return result
