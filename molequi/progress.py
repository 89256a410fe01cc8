"""Progress for long work: durations, ETAs, and plain progress lines for logs.

A terminal gets tqdm's bar; a log file (``nohup``, a batch job, ``| tee``) gets tqdm's
carriage-return updates as one unreadable line, so :class:`ProgressLines` writes a whole
line at most every ``every_s`` seconds there instead.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import TextIO


def format_duration(seconds: float | None) -> str:
    """``45s``, ``3m20s``, ``2h05m``, ``3d04h``; ``?`` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def remaining_seconds(done: float, total: float | None, elapsed_s: float) -> float | None:
    """Seconds left at the mean rate so far (None before any progress or without a total)."""
    if total is None or done <= 0 or elapsed_s <= 0:
        return None
    return max(0.0, (total - done) * elapsed_s / done)


def is_terminal(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (default stderr) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class ProgressLines:
    """Whole progress lines for logs that are not a terminal, at most one every ``every_s`` s.

    ``update(done)`` prints ``label: done/total unit (p %), elapsed, ETA, rate`` once the
    interval has passed; ``close()`` prints the final line. ``initial`` counts work done by an
    earlier session (a resumed run): it is shown but not used for the rate.
    """

    def __init__(self, label: str, total: float | None = None, unit: str = "", every_s: float = 30.0,
                 stream: TextIO | None = None, initial: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.label, self.total, self.unit, self.every_s = label, total, unit, every_s
        self.stream = sys.stderr if stream is None else stream
        self.initial = self.done = initial
        self.clock = clock
        self.started = self.last = clock()
        self.extra = ""

    def update(self, done: float, extra: str = "") -> bool:
        """Record progress (absolute count); print a line if ``every_s`` passed. Returns whether it printed."""
        self.done, self.extra = done, extra or self.extra
        if self.clock() - self.last < self.every_s:
            return False
        self.write()
        return True

    def line(self) -> str:
        elapsed = self.clock() - self.started
        unit = f" {self.unit}" if self.unit else ""
        if self.total:
            text = f"{self.label}: {_count(self.done)}/{_count(self.total)}{unit} ({100.0 * self.done / self.total:.1f} %)"
        else:
            text = f"{self.label}: {_count(self.done)}{unit}"
        text += f", elapsed {format_duration(elapsed)}"
        fresh = self.done - self.initial
        if self.total:
            text += f", ETA {format_duration(remaining_seconds(fresh, self.total - self.initial, elapsed))}"
        if fresh > 0 and elapsed > 0:
            text += f", {fresh / elapsed:.3g}{unit}/s"
        return text + (f", {self.extra}" if self.extra else "")

    def write(self) -> None:
        self.last = self.clock()
        print(self.line(), file=self.stream, flush=True)

    def close(self) -> None:
        self.write()


def _count(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.4g}"
