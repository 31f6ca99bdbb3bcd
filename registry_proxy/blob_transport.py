"""An httpx transport that receives blob bodies without passing them through h11.

httpcore reads a response 64 KiB at a time and copies every byte through h11's receive
buffer. For a blob fill on a fast link that is most of the satellite's CPU: 200 MB cost
0.21 s of CPU through httpcore against 0.03 s here (see docs/benchmarks.md).

``BlobTransport`` wraps the client's ordinary transport. Requests that carry the
``BLOB_BODY`` extension (``GET /v2/<repo>/blobs/<digest>``, and the redirects httpx
follows from it, which keep the request's extensions) go over this module's own
HTTP/1.1 connections; everything else goes to the inner transport unchanged:

- h11 writes the request and parses the response head, so both are validated as
  strictly as everywhere else;
- a body framed by ``Content-Length`` is received with ``recv_into`` into one reused
  buffer (``asyncio.BufferedProtocol``) and handed out in pieces of about ``CHUNK`` bytes,
  each a ``memoryview`` of that buffer, valid until the reader asks for the next piece
  (``UpstreamBlob.chunks`` copies them, ``UpstreamBlob.pieces`` does not); reading pauses
  while the buffer is full, so memory stays at one buffer per transfer;
- chunked and close-delimited bodies keep going through h11.

Connections are plain TCP or TLS (the client's ``SSLContext``). A connection whose body
was read to its end is kept for the next blob of the same origin (at most ``MAX_IDLE``
per origin); a GET sent on a kept connection that closes before any byte of an answer
is sent once more on a new connection, as GETs are idempotent.

Failures are raised as the httpx exceptions httpcore would raise (``ConnectError``,
``ConnectTimeout``, ``ReadTimeout``, ``ReadError``, ``RemoteProtocolError``), so the
upstream client's single translation point treats both transports alike. Timeouts come
from the request's ``timeout`` extension: ``connect`` bounds the TCP and TLS handshake,
``read`` bounds each wait for bytes (a request line and headers fit in the socket
buffer, so ``write`` has nothing to bound).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from typing import cast

import h11
import httpx

BLOB_BODY = "satellite.blob_body"  # request extension: send this GET over BlobTransport

CHUNK = 1024 * 1024  # a body piece once the transfer is going (at most RESERVE more)
RESERVE = 64 * 1024  # reading pauses when less than this is free in the buffer
FLUSH_AFTER = 0.2  # on a slow link, hand out what has arrived after this long
MAX_HEAD = 64 * 1024  # status line and headers
MAX_IDLE = 8  # kept connections per origin

Origin = tuple[str, str, int]


class _Wire(asyncio.BufferedProtocol):
    """One connection: bytes land in ``buffer[:filled]``; the reader takes them all."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._buffer = bytearray(CHUNK + RESERVE)
        self._view = memoryview(self._buffer)
        self.filled = 0
        self.transport: asyncio.Transport | None = None
        self.closed = False  # EOF, or the connection is gone
        self.error: BaseException | None = None
        self.last_data = loop.time()
        self._want = 1
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False

    # -- asyncio.BufferedProtocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.filled >= len(self._buffer):  # cannot happen: reading pauses before
            raise RuntimeError("receive buffer full while reading")
        return self._view[self.filled :]

    def buffer_updated(self, nbytes: int) -> None:
        self.filled += nbytes
        self.last_data = self._loop.time()
        if len(self._buffer) - self.filled < RESERVE and self.transport is not None:
            self.transport.pause_reading()
            self._paused = True
        if self.filled >= self._want:
            self._wake()

    def eof_received(self) -> bool:
        self.closed = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.error = exc
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # -- the reader's side

    async def receive(self, want: int, timeout: float | None) -> memoryview:  # noqa: ASYNC109
        """All the buffered bytes once there are ``want`` of them (``want`` capped at
        ``CHUNK``), or fewer at EOF, or fewer when some have waited ``FLUSH_AFTER`` s. Raises
        ``ReadTimeout`` after ``timeout`` s without a byte, ``ReadError`` when the
        connection broke. Valid until ``drop``."""
        want = max(1, min(want, CHUNK))
        while self.filled < want and not self.closed:
            self._want = want
            waiter = self._waiter = self._loop.create_future()
            wait = FLUSH_AFTER if timeout is None else min(FLUSH_AFTER, timeout)
            timer = self._loop.call_later(wait, self._wake)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
            if self.filled >= want or self.closed:
                break
            if self.filled > 0:
                break  # a slow link: let the reader have what is there
            if timeout is not None and self._loop.time() - self.last_data >= timeout:
                raise httpx.ReadTimeout(f"no data for {timeout:g}s")
        if self.error is not None and self.filled == 0:
            raise httpx.ReadError(f"{type(self.error).__name__}: {self.error}") from self.error
        return self._view[: self.filled]

    def drop(self) -> None:
        """Forget the buffered bytes (the reader has taken them) and read on."""
        self.filled = 0
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()

    def start(self) -> None:
        """A new exchange begins: its time without data counts from now."""
        self.last_data = self._loop.time()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    @property
    def reusable(self) -> bool:
        return not self.closed and self.filled == 0 and self.error is None


class BlobTransport(httpx.AsyncBaseTransport):
    """Blob GETs over lean HTTP/1.1 connections; every other request to ``inner``."""

    def __init__(self, inner: httpx.AsyncBaseTransport, ssl_context: ssl.SSLContext) -> None:
        self._inner = inner
        self._ssl = ssl_context
        self._idle: dict[Origin, list[_Wire]] = {}
        self.connections_opened = 0  # for tests and metrics: how often a handshake was paid

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if (
            request.method != "GET"
            or not request.extensions.get(BLOB_BODY)
            or url.scheme not in ("http", "https")
            or "content-length" in request.headers
            or "transfer-encoding" in request.headers
        ):
            return await self._inner.handle_async_request(request)
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        origin: Origin = (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))
        wire = self._checkout(origin)
        if wire is not None:
            try:
                return await self._exchange(origin, wire, request, timeouts)
            except _StaleConnection:
                pass  # the server had closed the kept connection: once more on a new one
        wire = await self._connect(origin, timeouts.get("connect"))
        try:
            return await self._exchange(origin, wire, request, timeouts)
        except _StaleConnection as exc:
            raise httpx.RemoteProtocolError(
                "server disconnected without sending a response"
            ) from exc

    async def aclose(self) -> None:
        for wires in self._idle.values():
            for wire in wires:
                wire.close()
        self._idle.clear()
        await self._inner.aclose()

    # -- connections

    def _checkout(self, origin: Origin) -> _Wire | None:
        idle = self._idle.get(origin)
        while idle:
            wire = idle.pop()
            if wire.reusable:
                return wire
            wire.close()  # closed by the server, or it sent something unasked
        return None

    def _release(self, origin: Origin, wire: _Wire) -> None:
        idle = self._idle.setdefault(origin, [])
        if wire.reusable and len(idle) < MAX_IDLE:
            idle.append(wire)
        else:
            wire.close()

    async def _connect(self, origin: Origin, timeout: float | None) -> _Wire:  # noqa: ASYNC109
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        tls = self._ssl if scheme == "https" else None
        try:
            async with asyncio.timeout(timeout):
                _, wire = await loop.create_connection(
                    lambda: _Wire(loop),
                    host,
                    port,
                    ssl=tls,
                    server_hostname=host if tls is not None else None,
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(
                f"connecting to {host}:{port} took over {timeout:g}s"
            ) from None
        except OSError as exc:  # refused, unreachable, TLS verification
            raise httpx.ConnectError(str(exc) or type(exc).__name__) from exc
        self.connections_opened += 1
        return wire

    # -- one exchange

    async def _exchange(
        self,
        origin: Origin,
        wire: _Wire,
        request: httpx.Request,
        timeouts: dict[str, float | None],
    ) -> httpx.Response:
        read_timeout = timeouts.get("read")
        try:
            conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
            head = h11.Request(
                method=b"GET", target=request.url.raw_path, headers=request.headers.raw
            )
            assert wire.transport is not None
            wire.start()
            wire.transport.write(conn.send(head) + conn.send(h11.EndOfMessage()))
            response = await self._read_head(conn, wire, read_timeout)
        except BaseException:
            wire.close()
            raise
        headers = response.headers
        framing = {name for name, _ in headers if name in (b"content-length", b"transfer-encoding")}
        keep_alive = response.http_version == b"1.1" and not any(
            name == b"connection" and b"close" in value.lower() for name, value in headers
        )
        leftover, _ = conn.trailing_data
        stream: httpx.AsyncByteStream
        if framing == {b"content-length"} or response.status_code in (204, 304):
            length = next((int(v) for n, v in headers if n == b"content-length"), 0)
            # a blob's bytes go to UpstreamBlob, which knows the views; error and
            # redirect bodies go to httpx's own readers, which keep every piece
            views = 200 <= response.status_code < 300
            stream = _FixedBody(
                self, origin, wire, leftover, length, read_timeout, keep_alive, views
            )
        else:
            stream = _H11Body(conn, wire, read_timeout)
        return httpx.Response(
            response.status_code,
            headers=response.headers.raw_items(),
            stream=stream,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": response.reason},
        )

    @staticmethod
    async def _read_head(
        conn: h11.Connection,
        wire: _Wire,
        timeout: float | None,  # noqa: ASYNC109
    ) -> h11.Response:
        first = True
        while True:
            event = await _next_event(conn, wire, timeout, first=first)
            first = False
            if isinstance(event, h11.InformationalResponse):
                continue
            if isinstance(event, h11.Response):
                return event
            raise httpx.RemoteProtocolError(f"unexpected {type(event).__name__} before a response")


async def _next_event(
    conn: h11.Connection,
    wire: _Wire,
    timeout: float | None,  # noqa: ASYNC109
    *,
    first: bool = False,
) -> object:
    """h11's next event, reading from the connection as h11 needs (EOF included). With
    `first`, a connection that closes before any byte arrives raises _StaleConnection."""
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise httpx.RemoteProtocolError(str(exc)) from exc
        if event is not h11.NEED_DATA:
            return event
        try:
            view = await wire.receive(1, timeout)
        except httpx.ReadError as exc:
            if first:
                raise _StaleConnection() from exc
            raise
        if first and not view:
            raise _StaleConnection()
        first = False
        conn.receive_data(bytes(view))  # b"" is EOF: h11 says what it means here
        wire.drop()


class _StaleConnection(Exception):
    """The connection closed before any byte of an answer."""


class _FixedBody(httpx.AsyncByteStream):
    """A ``Content-Length`` body, straight from the connection's buffer."""

    def __init__(
        self,
        owner: BlobTransport,
        origin: Origin,
        wire: _Wire,
        leftover: bytes,
        length: int,
        timeout: float | None,
        keep_alive: bool,
        views: bool,
    ) -> None:
        self._owner = owner
        self._origin = origin
        self._wire = wire
        self._leftover = leftover
        self._length = length
        self._timeout = timeout
        self._reuse = keep_alive and len(leftover) <= length
        self._complete = False
        self._closed = False
        self._views = views  # hand out views of the buffer instead of copies

    async def __aiter__(self) -> AsyncIterator[bytes]:
        wire = self._wire
        remaining = self._length
        if self._leftover:
            piece = self._leftover[:remaining]
            self._leftover = b""
            remaining -= len(piece)
            yield piece
        while remaining > 0:
            view = await wire.receive(remaining, self._timeout)
            if not view:
                received = self._length - remaining
                raise httpx.RemoteProtocolError(
                    "peer closed connection without sending complete message body: "
                    f"received {received} bytes, expected {self._length}"
                )
            n = min(len(view), remaining)
            if n < len(view):
                self._reuse = False  # more than the body: do not trust what follows
            remaining -= n
            if self._views:
                # the buffer itself, not a copy (a copy of every byte was a tenth of a
                # fill's CPU): the connection appends after it until drop(), which waits
                # for the next piece. httpx hands it on untouched (aiter_raw without a
                # chunk size; tests/registry_proxy/test_blob_transport.py checks)
                yield cast(bytes, view[:n])
            else:
                yield bytes(view[:n])
            wire.drop()
        self._complete = True

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._complete and self._reuse:
            self._owner._release(self._origin, self._wire)
        else:
            self._wire.close()


class _H11Body(httpx.AsyncByteStream):
    """A chunked or close-delimited body, decoded by h11; its connection is not kept."""

    def __init__(self, conn: h11.Connection, wire: _Wire, timeout: float | None) -> None:
        self._conn = conn
        self._wire = wire
        self._timeout = timeout

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            event = await _next_event(self._conn, self._wire, self._timeout)
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return
            else:
                raise httpx.RemoteProtocolError(f"unexpected {type(event).__name__} in a body")

    async def aclose(self) -> None:
        self._wire.close()
