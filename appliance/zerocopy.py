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
- ``ZeroCopyTCPServer`` writes a ``RawFile`` with ``os.sendfile`` on a plain socket
  (``_FileSender``; anything else, such as TLS, goes through ``loop.sendfile``, which
  falls back to reads), at most ``SENDFILE_MAX_CHUNK`` bytes per call and one call per
  turn of the event loop. Against a fast reader one call can otherwise move a whole GiB
  in one system call, holding every other connection up for its duration (nginx bounds
  its calls for the same reason: ``sendfile_max_chunk``, 2 MiB).

``ZeroCopyTCPServer`` also keeps hypercorn's keep-alive idle timeout (a connection with no
request in flight is closed after ``keep_alive_timeout`` s, and at once when the server
stops) with one timer per connection (``_IdleTimer``) instead of hypercorn's task per
request: hypercorn cancels one task and starts another, which starts a third inside
``asyncio.wait_for``, around every request, about a tenth of a small request's CPU. The
timer is not re-armed per request either: a request only notes when the connection went
idle, and the timer, when it fires, looks whether it has been idle long enough.

The server also skips the empty write that h11 makes of a Content-Length body's end.

``install()`` puts the three in place of hypercorn's classes (``uninstall()`` puts hypercorn's
back, for tests). It checks the hypercorn version it was written against and does nothing
on any other, so an upgrade degrades to ordinary (copying) sends instead of breaking;
pyproject.toml pins hypercorn and h11 to the versions it was tested with, the server logs
at start whether it is on, and ``/metrics`` shows it (``satellite_zero_copy``) with the
bytes it sent (``satellite_sendfile_bytes_total``), summed over the serving processes like
the registry's other counters. docs/satellite.md says what replacing the patch would take.
"""

from __future__ import annotations

import asyncio
import asyncio.selector_events
import logging
import os
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any, cast

import h11
import hypercorn.asyncio.run
import hypercorn.protocol
import hypercorn.protocol.h11
from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.asyncio.worker_context import AsyncioSingleTask, WorkerContext
from hypercorn.events import Closed, Event, RawData, Updated
from hypercorn.protocol.events import Event as StreamEvent
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.protocol.http_stream import ASGIHTTPState, HTTPStream
from hypercorn.typing import AppWrapper
from hypercorn.utils import suppress_body
from prometheus_client import Counter, Gauge
from prometheus_client.registry import CollectorRegistry

log = logging.getLogger("satellite.zerocopy")

EXTENSION = "http.response.zerocopysend"
SUPPORTED = ("0.17.", "0.18.")
SENDFILE_MAX_CHUNK = 16 * 1024 * 1024  # bytes per sendfile call


@dataclass
class _State:
    installed: bool = False
    sent_bytes: int = 0  # by sendfile, since the process started
    replaced: dict[tuple[Any, str], Any] | None = None  # what install() put aside
    # the metrics of each registry that shows this module's (register_metrics)
    metrics: weakref.WeakKeyDictionary[CollectorRegistry, tuple[Gauge, Counter]] = field(
        default_factory=weakref.WeakKeyDictionary
    )

    def count(self, sent: int) -> None:
        self.sent_bytes += sent
        for _, counter in self.metrics.values():
            counter.inc(sent)

    def show(self) -> None:
        for gauge, _ in self.metrics.values():
            gauge.set(1 if self.installed else 0)


_state = _State()


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
        # no body after HEAD, 1xx, 204 and 304, whatever the app sends (as hypercorn does)
        status = int(self.response["status"])
        if not suppress_body(self.scope["method"], status) and count > 0:
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


@dataclass
class _IdleConnections:
    """The idle timers of one server (worker context), closed at once when it stops."""

    timers: set[_IdleTimer] = field(default_factory=set)
    watcher: asyncio.Task[None] | None = None

    async def watch(self, context: WorkerContext) -> None:
        await context.terminated.wait()
        for timer in list(self.timers):
            if timer.idle_since is not None:  # a request in flight ends first (idle())
                timer.expire()


_idle: weakref.WeakKeyDictionary[WorkerContext, _IdleConnections] = weakref.WeakKeyDictionary()


class _IdleTimer(AsyncioSingleTask):
    """Stands in for hypercorn's idle task of one connection (same restart/stop calls):
    while armed, a timer closes the connection once it has been idle (no request in
    flight) for ``keep_alive_timeout`` s, and the server's stop closes it at once. A
    request only marks the connection busy and then idle again (``busy``/``idle``); the
    timer, when it fires, looks at how long it has been idle and waits again if it has
    not been long enough."""

    def __init__(self, server: ZeroCopyTCPServer) -> None:
        super().__init__()
        self.server = server
        self.handle: asyncio.TimerHandle | None = None
        self.idle_since: float | None = None  # None: a request in flight
        self.task_group: Any = None
        self.closing: asyncio.Task[None] | None = None

    async def restart(self, task_group: Any, action: Callable[[], Any]) -> None:
        self.task_group = task_group
        self.idle()

    async def stop(self) -> None:
        self.stop_now()

    def idle(self) -> None:
        server = self.server
        if server.context.terminated.is_set():
            self.expire()
            return
        self.idle_since = server.loop.time()
        if self.handle is None:
            idle = _idle.get(server.context)
            if idle is None:
                idle = _idle[server.context] = _IdleConnections()
                idle.watcher = server.loop.create_task(idle.watch(server.context))
            idle.timers.add(self)
            self.handle = server.loop.call_later(server.config.keep_alive_timeout, self._check)

    def busy(self) -> None:
        self.idle_since = None

    def _check(self) -> None:
        loop = self.server.loop
        timeout = self.server.config.keep_alive_timeout
        left = timeout if self.idle_since is None else self.idle_since + timeout - loop.time()
        if left > 0:
            self.handle = loop.call_later(left, self._check)
        else:
            self.handle = None
            self.expire()

    def stop_now(self) -> None:
        self.idle_since = None
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        idle = _idle.get(self.server.context)
        if idle is not None:
            idle.timers.discard(self)

    def expire(self) -> None:
        """Closes the connection (as hypercorn's idle task does when its wait ends)."""
        self.stop_now()
        if self.closing is None:
            close = self.server._initiate_server_close()
            self.closing = self.task_group._task_group.create_task(close)


# asyncio's transport of a plain socket (the one whose fd a writer may take over)
_PLAIN_TRANSPORT: Any = getattr(asyncio.selector_events, "_SelectorSocketTransport", ())


class _FileSender:
    """Sends a file's range on a non-blocking socket: one ``sendfile`` call each time the
    socket is writable, made by the writer callback itself, which stays registered until
    the range is sent (``loop.sendfile`` removes and adds its writer and resumes a
    coroutine around every call: CPU per call, and a slow reader means many calls)."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, sock: int, file: int, offset: int, count: int
    ) -> None:
        self.loop: Any = loop  # a selector loop: its _add_writer skips the transport check
        self.sock = sock
        self.file = file
        self.offset = offset
        self.end = offset + count
        self.done: asyncio.Future[None] = loop.create_future()

    async def run(self) -> None:
        start = self.offset
        self.loop._add_writer(self.sock, self._write)
        try:
            await self.done
        finally:
            if not self.done.done():  # cancelled
                self.loop._remove_writer(self.sock)
            _state.count(self.offset - start)  # once: a metric's update costs system calls

    def _write(self) -> None:
        try:
            count = min(SENDFILE_MAX_CHUNK, self.end - self.offset)
            sent = os.sendfile(self.sock, self.file, self.offset, count)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._finish(exc)
            return
        if sent == 0:
            self._finish(ConnectionError("the file ended before the response did"))
            return
        self.offset += sent
        if self.offset >= self.end:
            self._finish(None)

    def _finish(self, error: OSError | None) -> None:
        # at once, in this callback: the socket may be closed before the sender resumes
        self.loop._remove_writer(self.sock)
        if error is None:
            self.done.set_result(None)
        else:
            self.done.set_exception(error)


class ZeroCopyTCPServer(TCPServer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.idle_timer = self.idle_task = _IdleTimer(self)

    async def protocol_send(self, event: Event) -> None:
        if type(event) is RawData:
            if event.data:  # h11's end of a Content-Length body is b"": nothing to write
                await super().protocol_send(event)
            return
        if type(event) is Updated:
            if event.idle:
                self.idle_timer.idle()
            else:
                self.idle_timer.busy()
            return
        if not isinstance(event, RawFile):
            await super().protocol_send(event)
            return
        async with self.send_lock:
            try:
                await self.writer.drain()
                transport = self.writer.transport
                if (
                    isinstance(transport, _PLAIN_TRANSPORT)
                    and hasattr(self.loop, "_add_writer")
                    and transport.get_write_buffer_size() == 0
                ):
                    await self._send_file(transport, event)
                else:  # TLS, another loop, or headers still queued: asyncio's way
                    await self._send_file_by_loop(event)
            except (ConnectionError, RuntimeError):
                await self.protocol.handle(Closed())

    async def _send_file(self, transport: asyncio.Transport, event: RawFile) -> None:
        # reading paused: the transport must not close the socket under the writer
        reading = transport.is_reading()
        transport.pause_reading()
        try:
            sock = transport.get_extra_info("socket").fileno()
            await _FileSender(self.loop, sock, event.file.fileno(), event.offset, event.count).run()
        finally:
            if reading and not transport.is_closing():
                transport.resume_reading()

    async def _send_file_by_loop(self, event: RawFile) -> None:
        offset, end = event.offset, event.offset + event.count
        while offset < end:
            count = min(SENDFILE_MAX_CHUNK, end - offset)
            sent = await self.loop.sendfile(self.writer.transport, event.file, offset, count)
            _state.count(sent)
            offset += count
            if offset < end:
                await asyncio.sleep(0)  # the other connections' turn


# the names hypercorn looks its classes up by when it accepts a connection
_PLACES: tuple[tuple[Any, str, type], ...] = (
    (hypercorn.asyncio.run, "TCPServer", ZeroCopyTCPServer),
    (hypercorn.protocol, "H11Protocol", ZeroCopyH11Protocol),
    (hypercorn.protocol.h11, "HTTPStream", ZeroCopyHTTPStream),
)


def install() -> bool:
    """Makes hypercorn's HTTP/1.1 path offer zero-copy sends; True when installed."""
    installed = version("hypercorn")
    if not installed.startswith(SUPPORTED):
        log.warning("hypercorn %s is not one zero-copy sends were written for", installed)
        return False
    if _state.replaced is None:
        _state.replaced = {(module, name): getattr(module, name) for module, name, _ in _PLACES}
        for module, name, ours in _PLACES:
            setattr(module, name, ours)
    _state.installed = True
    _state.show()
    return True


def uninstall() -> None:
    """Puts back the classes install() replaced (whatever was there then: what was
    installed on top afterwards, such as registry_proxy.framing's, goes too)."""
    replaced, _state.replaced = _state.replaced, None
    for (module, name), original in (replaced or {}).items():
        setattr(module, name, original)
    _state.installed = False
    _state.show()


def installed() -> bool:
    return _state.installed


def sent_bytes() -> int:
    """Body bytes sent with sendfile by this process so far."""
    return _state.sent_bytes


def register_metrics(registry: CollectorRegistry) -> None:
    """Shows this module's state in `registry`: plain metrics, so that with several
    serving processes (prometheus-client's multiprocess mode) they are summed as well."""
    if registry in _state.metrics:
        return
    on = Gauge(
        "satellite_zero_copy",
        "1 while blob bodies go out with sendfile (the ASGI zero-copy extension is installed)",
        multiprocess_mode="livemin",
        registry=registry,
    )
    sent = Counter(
        "satellite_sendfile_bytes",
        "Body bytes sent with sendfile instead of through Python",
        registry=registry,
    )
    _state.metrics[registry] = (on, sent)
    _state.show()
