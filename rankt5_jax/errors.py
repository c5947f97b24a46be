"""Typed exceptions of rankt5_jax.

Every user-facing failure raises a subclass of `RankT5Error`; the CLI prints its message on one line
and exits non-zero. Errors about a file carry the path and, where it applies, the 1-based line number.
"""

from __future__ import annotations


class RankT5Error(Exception):
    """Base class of all errors rankt5_jax raises on purpose."""


class InputFormatError(RankT5Error, ValueError):
    """A malformed input file (corpus, queries, qrels, run), naming the file and line."""

    def __init__(self, path: str, line: int | None, message: str):
        self.path = str(path)
        self.line = line
        self.reason = message
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


class CheckpointError(RankT5Error, ValueError):
    """A checkpoint that is missing, corrupt, truncated or of the wrong variant."""


class ConfigError(RankT5Error, ValueError):
    """A bad setting (gin binding, CLI flag, model option)."""


class NonFiniteError(RankT5Error, FloatingPointError):
    """Training produced a NaN or Inf loss or gradient."""
