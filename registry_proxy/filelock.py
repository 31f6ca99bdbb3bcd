"""Advisory locks (``flock``) on files in the data dir, for what must happen once among
the processes serving one store: a blob's upstream fetch, a cache-budget pass.

A lock belongs to the open file, so two holders in one process exclude each other too,
and the kernel releases it when its holder dies, however it dies. Its holder may remove
the lock file (``release(remove=True)``): a process that was waiting on the removed file
gets it, sees that the path no longer names it, and takes the lock on the file the path
names now, so two holders never hold two files of one name.
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
        self.held = False

    def try_acquire(self) -> bool:
        """Takes the lock if it is free (or held here already); False when another
        holder has it."""
        while not self.held:
            if self.fd < 0:
                self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            if self._names_ours():
                self.held = True
            else:
                self.release()  # its holder removed it: the lock is the file there now
        return True

    def _names_ours(self) -> bool:
        try:
            named = os.stat(self.path)
        except FileNotFoundError:
            return False
        ours = os.fstat(self.fd)
        return (named.st_dev, named.st_ino) == (ours.st_dev, ours.st_ino)

    async def acquire(self) -> None:
        # flock has no awaitable form; a thread blocked in it could not be cancelled
        while not self.try_acquire():  # noqa: ASYNC110
            await asyncio.sleep(POLL)

    def release(self, *, remove: bool = False) -> None:
        """Lets go; with ``remove`` (and the lock held) the lock file goes too."""
        if self.fd >= 0:
            if remove and self.held:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
            os.close(self.fd)  # closing the file releases its lock
            self.fd = -1
        self.held = False


@contextlib.asynccontextmanager
async def held(path: Path) -> AsyncIterator[None]:
    lock = FileLock(path)
    try:
        await lock.acquire()
        yield
    finally:
        lock.release()
