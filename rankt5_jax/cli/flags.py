"""The flags several subcommands share, each declared once here (docs/cli.md is their table).

One name for one meaning in every subcommand: `--exact_search` (exact search over float
vectors), `--index_dir` (a token index, `rankt5 index`) vs `--bm25_index` (a BM25 index,
`rankt5 retrieve`), `--dtype` (activations) vs `--search_dtype` (the exact search's products),
`--num_processes`/`--process_id` (several processes sharing one job), `--lenient` wherever a
file is read, `--json` wherever metrics are printed, `--metrics`/`--rel`/`--missing` with one
default. A renamed flag keeps its old spelling for one release (`add(..., old=...)`): it still
works and prints one deprecation line on stderr. Every subcommand's `--help` shows the defaults
(`HelpFormatter`). Imports nothing heavy: `rankt5 --help` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

# The release after which the deprecated spellings are removed.
REMOVED_AFTER = "0.2"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """`--help` shows `(default: X)` after a flag's help where there is a default to show
    (not for switches, flags without a default, or helps that already say it)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "%(default)" in text
            or "default:" in text
            or not action.option_strings
            or default is None
            or default is False
            or default is argparse.SUPPRESS
        ):
            return text
        return text + " (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` with `HelpFormatter`, whose errors are one line as every other
    user error of `rankt5` (`rankt5: error: rankt5 rerank: argument --top_k: ...`, exit 2);
    subcommands made through `add_subparsers(parser_class=Parser)` get it without naming it."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"rankt5: error: {self.prog}: {message} (see {self.prog} --help)\n")


class DeprecatedAlias(argparse.Action):
    """An old spelling of a flag: stores into the new flag's `dest` and prints one line on
    stderr. Hidden from `--help`; listed as deprecated in docs/cli.md."""

    def __init__(self, option_strings, dest, new: str, nargs=None, const=None, **kwargs):
        kwargs["default"] = argparse.SUPPRESS  # the new flag's default stands
        kwargs["help"] = argparse.SUPPRESS
        super().__init__(option_strings, dest, nargs=nargs, const=const, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        print(
            f"rankt5: warning: {option_string} is deprecated, use {self.new} "
            f"({option_string} goes after release {REMOVED_AFTER})",
            file=sys.stderr,
        )
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)


def positive_int(text: str) -> int:
    """An argparse `type`: a whole number of at least 1 (`--top_k 0` names the flag)."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def non_negative_int(text: str) -> int:
    """An argparse `type`: a whole number of at least 0."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {text}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None


def add(parser: argparse.ArgumentParser, name: str, *, old: Sequence[str] = (), **kwargs):
    """`parser.add_argument(name, **kwargs)`, plus each spelling in `old` as a deprecated alias
    that sets the same value. Returns the new flag's action."""
    action = parser.add_argument(name, **kwargs)
    for alias in old:
        parser.add_argument(
            alias,
            dest=action.dest,
            action=DeprecatedAlias,
            new=name,
            nargs=action.nargs,
            const=action.const,
            type=action.type,
            choices=action.choices,
            metavar=action.metavar,
        )
    return action


def deprecated_aliases(parser: argparse.ArgumentParser) -> dict[str, str]:
    """`{old spelling: new flag}` of a parser's deprecated aliases."""
    return {
        option: action.new
        for action in parser._actions
        if isinstance(action, DeprecatedAlias)
        for option in action.option_strings
    }


# ----------------------------------------------------------------------------------------------
# Flag families
# ----------------------------------------------------------------------------------------------


def add_verbose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="keep the libraries' own log lines (absl, TensorFlow, orbax, bm25s), hidden otherwise",
    )


def add_lenient(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--lenient",
        action="store_true",
        help="skip and count malformed input lines (default: stop at the first, naming file:line)",
    )


def add_json(parser: argparse.ArgumentParser, what: str = "the metrics") -> None:
    parser.add_argument(
        "--json", action="store_true", help=f"print {what} as one JSON object on the last line"
    )


def add_metrics(
    parser: argparse.ArgumentParser, *, rel: bool = True, missing: str | None = "skip"
) -> None:
    """`--metrics` (one default everywhere), `--rel` and `--missing` (its default given:
    `skip` is trec_eval's)."""
    from rankt5_jax.evaluation import measures

    parser.add_argument(
        "--metrics",
        default=",".join(measures.DEFAULT_MEASURES),
        help="comma-separated ir-measures names: RR@k, nDCG@k, AP, R@k, P@k, RR(rel=2)@10, ...",
    )
    if rel:
        parser.add_argument(
            "--rel",
            type=int,
            default=1,
            help="minimum grade of a relevant document (binary measures)",
        )
    if missing is not None:
        add_missing(parser, missing)


def add_missing(parser: argparse.ArgumentParser, default: str) -> None:
    from rankt5_jax.evaluation import measures

    parser.add_argument(
        "--missing", choices=measures.MISSING, default=default, help=measures.MISSING_HELP
    )


def metric_names(text: str) -> list[str]:
    """`--metrics` as a list (empty items dropped)."""
    return [m.strip() for m in text.split(",") if m.strip()]


def add_process_flags(parser: argparse.ArgumentParser, *, joined: bool = True) -> None:
    """Several processes sharing one job. `joined`: they join as one JAX job (`--multihost`,
    `--coordinator_address`; ids detected on TPU VMs, else given); otherwise each process
    works alone on its share (`rankt5 index`: --num_processes 1, --process_id 0 by default)."""
    if joined:
        parser.add_argument(
            "--multihost",
            action="store_true",
            help="one of several processes (one per host or per GPU) that share the job",
        )
        parser.add_argument(
            "--coordinator_address",
            metavar="HOST:PORT",
            help="with --multihost where JAX cannot detect the processes (not on TPU VMs): "
            "process 0's address and a free port",
        )
    add(
        parser,
        "--num_processes",
        old=() if joined else ("--num_hosts",),
        type=int,
        default=None if joined else 1,
        help="the number of processes sharing the job" + (" (with --multihost)" if joined else ""),
    )
    add(
        parser,
        "--process_id",
        old=() if joined else ("--host_id",),
        type=int,
        default=None if joined else 0,
        help="this process's index, 0 to num_processes - 1"
        + (" (with --multihost)" if joined else ""),
    )


def start_processes(args: argparse.Namespace) -> None:
    """The process flags of `add_process_flags(joined=True)` at work: with `--multihost`, joins
    the JAX job (before anything touches a device); without it, the other process flags are an
    error naming them."""
    from rankt5_jax.errors import ConfigError

    given = (args.coordinator_address, args.num_processes, args.process_id)
    if args.multihost:
        from rankt5_jax.modeling import multihost

        multihost.initialize(*given)
    elif any(flag is not None for flag in given):
        raise ConfigError("--coordinator_address/--num_processes/--process_id need --multihost")


def add_search_flags(parser: argparse.ArgumentParser, *, old_exact: bool = False) -> None:
    """Token-index search: `--token_k`, `--nprobe`, `--exact_search` (`old_exact`: also the
    deprecated `--exact`)."""
    parser.add_argument(
        "--token_k",
        type=int,
        default=None,
        help="document tokens retrieved per query token (default: 1/40 of the index's tokens, "
        "at least its passages, at most 16384)",
    )
    parser.add_argument(
        "--nprobe", type=int, default=32, help="inverted lists probed per query token (Faiss)"
    )
    add(
        parser,
        "--exact_search",
        old=("--exact",) if old_exact else (),
        action="store_true",
        help="exact search over the index's float vectors on the device (JAX) instead of Faiss",
    )


def add_scoring_flags(parser: argparse.ArgumentParser) -> None:
    """How a ranker scores pairs (`rerank`, `sweep`): `--batch_size`, `--batch_tokens`,
    `--max_length`, `--vocab`, `--variant`, `--dtype`, `--allow_pickle`."""
    parser.add_argument(
        "--batch_size", type=positive_int, default=64, help="at most this many pairs per call"
    )
    parser.add_argument(
        "--batch_tokens",
        type=non_negative_int,
        help="at most this many padded tokens per call (default: 2048 on CPU, off elsewhere; "
        "0: off)",
    )
    parser.add_argument(
        "--max_length",
        type=positive_int,
        default=512,
        help="tokens per pair (the document is cut)",
    )
    add_vocab(parser)
    add_variant(parser)
    add_dtype(parser)
    add_allow_pickle(parser)


def add_variant(parser: argparse.ArgumentParser, extra: str = "") -> None:
    from rankt5_jax.modeling import registry

    variants = ", ".join(f"{v.name} ({v.description})" for v in registry.VARIANTS.values())
    parser.add_argument(
        "--variant",
        choices=registry.NAMES,
        help=f"the model variant (default: read from the checkpoint{extra}): {variants}",
    )


def add_dtype(parser: argparse.ArgumentParser, what: str = "activations") -> None:
    parser.add_argument(
        "--dtype",
        choices=["float32", "bfloat16"],
        help=f"the model's {what} (default: float32 on CPU, bfloat16 on accelerators)",
    )


def add_vocab(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vocab", help="spiece.model, where the checkpoint has none")


def add_allow_pickle(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow_pickle",
        action="store_true",
        help="read a FiT5 authors' PyTorch .bin/.pt (pickle) checkpoint with "
        "torch.load(weights_only=True)",
    )
