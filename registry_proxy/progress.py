"""The one live progress line of the command-line tools: a bar, bytes done of the total,
the rate and the time left, redrawn in place on a terminal.

``satellite sync --now``, ``satellite bundle import`` and ``groundcontrol bundle export``
draw with it. ``bar`` and ``eta`` are pure; ``TransferProgress`` keeps the counts and
draws at most ten times a second. ``ProgressFeed`` keeps the same counts for another
process to draw (a running daemon's import, drawn by the CLI that asked for it);
``Progress`` is what both offer to the code that moves the bytes."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Protocol, TextIO

WIDTH = 24
REDRAW = 0.1  # seconds between two redraws of the line
CLEAR = "\x1b[K"  # the rest of a longer line drawn before goes


def bar(done: int, total: int, width: int = WIDTH) -> str:
    """``[#####.....]``: the share of ``total`` that ``done`` is (full once done)."""
    filled = width if total <= 0 or done >= total else max(0, width * done // total)
    return f"[{'#' * filled}{'.' * (width - filled)}]"


def eta(remaining: int, rate: float) -> str:
    """The time ``remaining`` bytes take at ``rate`` bytes/s: ``42s``, ``3m05s``, ``1h02m``;
    ``-`` when it cannot be told."""
    if rate <= 0 or remaining <= 0:
        return "-"
    seconds = int(remaining / rate + 0.5)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress(Protocol):
    """Counts of bytes moved toward a total, as the code that moves them reports them."""

    def expect(self, total: int) -> None: ...

    def advance(self, n: int, what: str = "") -> None: ...

    def complete(self) -> None: ...


class ProgressFeed:
    """The counts alone, read by whoever draws them elsewhere (``snapshot``)."""

    def __init__(self) -> None:
        self.total = 0
        self.done = 0
        self.what = ""

    def expect(self, total: int) -> None:
        self.total = max(self.total, total)

    def advance(self, n: int, what: str = "") -> None:
        self.done += n
        self.what = what or self.what

    def complete(self) -> None:
        """All of it is done (what was skipped or not counted byte by byte included)."""
        self.advance(max(0, self.total - self.done))

    def snapshot(self) -> dict[str, int | str]:
        return {"done": self.done, "total": self.total, "what": self.what}


class TransferProgress(ProgressFeed):
    """Bytes moved toward a total, drawn: the feed's counts, and ``advance`` redraws the
    line (at most every ``REDRAW`` s); ``close`` draws the last line and ends it."""

    def __init__(
        self, label: str, out: TextIO, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.label = label
        self.out = out
        self.clock = clock
        self.started = clock()
        self._drawn = float("-inf")  # the first bytes draw the line

    def advance(self, n: int, what: str = "") -> None:
        super().advance(n, what)
        now = self.clock()
        if now - self._drawn >= REDRAW:
            self._drawn = now
            self.out.write("\r" + self.line(now) + CLEAR)
            self.out.flush()

    def follow(self, done: int, total: int, what: str = "") -> None:
        """Draws the counts another process reported (a ``ProgressFeed``'s snapshot)."""
        self.expect(total)
        self.advance(max(0, done - self.done), what)

    def rate(self, now: float) -> float:
        elapsed = now - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def line(self, now: float) -> str:
        rate = self.rate(now)
        total = max(self.total, self.done)
        return (
            f"{self.label} {bar(self.done, total)} {self.done / 1e6:.1f}/{total / 1e6:.1f} MB,"
            f" {rate / 1e6:.1f} MB/s, ETA {eta(total - self.done, rate)}"
            f"{f' {self.what[:19]}' if self.what else ''}"
        )

    def close(self) -> None:
        self.what = ""
        self.out.write("\r" + self.line(self.clock()) + CLEAR + "\n")
        self.out.flush()


def on_terminal(label: str, out: TextIO | None = None) -> TransferProgress | None:
    """A progress line on ``out`` (stderr) when it is a terminal; None otherwise, so that
    logs and pipes get only the command's result."""
    out = out or sys.stderr
    return TransferProgress(label, out) if out.isatty() else None
