"""Cache fills: one upstream transfer per blob, however many clients ask at once.

A fill downloads a blob into a staging file while hashing it, resumes with ``Range``
when the transfer is cut (continuing the same running hash), and publishes the blob
only when size and digest match. It runs as its own task, detached from the request
that started it, so a client that goes away does not abort it; an idle timeout bounds
it instead.

Clients stream from the staging file as bytes arrive (``FillReader``). The last byte
is held back until the fill has been verified: a client can never receive a complete
response for content that turns out to be corrupt. On failure every reader's stream
raises, which aborts its HTTP response mid-body.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from registry_proxy import filelock
from registry_proxy.bandwidth import Bandwidth
from registry_proxy.digest import Digest
from registry_proxy.durable import preallocate, write_all
from registry_proxy.errors import RegistryError
from registry_proxy.metrics import Metrics
from registry_proxy.responses import read_cached
from registry_proxy.store import ContentStore, disk_error
from registry_proxy.upstream import (
    UpstreamClient,
    UpstreamUnavailable,
    as_registry_error,
)

log = logging.getLogger("satellite.fill")
READ_CHUNK = 1024 * 1024


class FillFailed(Exception):
    """The fill a reader was following failed; its response must be aborted."""


class BlobFill:
    def __init__(
        self,
        store: ContentStore,
        client: UpstreamClient,
        upstream_repo: str,
        repo: str,
        digest: Digest,
        metrics: Metrics,
        *,
        idle_timeout: float = 60.0,
        max_resumes: int = 5,
        on_result: Callable[[BlobFill, BaseException | None], None] | None = None,
        bandwidth: Bandwidth | None = None,
        background: bool = False,
    ) -> None:
        self.store = store
        self.client = client
        self.upstream_repo = upstream_repo
        self.repos = [repo]
        self.digest = digest
        self.metrics = metrics
        self.idle_timeout = idle_timeout
        self.max_resumes = max_resumes
        self.on_result = on_result
        self.bandwidth = bandwidth or Bandwidth()
        self.background = background  # replication's: yields to client transfers
        # named by digest, and kept when the link (or the process) goes away mid-way:
        # the next fill of the digest resumes from its bytes with Range
        self.path: Path = store.layout.partial_fill(digest)
        self.size: int | None = None
        self.written = 0
        self.done = False  # verified and published in the store
        self.verified = False  # the bytes matched the digest (readers may finish)
        self.error: RegistryError | None = None
        self.started = asyncio.Event()
        self._progress = asyncio.Condition()
        self.task: asyncio.Task[None] | None = None

    @property
    def finished(self) -> bool:
        return self.done or self.error is not None

    def start(self) -> None:
        if not self.background:
            self.bandwidth.client_started()
        self.task = asyncio.get_running_loop().create_task(self._run(), name=f"fill {self.digest}")

    def prioritize(self) -> None:
        """A client joined this background fill: it now goes at a client's priority."""
        if self.background and not self.finished:
            self.background = False
            self.bandwidth.client_started()

    async def _notify(self) -> None:
        async with self._progress:
            self._progress.notify_all()

    async def _run(self) -> None:
        failure: BaseException | None = None
        lock = filelock.FileLock(self.store.layout.fill_lock(self.digest))
        try:
            if lock.try_acquire():
                if not await self._published():  # by a process that held the lock before
                    await self._lead()
            else:
                await self._follow(lock)
        except BaseException as exc:  # every failure ends the fill, and is recorded
            failure = exc
            self.error = _fill_error(exc, self.digest)
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            lock.release(remove=True)  # whoever comes next locks a file of its own
            if not self.background:
                self.bandwidth.client_finished()
            self.started.set()
            await self._notify()
            if self.on_result is not None:
                self.on_result(self, failure)

    async def _published(self) -> bool:
        """True (and linked into the fill's repositories) when the store has the blob."""
        for repo in self.repos:
            if not await self.store.mount_blob(repo, self.digest, None):
                return False
        self.verified = self.done = True
        return True

    async def _follow(self, lock: filelock.FileLock) -> None:
        """Another process is fetching the blob (it holds the lock): its staging file is
        followed as it grows, and the last byte released once the blob is published."""
        size_path = self.store.layout.fill_size(self.digest)
        published = self.store.layout.blob(self.digest)
        while not lock.try_acquire():
            if self.size is None:
                self.size = await asyncio.to_thread(_read_size, size_path)
                if self.size is not None:
                    self.started.set()
            if self.size is not None:
                with contextlib.suppress(FileNotFoundError):
                    self.written = min(self.size, os.stat(self.path).st_size)
                # renamed into place only once verified
                self.verified = self.verified or published.exists()
                await self._notify()
            await asyncio.sleep(filelock.POLL)
        # the fetching process let go: it published the blob, failed, or died
        if not await self._published():
            raise RegistryError(
                "UNAVAILABLE",
                f"the upstream fetch of {self.digest} failed in another worker; nothing cached",
                status=502,
            )

    async def _lead(self) -> None:
        fd = -1
        size_path = self.store.layout.fill_size(self.digest)
        try:
            # on the loop: creating a file is quick, and a cold blob's first byte waits
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            hasher = self.digest.hasher()
            if os.fstat(fd).st_size:  # what a cut transfer left, to resume from
                self.written = await asyncio.to_thread(_rehash, fd, hasher)
            if self.written:
                self.metrics.resumes.labels(self.client.name).inc()
                log.info(
                    "upstream %s: resuming %s from the %d bytes received before",
                    self.client.name,
                    self.digest,
                    self.written,
                )
            resumes = 0
            staged = Digest(self.digest.algorithm, hasher.copy().hexdigest())
            whole = self.written > 0 and staged == self.digest
            if whole:
                # every byte arrived before the process stopped (while it paid the cap
                # for them, or published): nothing is left to fetch
                self.size = self.written
                _write_size(size_path, self.size)
                self.started.set()
            while not whole:
                try:
                    await self._transfer(fd, hasher)
                    break
                except UpstreamUnavailable:
                    # nothing received yet: the client already retried, the link is down
                    if self.written == 0 or resumes >= self.max_resumes:
                        raise
                    resumes += 1
                    self.metrics.resumes.labels(self.client.name).inc()
                    log.warning(
                        "upstream %s: transfer of %s cut at %d bytes, resuming",
                        self.client.name,
                        self.digest,
                        self.written,
                    )
                    await asyncio.sleep(min(0.1 * 2**resumes, 2.0))
            actual = Digest(self.digest.algorithm, hasher.hexdigest())
            if (self.size is not None and self.written != self.size) or actual != self.digest:
                self.metrics.digest_mismatches.labels(self.client.name).inc()
                log.error(
                    "upstream %s served bad content for %s: got %s, %d bytes (expected %s)",
                    self.client.name,
                    self.digest,
                    actual,
                    self.written,
                    self.size,
                )
                raise RegistryError(
                    "UNAVAILABLE",
                    f"upstream content for {self.digest} failed verification; nothing cached",
                    status=502,
                )
            # verified: the clients may have their last byte now; making the cache
            # durable (adopt_blob: fsync, publish, database) need not hold their pulls up
            self.verified = True
            await self._notify()
            await self.store.adopt_blob(self.repos, self.path, self.digest, (actual, self.written))
            self.done = True
        except BaseException as exc:
            # a cut link or a shutdown keeps what came, to resume from; anything else
            # (bad content, a refusal) abandons it
            if not (isinstance(exc, UpstreamUnavailable | asyncio.CancelledError) and self.written):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
            raise
        finally:
            if fd >= 0:
                os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(size_path)

    async def _transfer(self, fd: int, hasher: hashlib._Hash) -> None:
        async with self.client.open_blob(
            self.upstream_repo, self.digest, offset=self.written
        ) as blob:
            skip = self.written - blob.offset  # > 0 when the server ignored our Range
            if self.size is None:
                self.size = blob.size
            if self.size is not None:
                _write_size(self.store.layout.fill_size(self.digest), self.size)
                # a blob that cannot fit fails here, before a client got a byte
                preallocate(fd, self.written, self.size - self.written)
            self.started.set()
            chunks = blob.pieces().__aiter__()  # each valid until the next is asked for
            while True:
                try:
                    async with asyncio.timeout(self.idle_timeout):
                        chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    raise UpstreamUnavailable(
                        f"no data from upstream for {self.idle_timeout:.0f}s"
                    ) from None
                if skip > 0:
                    dropped = min(skip, len(chunk))
                    chunk, skip = chunk[dropped:], skip - dropped
                    if not chunk:
                        continue
                # inline: a page-cache write and a hash of 1 MiB cost less than the
                # round trip to a worker thread (measured: a third of the fill's CPU)
                _append(fd, chunk, hasher)
                self.written += len(chunk)
                self.metrics.upstream_bytes.labels(self.client.name).inc(len(chunk))
                await self.bandwidth.take(len(chunk), background=lambda: self.background)
                if self.size is not None and self.written > self.size:
                    raise RegistryError(
                        "UNAVAILABLE", f"upstream sent more than {self.size} bytes", status=502
                    )
                await self._notify()

    def readable(self, end: int) -> int:
        """How far readers may go: all of it once verified, else all but the last byte."""
        if self.verified:
            return end
        if self.size is None:
            return 0
        return min(end, self.written, self.size - 1)

    def reader(self) -> FillReader:
        """A reader positioned on the staging file; open it before the fill can finish."""
        return FillReader(self, os.open(self.path, os.O_RDONLY))

    async def wait_beyond(self, offset: int, end: int) -> None:
        async with self._progress:
            await self._progress.wait_for(lambda: self.finished or self.readable(end) > offset)

    async def wait(self) -> None:
        async with self._progress:
            await self._progress.wait_for(lambda: self.finished)


class FillReader:
    def __init__(self, fill: BlobFill, fd: int) -> None:
        self.fill = fill
        self.fd = fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    async def spans(self, start: int, end: int) -> AsyncIterator[tuple[int, int]]:
        """(offset, count) pieces of [start, end) as the fill makes them readable; the
        final byte only once verified. Raises FillFailed when the fill fails."""
        fill = self.fill
        offset = start
        while offset < end:
            if fill.error is not None and not fill.verified:
                raise FillFailed(fill.error.message)
            limit = fill.readable(end)
            if offset >= limit:
                await fill.wait_beyond(offset, end)
                continue
            yield offset, limit - offset
            offset = limit

    async def stream(self, start: int, end: int) -> AsyncIterator[bytes]:
        """The bytes of `spans`, read back from the staging file."""
        async for span_start, count in self.spans(start, end):
            offset, span_end = span_start, span_start + count
            while offset < span_end:
                chunk = await self._read(offset, min(READ_CHUNK, span_end - offset))
                offset += len(chunk)
                yield chunk

    async def _read(self, offset: int, n: int) -> bytes:
        # just written by the fill, so normally still in the page cache
        await asyncio.sleep(0)
        chunk = read_cached(self.fd, n, offset)
        if chunk is None:
            chunk = await asyncio.to_thread(os.pread, self.fd, n, offset)
        if not chunk:
            raise FillFailed("staging file shorter than reported")
        return chunk


def _rehash(fd: int, hasher: hashlib._Hash) -> int:
    """Feeds the bytes already in a staging file to ``hasher``; leaves ``fd`` at its
    end, where the transfer continues. Returns how many there were."""
    total = 0
    while chunk := os.read(fd, READ_CHUNK):
        hasher.update(chunk)
        total += len(chunk)
    return total


def _write_size(path: Path, size: int) -> None:
    """Tells the processes following this fill how big the blob is (atomically)."""
    temp = path.with_name(f"{path.name}.{os.getpid()}")
    temp.write_text(str(size))
    os.replace(temp, path)


def _read_size(path: Path) -> int | None:
    try:
        return int(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def _fill_error(exc: BaseException, digest: Digest) -> RegistryError:
    """What the clients of a failed fill are told. The upstream's failures reach the fill
    as UpstreamErrors (the client translates the network's); an OSError still standing
    is the satellite's own storage (the lock or staging file, the size file, a write, the
    blocks reserved for the blob): a full disk is said as such, not as the upstream's."""
    if isinstance(exc, OSError) and not isinstance(exc, ConnectionError | TimeoutError):
        return disk_error(exc)
    return as_registry_error(exc, "BLOB_UNKNOWN", str(digest))


def _append(fd: int, data: bytes | memoryview, hasher: hashlib._Hash) -> None:
    write_all(fd, data)
    hasher.update(data)
