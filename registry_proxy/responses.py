"""Responses the registry needs beyond Starlette's: a blob streamed from an open fd."""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Protocol

import anyio
import anyio.lowlevel
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from registry_proxy.errors import RegistryError
from registry_proxy.numbers import parse_uint

# 1 MiB reads: with Starlette's default 64 KiB the per-chunk overhead of the event
# loop and the worker thread dominates and throughput falls to a fifth of sendfile.
# Each stream holds about one chunk in memory, so with many concurrent streams the
# chunk shrinks to keep the total near READ_BUDGET (never below MIN_CHUNK).
CHUNK = 1024 * 1024
MIN_CHUNK = 256 * 1024
READ_BUDGET = 32 * 1024 * 1024
_active_streams = 0


def chunk_size() -> int:
    share = READ_BUDGET // max(_active_streams, 1)
    return max(MIN_CHUNK, min(CHUNK, share))


_RANGE = re.compile(r"bytes=([0-9]*)-([0-9]*)")


# the ASGI zero-copy send extension: servers that offer it (see appliance/zerocopy.py)
# send the blob with sendfile(2); elsewhere the bytes are read and sent in chunks
ZERO_COPY = "http.response.zerocopysend"
_NOWAIT = getattr(os, "RWF_NOWAIT", None)


def read_cached(fd: int, n: int, offset: int) -> bytes | None:
    """Up to `n` bytes at `offset` if they are in the page cache, else None.

    preadv2(RWF_NOWAIT) returns at once with what the page cache holds, so the event
    loop never waits on the disk; a worker thread (a costly hop: measured at a quarter
    of a stream's CPU) is needed only for what is not cached.
    """
    if _NOWAIT is None:
        return None
    buf = bytearray(n)
    try:
        got = os.preadv(fd, [buf], offset, _NOWAIT)
    except OSError:
        # EAGAIN: not cached; EOPNOTSUPP: a filesystem without RWF_NOWAIT
        return None
    if got == 0 and n > 0:
        return None  # nothing cached here (or end of file: the thread read will say)
    del buf[got:]
    return bytes(buf)


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """A single byte range as [start, end); None to serve the whole blob.

    Other units and multi-range requests are ignored (RFC 9110 allows that); a single
    byte range that is malformed (numbers that are not ASCII digits, or too long to be
    an offset) or cannot be satisfied raises RANGE_INVALID (416), as distribution does.
    """
    if not header:
        return None
    spec = header.strip()
    if not spec.startswith("bytes=") or "," in spec:
        return None
    match = _RANGE.fullmatch(spec)
    if match is None:
        raise _unsatisfiable(size)
    raw_first, raw_last = match.groups()
    first = parse_uint(raw_first) if raw_first else None
    last = parse_uint(raw_last) if raw_last else None
    if (raw_first and first is None) or (raw_last and last is None):
        raise _unsatisfiable(size)  # a number past int64: no blob is that large
    if first is None:  # a suffix: the last `last` bytes ("bytes=-" and "bytes=-0": none)
        if not last:
            raise _unsatisfiable(size)
        return max(size - last, 0), size
    start = first
    end = size if last is None else min(last + 1, size)
    if start >= size or start >= end:
        raise _unsatisfiable(size)
    return start, end


def _unsatisfiable(size: int) -> RegistryError:
    return RegistryError(
        "RANGE_INVALID",
        "requested range not satisfiable",
        headers={"Content-Range": f"bytes */{size}"},
    )


class BlobResponse(Response):
    """Streams [start, end) of an open file descriptor, then closes it.

    The fd was opened before the response started, so eviction or deletion of the blob
    file in the meantime cannot cut the transfer short.
    """

    def __init__(
        self,
        fd: int,
        size: int,
        headers: Mapping[str, str],
        byte_range: tuple[int, int] | None,
        head: bool,
        on_close: Callable[[], None] | None = None,
        on_bytes: Callable[[int], None] | None = None,
    ) -> None:
        self.fd = fd
        self.on_close = on_close
        self.on_bytes = on_bytes
        self.head = head
        self.start, self.end = byte_range if byte_range is not None else (0, size)
        self.status_code = 206 if byte_range is not None else 200
        self.background = None
        raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        raw.append((b"content-length", str(self.end - self.start).encode()))
        raw.append((b"accept-ranges", b"bytes"))
        if byte_range is not None:
            raw.append((b"content-range", f"bytes {self.start}-{self.end - 1}/{size}".encode()))
        self.raw_headers = raw
        self.zero_copy = fd >= 0  # a real file (a StreamResponse has none)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            if self.head or self.start == self.end:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            if self.zero_copy and ZERO_COPY in scope.get("extensions", {}):
                await self._send_file(send)
                return
            async with anyio.create_task_group() as tg:

                async def watch_disconnect() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    tg.cancel_scope.cancel()

                tg.start_soon(watch_disconnect)
                await self._stream(send)
                tg.cancel_scope.cancel()
        finally:
            if self.on_close is not None:
                self.on_close()
            else:
                os.close(self.fd)

    async def _send_file(self, send: Send) -> None:
        """The whole range in one message: the server moves it kernel to socket."""
        with os.fdopen(os.dup(self.fd), "rb") as file:
            await send(
                {
                    "type": ZERO_COPY,
                    "file": file,
                    "offset": self.start,
                    "count": self.end - self.start,
                    "more_body": False,
                }
            )
        if self.on_bytes is not None:
            self.on_bytes(self.end - self.start)

    async def _stream(self, send: Send) -> None:
        offset = self.start
        async for chunk in self.chunks():
            offset += len(chunk)
            if self.on_bytes is not None:
                self.on_bytes(len(chunk))
            await send(
                {"type": "http.response.body", "body": chunk, "more_body": offset < self.end}
            )
        if offset < self.end:
            raise RuntimeError("blob ended before its recorded size")

    async def chunks(self) -> AsyncIterator[bytes]:
        global _active_streams
        offset = self.start
        _active_streams += 1
        try:
            while offset < self.end:
                n = min(chunk_size(), self.end - offset)
                # yield to the loop between chunks: transports must get to run their
                # flow control, or a fast reader fills their buffers with whole blobs
                await anyio.lowlevel.checkpoint()
                chunk = read_cached(self.fd, n, offset)
                if chunk is None:  # not in the page cache: read without blocking the loop
                    chunk = await anyio.to_thread.run_sync(os.pread, self.fd, n, offset)
                if not chunk:
                    return
                offset += len(chunk)
                yield chunk
        finally:
            _active_streams -= 1


class GrowingFile(Protocol):
    """A file still being written (a cache fill): its fd, the pieces of a range as they
    become readable, and those pieces' bytes."""

    fd: int

    def spans(self, start: int, end: int) -> AsyncIterator[tuple[int, int]]: ...

    def stream(self, start: int, end: int) -> AsyncIterator[bytes]: ...


class StreamResponse(BlobResponse):
    """A blob served while it is being written: each piece goes out as soon as it is
    readable, with sendfile where the server offers zero-copy sends."""

    def __init__(
        self,
        source: GrowingFile,
        size: int,
        headers: Mapping[str, str],
        byte_range: tuple[int, int] | None,
        head: bool,
        on_close: Callable[[], None],
        on_bytes: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__(source.fd, size, headers, byte_range, head, on_close, on_bytes)
        self.source = source

    def chunks(self) -> AsyncIterator[bytes]:
        return self.source.stream(self.start, self.end)

    async def _send_file(self, send: Send) -> None:
        with os.fdopen(os.dup(self.fd), "rb") as file:
            async for offset, count in self.source.spans(self.start, self.end):
                await send(
                    {
                        "type": ZERO_COPY,
                        "file": file,
                        "offset": offset,
                        "count": count,
                        "more_body": offset + count < self.end,
                    }
                )
                if self.on_bytes is not None:
                    self.on_bytes(count)
