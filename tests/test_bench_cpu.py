"""bench.servers.CpuMeter splits a phase's CPU use the way the benchmark tables say: the
server under test (its whole process tree), the benchmark's own processes (this process,
the children it waited for, the idle servers) and foreign use (every other process).

Real processes burn a known amount of CPU (each measures its own process time); the
assertions are on CPU seconds attributed, never on how long anything took."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from bench.servers import CpuMeter, quiet_window, tree_cpu_s

BURN = 0.4  # CPU seconds each burner spends
BURNER = f"""
import time
end = time.process_time() + {BURN}
while time.process_time() < end:
    pass
"""


# a server: once told to (a line on stdin), its worker process burns BURN CPU seconds
SERVER = f"""
import subprocess, sys, time
sys.stdin.readline()
subprocess.run([sys.executable, "-c", {BURNER!r}], check=True)
time.sleep(60)
"""


@contextmanager
def process(code: str) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)
        if proc.stdin is not None:
            proc.stdin.close()


def wait_for_cpu(meter_pid: int, seconds: float) -> None:
    """Waits (bounded) until the process tree of `meter_pid` has used `seconds` of CPU."""
    for _ in range(300):
        if tree_cpu_s(meter_pid) >= seconds:
            return
        time.sleep(0.05)
    raise AssertionError(f"pid {meter_pid} never used {seconds} s of CPU")


def test_server_tree_and_waited_children_are_told_apart_from_foreign_use() -> None:
    with (
        process(SERVER) as server,
        process("import time; time.sleep(60)") as idle,
        CpuMeter(server.pid, (idle.pid,)) as meter,
    ):
        assert server.stdin is not None
        server.stdin.write(b"go\n")
        server.stdin.flush()
        # the benchmark's own load generator: a child it waits for
        subprocess.run([sys.executable, "-c", BURNER], check=True, timeout=60)
        wait_for_cpu(server.pid, BURN)  # the server's worker has done its burning
    use = meter.use
    # the worker (a grandchild, reaped by the server) counts as the server's
    assert use.server_s >= BURN * 0.9
    # the waited-for load generator counts as the benchmark's, the server's worker does not
    assert BURN * 0.9 <= use.bench_s < 2 * BURN
    assert use.wall_s > 0
    assert use.as_json()["server_s"] == round(use.server_s, 3)


def test_foreign_process_shows_as_foreign_use() -> None:
    # a process this test does not wait for inside the window: the machine's, not ours
    foreign = subprocess.Popen(
        [sys.executable, "-c", BURNER.replace(str(BURN), "3.0")],
        start_new_session=True,
    )
    try:
        time.sleep(0.3)  # it is running
        use = quiet_window((), seconds=1.0)
    finally:
        foreign.kill()
        foreign.wait(timeout=10)
    # one busy process for 1 s: close to one core of foreign use (the machine may add more)
    assert use.foreign_s >= 0.5
    assert use.disturbed
    assert use.as_json()["disturbed"] is True
