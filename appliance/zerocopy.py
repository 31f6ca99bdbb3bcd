"""The ASGI zero-copy send extension for hypercorn's HTTP/1.1 path.

hypercorn copies every body byte through Python (h11 framing, the asyncio transport);
for blobs that is the difference between a fraction of nginx's throughput and parity.
The ASGI spec defines ``http.response.zerocopysend`` (a file, an offset, a count) for
exactly this; hypercorn does not implement it, so this module adds it:

- ``ZeroCopyHTTPStream`` advertises the extension in each HTTP/1.1 request's scope (HTTP/2
  streams are hypercorn's own and keep copying) and turns the message into a ``FileBody``;
- ``ZeroCopyH11Protocol`` lets h11 frame the body (Content-Length accounting, chunk
  headers) around a placeholder of the right length, and forwards the file part as a
  ``RawFile`` event;
- ``ZeroCopyTCPServer`` writes a ``RawFile`` with ``loop.sendfile`` (os.sendfile on a
  plain socket; asyncio falls back to reads for TLS), at most ``SENDFILE_MAX_CHUNK`` bytes
  per call with a turn of the event loop in between. Against a fast reader one call can
  otherwise move a whole GiB in one system call, holding every other connection up for
  its duration (nginx bounds its calls for the same reason: ``sendfile_max_chunk``, 2 MiB).
  On this machine 16 MiB pieces were as fast as unbounded calls or faster, and 2 MiB
  pieces a little slower (docs/benchmarks.md).

``install()`` puts the three in place of hypercorn's classes. It checks the hypercorn
version it was written against and does nothing on any other, so an upgrade degrades
to ordinary (copying) sends instead of breaking.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any, cast

import h11
import hypercorn.asyncio.run
import hypercorn.protocol
import hypercorn.protocol.h11
from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.events import Closed, Event, RawData
from hypercorn.protocol.events import Event as StreamEvent
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.protocol.http_stream import ASGIHTTPState, HTTPStream
from hypercorn.typing import AppWrapper

log = logging.getLogger("satellite.zerocopy")

EXTENSION = "http.response.zerocopysend"
SUPPORTED = ("0.17.", "0.18.")
SENDFILE_MAX_CHUNK = 16 * 1024 * 1024  # bytes per sendfile call


@dataclass(frozen=True)
class FileBody(StreamEvent):
    file: Any  # an object with fileno()
    offset: int
    count: int


@dataclass(frozen=True)
class RawFile(Event):
    file: Any
    offset: int
    count: int


class _Span:
    """Stands in for `count` body bytes while h11 frames the message."""

    def __init__(self, count: int) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count


class _Advertise:
    """Wraps the app hypercorn calls so that each HTTP/1.1 scope offers the extension."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, *args: Any) -> Any:
        if scope["type"] == "http" and scope.get("http_version") in ("1.0", "1.1"):
            scope["extensions"][EXTENSION] = {}
        return await self.app(scope, *args)


class ZeroCopyHTTPStream(HTTPStream):
    def __init__(self, app: Any, *args: Any) -> None:
        super().__init__(cast(AppWrapper, _Advertise(app)), *args)

    async def app_send(self, message: Any) -> None:
        if message is None or message.get("type") != EXTENSION:
            await super().app_send(message)
            return
        if self.state != ASGIHTTPState.RESPONSE:
            raise RuntimeError(f"{EXTENSION} before http.response.start")
        file = message["file"]
        offset = int(message.get("offset", file.tell()))
        count = message.get("count")
        if count is None:
            count = os.fstat(file.fileno()).st_size - offset
        if self.scope["method"] != "HEAD" and count > 0:
            await self.send(
                FileBody(stream_id=self.stream_id, file=file, offset=offset, count=int(count))
            )
        if not message.get("more_body", False):
            await self._send_closed()


class ZeroCopyH11Protocol(H11Protocol):
    async def stream_send(self, event: StreamEvent) -> None:
        if not isinstance(event, FileBody):
            await super().stream_send(event)
            return
        connection = cast(h11.Connection, self.connection)  # HTTP streams only, never WS
        span = cast(bytes, _Span(event.count))  # h11 only takes its len() and passes it on
        try:
            pieces = connection.send_with_data_passthrough(h11.Data(data=span))
        except h11.LocalProtocolError:
            if connection.their_state != h11.ERROR:
                raise
            return
        for piece in pieces or ():
            if isinstance(piece, _Span):
                await self.send(RawFile(file=event.file, offset=event.offset, count=event.count))
            else:
                await self._send_raw(bytes(piece))

    async def _send_raw(self, data: bytes) -> None:
        await self.send(RawData(data=data))


class ZeroCopyTCPServer(TCPServer):
    async def protocol_send(self, event: Event) -> None:
        if not isinstance(event, RawFile):
            await super().protocol_send(event)
            return
        async with self.send_lock:
            try:
                await self.writer.drain()
                offset, end = event.offset, event.offset + event.count
                while offset < end:
                    count = min(SENDFILE_MAX_CHUNK, end - offset)
                    await self.loop.sendfile(self.writer.transport, event.file, offset, count)
                    offset += count
                    if offset < end:
                        await asyncio.sleep(0)  # the other connections' turn
            except (ConnectionError, RuntimeError):
                await self.protocol.handle(Closed())


def install() -> bool:
    """Makes hypercorn's HTTP/1.1 path offer zero-copy sends; True when installed."""
    installed = version("hypercorn")
    if not installed.startswith(SUPPORTED):
        log.warning("hypercorn %s is not one zero-copy sends were written for", installed)
        return False
    # the names hypercorn looks its classes up by when it accepts a connection
    setattr(hypercorn.asyncio.run, "TCPServer", ZeroCopyTCPServer)  # noqa: B010
    setattr(hypercorn.protocol, "H11Protocol", ZeroCopyH11Protocol)  # noqa: B010
    setattr(hypercorn.protocol.h11, "HTTPStream", ZeroCopyHTTPStream)  # noqa: B010
    return True
