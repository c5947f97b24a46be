"""Silences the start-up chatter of TensorFlow, XLA and JAX before either is imported.

Run directly, `rankt5` would otherwise open with lines that are not ours: TensorFlow's C++
start-up logs (cuda drivers not found, oneDNN notices, `absl::InitializeLog`), JAX's "falling
back to cpu" warning and orbax's INFO lines. TensorFlow writes its start-up lines from C++
static initialisers before any log level applies (no environment variable stops them, as of
TF 2.21), so `import_tensorflow` imports it with the process's stderr pointed at /dev/null;
its Python exceptions still surface. Log settings a user made in the environment win.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

_ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "3",  # TensorFlow and XLA C++ logs: errors only
    "GRPC_VERBOSITY": "ERROR",
    "GLOG_minloglevel": "3",
}
_LOGGERS = ("jax._src.xla_bridge", "absl", "tensorflow", "orbax", "bm25s")


def silence_startup_logs() -> None:
    """Sets the log-level environment (unless set) and quiets JAX's, absl's, TF's, orbax's and
    bm25s's loggers (`rankt5 --verbose` keeps them: `verbose_logs`)."""
    for name, value in _ENV.items():
        os.environ.setdefault(name, value)
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(logging.ERROR)
        # absl's set_verbosity (orbax, our checkpoint loading) resets the level: a filter stays,
        # so `WARNING:absl:Metadata file does not exist` and the like never reach the user.
        if _errors_only not in logger.filters:
            logger.addFilter(_errors_only)


def _errors_only(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR


def verbose_logs() -> None:
    """`--verbose`: the libraries' own log lines stay (INFO and above on stderr)."""
    logging.basicConfig(level=logging.INFO)
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(logging.NOTSET)
        logger.removeFilter(_errors_only)


def import_tensorflow(verbose: bool = False):
    """Imports TensorFlow (once) without the lines its C++ start-up writes to stderr (with
    them where `verbose`)."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    if verbose:
        return importlib.import_module("tensorflow")
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        return importlib.import_module("tensorflow")
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
