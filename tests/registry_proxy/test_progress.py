"""The progress line of the command-line tools: the bar, the time left, the redraws."""

from __future__ import annotations

import io
import os
import pty

from registry_proxy.progress import CLEAR, TransferProgress, bar, eta, on_terminal


def test_bar_fills_with_the_share_done() -> None:
    assert bar(0, 100, 10) == "[..........]"
    assert bar(55, 100, 10) == "[#####.....]"
    assert bar(100, 100, 10) == "[##########]"
    assert bar(150, 100, 10) == "[##########]"  # never past full
    assert bar(0, 0, 4) == "[####]"  # nothing to do is done


def test_eta_reads_as_seconds_minutes_or_hours() -> None:
    assert eta(0, 10.0) == "-" and eta(100, 0.0) == "-"
    assert eta(420, 10.0) == "42s"
    assert eta(1850, 10.0) == "3m05s"
    assert eta(37_200, 10.0) == "1h02m"


def test_transfer_progress_redraws_in_place_at_most_ten_times_a_second() -> None:
    now = [0.0]
    out = io.StringIO()
    progress = TransferProgress("export", out, clock=lambda: now[0])
    progress.expect(4_000_000)
    for _ in range(10):  # ten pieces within the same instant: one redraw
        now[0] += 0.001
        progress.advance(100_000, "sha256:0123456789abcdef0123")
    assert out.getvalue().count("\r") == 1
    now[0] = 1.0
    progress.advance(1_000_000)
    line = out.getvalue().split("\r")[-1]
    assert line.startswith("export [" + "#" * 12 + "." * 12 + "] 2.0/4.0 MB, 2.0 MB/s, ETA 1s")
    assert line.endswith("sha256:0123456789ab" + CLEAR)  # the piece under way, clipped
    progress.complete()  # what was skipped counts as done
    progress.close()
    last = out.getvalue().split("\r")[-1]
    assert last == f"export [{'#' * 24}] 4.0/4.0 MB, 4.0 MB/s, ETA -{CLEAR}\n"


def test_a_progress_line_only_on_a_terminal() -> None:
    assert on_terminal("x", io.StringIO()) is None
    master, slave = pty.openpty()
    try:
        with os.fdopen(slave, "w") as tty:
            assert isinstance(on_terminal("x", tty), TransferProgress)
    finally:
        os.close(master)
