"""The cross-process primitives of several serving processes, across real processes: an
advisory lock that another process holds (and loses when it dies), and the shared
generation counter of the tag caches."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from registry_proxy.filelock import FileLock, held
from registry_proxy.generation import SharedCounter

HOLDER = """
import sys
from pathlib import Path
from registry_proxy.filelock import FileLock
lock = FileLock(Path(sys.argv[1]))
assert lock.try_acquire()
print("held", flush=True)
sys.stdin.read()  # until the test closes stdin (or kills us)
"""


def _holder(path: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.parametrize("end", ["exit", "kill"])
def test_a_lock_held_by_another_process_is_free_once_it_ends(tmp_path: Path, end: str) -> None:
    path = tmp_path / "fill.lock"
    proc = _holder(path)
    lock = FileLock(path)
    try:
        assert not lock.try_acquire()
        assert not lock.try_acquire()  # asking again changes nothing
        if end == "kill":
            proc.kill()  # the kernel releases the lock of a process however it dies
        proc.communicate(timeout=30)  # without "kill": stdin closed, it exits

        async def acquire() -> None:
            await asyncio.wait_for(lock.acquire(), timeout=10)

        asyncio.run(acquire())
    finally:
        lock.release()
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)  # closes its pipes


def test_two_holders_in_one_process_exclude_each_other(tmp_path: Path) -> None:
    path = tmp_path / "budget"
    first, second = FileLock(path), FileLock(path)
    assert first.try_acquire()
    assert not second.try_acquire()
    first.release()
    assert second.try_acquire()
    second.release()

    async def one_at_a_time() -> list[str]:
        events: list[str] = []

        async def worker(name: str) -> None:
            async with held(path):
                events.append(f"{name} in")
                await asyncio.sleep(0.05)
                events.append(f"{name} out")

        await asyncio.wait_for(asyncio.gather(worker("a"), worker("b")), timeout=10)
        return events

    events = asyncio.run(one_at_a_time())
    assert events in (
        ["a in", "a out", "b in", "b out"],
        ["b in", "b out", "a in", "a out"],
    )


def test_the_generation_counter_is_shared_between_processes(tmp_path: Path) -> None:
    path = tmp_path / "generation"
    counter = SharedCounter(path)
    try:
        assert counter.value == 0
        assert counter.bump() == 1
        bump_elsewhere = (
            "import sys; from pathlib import Path; "
            "from registry_proxy.generation import SharedCounter; "
            "c = SharedCounter(Path(sys.argv[1])); print(c.value); c.bump()"
        )
        out = subprocess.run(
            [sys.executable, "-c", bump_elsewhere, str(path)],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
            cwd=Path(__file__).resolve().parents[2],
        )
        assert out.stdout.strip() == "1"  # it saw this process's bump
        assert counter.value == 2  # and this process sees its bump at once
    finally:
        counter.close()


def test_a_lock_file_its_holder_removed_is_never_held_twice(tmp_path: Path) -> None:
    """A holder may remove the lock file as it lets go: whoever waited on that file must
    then lock the file the path names now, not the removed one beside its new holder."""
    path = tmp_path / "digest.publish"
    first, waiting, newcomer = FileLock(path), FileLock(path), FileLock(path)
    try:
        assert first.try_acquire()
        assert not waiting.try_acquire()  # it has the first file open now
        first.release(remove=True)
        assert not path.exists()
        assert newcomer.try_acquire()  # a new file under the same name
        assert not waiting.try_acquire()
        newcomer.release(remove=True)
        assert waiting.try_acquire()
        assert not FileLock(path).try_acquire()
        first.release(remove=True)  # not held: removes nothing
        assert path.exists()
    finally:
        waiting.release(remove=True)
    assert not path.exists()
