"""Advisory locks (``flock``) on files in the data dir, for what must happen once among
the processes serving one store: a blob's upstream fetch, a cache-budget pass.

A lock belongs to the open file, so two holders in one process exclude each other too,
and the kernel releases it when its holder dies, however it dies. A lock file is removed
only once what it guards needs no guard any more (a blob published): removed any
earlier, a second holder could lock a new file of the same name while the first holds
the old one.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import AsyncIterator
from pathlib import Path

POLL = 0.02  # seconds between attempts: no thread is left blocked in flock on a closed fd


class FileLock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = -1

    def try_acquire(self) -> bool:
        """Takes the lock if it is free; False when another holder has it."""
        if self.fd < 0:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    async def acquire(self) -> None:
        # flock has no awaitable form; a thread blocked in it could not be cancelled
        while not self.try_acquire():  # noqa: ASYNC110
            await asyncio.sleep(POLL)

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the file releases its lock
            self.fd = -1


@contextlib.asynccontextmanager
async def held(path: Path) -> AsyncIterator[None]:
    lock = FileLock(path)
    try:
        await lock.acquire()
        yield
    finally:
        lock.release()
