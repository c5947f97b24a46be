"""Progress on stderr that tells the truth: the one progress reporter every long command uses
(re-ranking, sweeps, search, indexing, retrieval).

    with Progress(total_pairs, "rerank", "pairs") as bar:
        for chunk in chunks:
            ...
            bar.update(len(chunk))

- Counts the real unit of work (pairs scored, passages encoded, queries searched), which the
  caller updates as soon as a piece of it is done (a batch, not a whole chunk).
- The rate leaves out the time before the first update (start-up, the first compilation) and
  the pauses the caller names (`update(n, paused=seconds)`: compiling a new shape later on), so
  a steady job's ETA is right from the second update on: `rate` is the work since the first
  update over the time since it, less the pauses. Before a second update there is no rate and
  no ETA.
- On a terminal: one line rewritten in place (carriage return), at most every
  `TTY_SECONDS`. Elsewhere (a log file, a pipe, a test's captured stderr): one whole line per
  update, at most one every `RANKT5_PROGRESS_SECONDS` seconds (default `LOG_SECONDS`; 0 for a
  line per update), never a carriage return. The start (the total), the first update and the
  last are always shown.
- The line at the total is printed once, with the time it took; `close()` after it prints
  nothing more. A bar closed before its total (an error, SIGTERM) says where it stopped.

A line reads `rerank: 4,096/10,000 pairs (41%), 512 pairs/s, elapsed 8.0s, ETA 11.5s` (`done in`
for the last); `parse_line` reads one back (tests, log readers).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from typing import IO

ENV_SECONDS = "RANKT5_PROGRESS_SECONDS"
LOG_SECONDS = 10.0  # off a terminal: at most one line this often
TTY_SECONDS = 0.2  # on a terminal: redraws at most this often


def format_duration(seconds: float) -> str:
    """`8.0s`, `2m05s`, `1h02m03s`."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def parse_duration(text: str) -> float:
    """The seconds of a `format_duration` string."""
    match = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:([\d.]+)s)?", text)
    if not match or not text:
        raise ValueError(f"not a duration: {text!r}")
    hours, minutes, secs = (float(g) if g else 0.0 for g in match.groups())
    return hours * 3600 + minutes * 60 + secs


_LINE = re.compile(
    r"^(?P<desc>.+?): (?P<done>[\d,]+)/(?P<total>[\d,]+) (?P<unit>\S+) \((?P<percent>\d+)%\)"
    r"(?:, (?P<rate>[\d,.]+) \S+/s)?"
    r"(?:, elapsed (?P<elapsed>[\dhms.]+))?(?:, ETA (?P<eta>[\dhms.]+))?"
    r"(?:, done in (?P<took>[\dhms.]+))?(?P<rest>.*)$"
)


def parse_line(line: str) -> dict | None:
    """A progress line's fields (`done`, `total`, `rate`, `elapsed`, `eta`, `took`: numbers or
    None; `desc`, `unit`, `rest`), or None for another line."""
    match = _LINE.match(line)
    if not match:
        return None
    fields: dict = match.groupdict()
    for key in ("done", "total"):
        fields[key] = int(fields[key].replace(",", ""))
    fields["percent"] = int(fields["percent"])
    fields["rate"] = float(fields["rate"].replace(",", "")) if fields["rate"] else None
    for key in ("elapsed", "eta", "took"):
        fields[key] = parse_duration(fields[key]) if fields[key] else None
    return fields


def _number(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if value >= 1 else f"{value:.2g}"


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or not a real stream
        return False


class Progress:
    """A progress line of `total` units (see the module doc).

    Args:
      total: the units of the whole job (this process's part of it).
      desc: what is running (`rerank`, `index`, ...), the line's first word.
      unit: the unit counted, plural (`pairs`, `passages`, `queries`).
      initial: units already done (a resumed job); they count towards the total but not the rate.
      stream: where lines go (default: `sys.stderr` at the time of the call).
      clock: seconds (`time.monotonic`; tests give a fake one).
      interval: seconds between lines (default: `TTY_SECONDS` on a terminal, else
        `$RANKT5_PROGRESS_SECONDS` or `LOG_SECONDS`).
      terminal: draw in place (default: whether `stream` is a terminal).
    """

    def __init__(
        self,
        total: int,
        desc: str,
        unit: str,
        *,
        initial: int = 0,
        stream: IO[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        interval: float | None = None,
        terminal: bool | None = None,
    ):
        self.total, self.desc, self.unit = int(total), desc, unit
        self.done = self.initial = int(initial)
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        self.terminal = _is_terminal(self.stream) if terminal is None else terminal
        if interval is None:
            interval = TTY_SECONDS if self.terminal else _env_seconds()
        self.interval = interval
        self.started = clock()
        self.first: tuple[float, int] | None = None  # (time, done) of the first update
        self.paused = 0.0  # seconds since the first update not spent on the work (compiling)
        self.last_shown = -math.inf  # when a line was last written
        self.shown_done: int | None = None  # the count the last line showed
        self.finished = False
        self.width = 0  # of the terminal line drawn last
        self._show(self.line())  # the total, before the first (maybe slow) piece

    # -- the numbers ---------------------------------------------------------------------------
    def elapsed(self) -> float:
        return self.clock() - self.started

    def rate(self) -> float | None:
        """Units per second since the first update (None before a second one)."""
        if self.first is None:
            return None
        since, at = self.first
        seconds = self.clock() - since - self.paused
        if self.done <= at or seconds <= 0:
            return None
        return (self.done - at) / seconds

    def eta(self) -> float | None:
        """Seconds left at the current rate (None without a rate)."""
        rate = self.rate()
        if rate is None:
            return None
        return max(self.total - self.done, 0) / rate

    def line(self) -> str:
        percent = 100 * self.done // self.total if self.total else 100
        text = f"{self.desc}: {self.done:,}/{self.total:,} {self.unit} ({percent}%)"
        rate = self.rate()
        if rate is None and self.done >= self.total and self.elapsed() > 0:
            rate = (self.done - self.initial) / self.elapsed()  # one update: the whole job's
        if rate is not None and rate > 0:
            text += f", {_number(rate)} {self.unit}/s"
        if self.done >= self.total:
            return text + f", done in {format_duration(self.elapsed())}"
        text += f", elapsed {format_duration(self.elapsed())}"
        eta = self.eta()
        if eta is not None:
            text += f", ETA {format_duration(eta)}"
        if self.initial and self.first is None:
            text += f" (resumed at {self.initial:,})"
        return text

    # -- updates -------------------------------------------------------------------------------
    def update(self, count: int, paused: float = 0.0) -> None:
        """`count` more units are done; `paused`: seconds since the last update that did no
        such work (compiling a new shape), left out of the rate."""
        if count <= 0 or self.finished:
            return
        self.done += int(count)
        now = self.clock()
        if self.first is not None:  # (before the first update, nothing is in the rate)
            self.paused += max(float(paused), 0.0)
        if self.done >= self.total:
            self._finish()
        elif self.first is None:
            self.first = (now, self.done)
            self._show(self.line(), now)  # the first update: the job is moving
        elif now - self.last_shown >= self.interval:
            self._show(self.line(), now)

    def _finish(self) -> None:
        self.finished = True
        if self.shown_done != self.done or self.terminal:
            self._show(self.line())
        if self.terminal:
            self.stream.write("\n")
            self.stream.flush()

    def close(self) -> None:
        """Ends the bar: at its total the last line (once); short of it, where it stopped."""
        if self.finished:
            return
        if self.done >= self.total:
            self._finish()
            return
        self.finished = True
        self._show(self.line() + ", stopped")
        if self.terminal:
            self.stream.write("\n")
            self.stream.flush()

    def _show(self, text: str, now: float | None = None) -> None:
        self.last_shown = self.clock() if now is None else now
        self.shown_done = self.done
        if self.terminal:
            pad = max(self.width - len(text), 0)
            self.width = len(text)
            self.stream.write("\r" + text + " " * pad)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _env_seconds() -> float:
    value = os.environ.get(ENV_SECONDS)
    if value is None or value == "":
        return LOG_SECONDS
    try:
        seconds = float(value)
    except ValueError:
        return LOG_SECONDS
    return max(seconds, 0.0)


def progress(total: int, desc: str, unit: str, enabled: bool = True, **kwargs) -> Progress | None:
    """A `Progress`, or None where `enabled` is false (callers test `bar is not None`)."""
    return Progress(total, desc, unit, **kwargs) if enabled else None


@contextlib.contextmanager
def closing(bar: Progress | None) -> Iterator[Progress | None]:
    """Closes `bar` (if any) however the block ends."""
    try:
        yield bar
    finally:
        if bar is not None:
            bar.close()
