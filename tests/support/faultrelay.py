"""A fault-injecting HTTP/1.1 relay on loopback, between the satellite and its upstream.

    with FaultRelay(LOOPBACK, upstream.port) as relay:          # upstream: UpstreamRegistry
        rule = relay.add_fault(Fault("/blobs/sha256:", cut_after(1000), method="GET", times=1))
        ...  # point the satellite at relay.url; the first blob GET is cut after 1000 bytes
        assert rule.hits == 1
        assert relay.count(digest, method="GET") == 2
        assert relay.bytes_relayed_for(digest) == 1000 + size

The relay runs its own asyncio loop in a background thread, so sync and async tests can use
it alike. HTTP/1.1 is h11's on both sides: each request (method, request target, headers,
body) is parsed by h11 and sent on, headers as the client sent them (Host, Range,
Authorization, ...; Expect is answered by the relay), over one upstream connection per
client connection; the response comes back the same way. h11 finds where each message ends
and frames what the relay sends (a chunked body may be re-chunked; one that ends at the
upstream closing goes out chunked). Client connections are kept alive across requests.

Each request takes the first matching rule with hits left (at most one fault applies):

- `cut_after(n)`: headers and the first n body bytes, then the client connection closes;
- `corrupt(offset)`: the body byte at `offset` is flipped (length kept);
- `stall(seconds)`: wait before contacting the target; `stall(seconds, after_bytes=k)`:
  headers and k body bytes, wait, then the rest. `seconds=None` waits until the rule is
  removed (`clear()` / `remove_fault()`) or the relay stops;
- `status(code, body, headers)`: answer at once, the target is not contacted;
- `blackhole()`: read the request and never answer; the connection is closed when the rule
  is removed or the relay stops (or the client gives up);
- `drop()`: close the connection without an answer (a reset mid-request).

`go_down()` / `come_up()` stop and resume listening on the same port (a closed port:
connection refused, unlike a blackhole). If the target itself cannot be reached the relay
closes the client connection without an answer.

Paths are request targets as sent, query included. Body offsets count payload bytes, not
chunked framing. `bytes_relayed_for` counts body bytes from the target that reached the
client (so a cut transfer counts only what was sent; `status` answers count nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import threading
from collections.abc import AsyncGenerator, Coroutine, Mapping
from dataclasses import KW_ONLY, dataclass
from http import HTTPStatus
from typing import Any, TypeAlias, TypeVar

import h11

from tests.support.net import LOOPBACK, free_port

READ_SIZE = 64 * 1024
HEAD_LIMIT = 64 * 1024  # bytes of a request/response head, and of a chunk-size line
MAX_REQUESTS_PER_CONNECTION = 100_000
MAX_INTERIM_RESPONSES = 16  # 1xx responses before the final one
MAX_BODY_EVENTS = 10_000_000  # Data events in one body
CLOSE_TIMEOUT = 5.0

_T = TypeVar("_T")


# --------------------------------------------------------------------------- fault actions


@dataclass(frozen=True)
class CutAfter:
    n_bytes: int


@dataclass(frozen=True)
class Corrupt:
    offset: int


@dataclass(frozen=True)
class Stall:
    seconds: float | None
    after_bytes: int | None = None


@dataclass(frozen=True)
class Status:
    code: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Blackhole:
    pass


@dataclass(frozen=True)
class Drop:
    pass


Action: TypeAlias = CutAfter | Corrupt | Stall | Status | Blackhole | Drop


def _non_negative(name: str, value: float) -> None:
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


def cut_after(n_bytes: int) -> CutAfter:
    """Send the response headers and the first `n_bytes` body bytes, then close."""
    _non_negative("n_bytes", n_bytes)
    return CutAfter(n_bytes)


def corrupt(offset: int) -> Corrupt:
    """Flip (XOR 0xFF) the body byte at `offset`; a shorter body passes unchanged."""
    _non_negative("offset", offset)
    return Corrupt(offset)


def stall(seconds: float | None, *, after_bytes: int | None = None) -> Stall:
    """Wait `seconds` (None: until the rule is removed) before contacting the target, or,
    with `after_bytes`, after sending the headers and that many body bytes (no stall if
    the body is shorter)."""
    if seconds is not None:
        _non_negative("seconds", seconds)
    if after_bytes is not None:
        _non_negative("after_bytes", after_bytes)
    return Stall(seconds, after_bytes)


def status(code: int, body: bytes = b"", headers: Mapping[str, str] | None = None) -> Status:
    """Answer `code` without contacting the target; Content-Length is added unless given."""
    if not 200 <= code <= 599:
        raise ValueError(f"status code must be a final status (200-599), got {code}")
    return Status(code, body, tuple((headers or {}).items()))


def blackhole() -> Blackhole:
    """Read the request, never answer; close when the rule is removed or the relay stops."""
    return Blackhole()


def drop() -> Drop:
    """Close the client connection right after reading the request head."""
    return Drop()


@dataclass(frozen=True)
class Fault:
    """A rule: `action` for requests whose target contains `match` (a str) or where the
    regex `match` searches successfully, optionally only for `method`; applies to `times`
    matching requests (None: every one)."""

    match: str | re.Pattern[str]
    action: Action
    _: KW_ONLY
    method: str | None = None
    times: int | None = None

    def __post_init__(self) -> None:
        if self.times is not None and self.times < 1:
            raise ValueError(f"times must be >= 1 or None, got {self.times}")

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method.upper() != method.upper():
            return False
        if isinstance(self.match, str):
            return self.match in path
        return self.match.search(path) is not None


class FaultRule:
    """The handle `add_fault` returns: how often the fault applied, and whether it still can."""

    def __init__(self, fault: Fault) -> None:
        self.fault = fault
        self._hits = 0
        self._removed = False
        self._event: asyncio.Event | None = None  # created in the relay's loop

    @property
    def hits(self) -> int:
        return self._hits

    @property
    def remaining(self) -> int | None:
        if self.fault.times is None:
            return None
        return max(0, self.fault.times - self._hits)

    @property
    def active(self) -> bool:
        return not self._removed and self.remaining != 0

    def _released(self) -> asyncio.Event:
        # relay loop only
        if self._event is None:
            self._event = asyncio.Event()
        if self._removed:
            self._event.set()
        return self._event


@dataclass
class Exchange:
    """One request the relay saw (a snapshot when read through the relay's properties)."""

    method: str
    path: str
    action: Action | None = None
    forwarded: bool = False  # sent to the target
    status: int | None = None  # final status the client got (None: no answer)
    body_bytes: int = 0  # body bytes from the target that reached the client
    complete: bool = False  # the whole response reached the client


# --------------------------------------------------------------------------- HTTP/1.1 (h11)


class _ProtocolError(Exception):
    pass


class _Peer:
    """One side of a relayed exchange: its streams and the h11 state machine that parses
    what it sends and frames what it is sent."""

    def __init__(
        self,
        role: type[h11.CLIENT] | type[h11.SERVER],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.h11 = h11.Connection(role, max_incomplete_event_size=HEAD_LIMIT)
        self.reader = reader
        self.writer = writer

    async def next_event(self) -> h11.Event | None:
        """The next event the peer sent, reading as needed (None: h11 paused, the peer sent
        more after a message that ends its connection); raises h11.RemoteProtocolError on
        a malformed message or one cut by the peer closing."""
        while True:
            event = self.h11.next_event()
            if isinstance(event, h11.Event):
                return event
            if event is h11.PAUSED:
                return None
            self.h11.receive_data(await self.reader.read(READ_SIZE))

    def frame(self, event: h11.Event) -> bytes:
        return self.h11.send(event) or b""

    def next_cycle(self) -> bool:
        """Ready for another request/response on this connection (False: it must close)."""
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
            return True
        return False


async def _body(peer: _Peer) -> AsyncGenerator[bytes, None]:
    """The payload of the message whose head `peer` just sent, up to its end (framing is
    h11's: Content-Length, chunked, or the peer closing)."""
    for _ in range(MAX_BODY_EVENTS):
        event = await peer.next_event()
        if isinstance(event, h11.Data):
            if event.data:
                yield bytes(event.data)
        elif isinstance(event, h11.EndOfMessage):
            return
        else:
            raise _ProtocolError(f"unexpected {event!r} inside a body")
    raise _ProtocolError("too many body events")


def _simple_response(
    code: int, body: bytes = b"", headers: tuple[tuple[str, str], ...] = ()
) -> bytes:
    """A response written by hand, for requests h11 could not parse."""
    lines = [f"HTTP/1.1 {code} {_reason(code)}"] + [f"{k}: {v}" for k, v in headers]
    if not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in headers):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _reason(code: int) -> str:
    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return "Fault"


_CONNECTION_ERRORS = (
    OSError,
    EOFError,
    asyncio.IncompleteReadError,
    asyncio.LimitOverrunError,
    h11.RemoteProtocolError,
)


# --------------------------------------------------------------------------- the relay


class FaultRelay:
    """See the module docstring. Start with `.start()` or `with FaultRelay(...) as relay:`."""

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        host: str = LOOPBACK,
        port: int = 0,
        connect_timeout: float = 5.0,
    ) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self._host = host
        self._port = port or free_port()  # known before start(): nothing listens there yet
        self.connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._rules: list[FaultRule] = []
        self._exchanges: list[Exchange] = []
        self._connections = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()  # loop only
        self._errors: list[BaseException] = []

    # ----------------------------------------------------------------- lifecycle (any thread)

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    @property
    def netloc(self) -> str:
        return f"{self._host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread is not None

    @property
    def listening(self) -> bool:
        return self._server is not None

    def start(self) -> FaultRelay:
        """Start the loop thread and listen; returns once the port accepts connections."""
        if self._thread is not None:
            return self
        loop = asyncio.new_event_loop()
        thread = threading.Thread(
            target=self._run_loop, args=(loop,), name="fault-relay", daemon=True
        )
        self._loop, self._thread = loop, thread
        with self._lock:
            for rule in self._rules:
                rule._event = None  # events of a previous loop
        thread.start()
        try:
            self._call(self._listen())
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Close every connection and the port, end the thread. Idempotent; rules and
        counters are kept, and `start()` listens on the same port again."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            if loop.is_running():
                self._call(self._shutdown())
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=30)
            self._loop = self._thread = None

    def go_down(self, *, drop_connections: bool = True) -> None:
        """Stop listening (connections are refused); by default also close open ones."""
        self._call(self._unlisten(drop_connections))

    def come_up(self) -> None:
        """Listen again on the same port."""
        self._call(self._listen())

    def __enter__(self) -> FaultRelay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                loop.close()

    def _call(self, coro: Coroutine[Any, Any, _T], timeout: float = 30.0) -> _T:
        loop = self._loop
        if loop is None:
            coro.close()
            raise RuntimeError("FaultRelay is not running")
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return future.result(timeout)
        finally:
            future.cancel()

    # ----------------------------------------------------------------- faults (any thread)

    def add_fault(self, fault: Fault) -> FaultRule:
        rule = FaultRule(fault)
        with self._lock:
            self._rules.append(rule)
        return rule

    def remove_fault(self, rule: FaultRule) -> None:
        """Deactivate `rule` and release requests it holds (stalls resume, blackholes close)."""
        with self._lock:
            if rule in self._rules:
                self._rules.remove(rule)
            rule._removed = True
        self._wake(rule)

    def clear(self) -> None:
        """Remove every rule (see `remove_fault`). Counters are kept."""
        with self._lock:
            rules, self._rules = self._rules, []
            for rule in rules:
                rule._removed = True
        for rule in rules:
            self._wake(rule)

    def _wake(self, rule: FaultRule) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(rule._released)

    # ----------------------------------------------------------------- counters (any thread)

    @property
    def requests(self) -> list[tuple[str, str]]:
        """(method, path) of every request seen, in arrival order."""
        with self._lock:
            return [(e.method, e.path) for e in self._exchanges]

    @property
    def exchanges(self) -> list[Exchange]:
        with self._lock:
            return [dataclasses.replace(e) for e in self._exchanges]

    @property
    def errors(self) -> list[BaseException]:
        """Unexpected exceptions in connection handlers (relay bugs); should stay empty."""
        with self._lock:
            return list(self._errors)

    @property
    def connections(self) -> int:
        """Client connections accepted so far."""
        with self._lock:
            return self._connections

    def count(self, path_substring: str = "", *, method: str | None = None) -> int:
        with self._lock:
            return self._count_locked(path_substring, method)

    def _count_locked(self, path_substring: str, method: str | None) -> int:
        return sum(
            1
            for e in self._exchanges
            if path_substring in e.path and (method is None or e.method == method.upper())
        )

    def bytes_relayed_for(self, path_substring: str) -> int:
        """Body bytes from the target that reached the client, for paths containing this."""
        with self._lock:
            return sum(e.body_bytes for e in self._exchanges if path_substring in e.path)

    def reset_counters(self) -> None:
        with self._lock:
            self._exchanges = []
            self._connections = 0

    def wait_for_requests(
        self,
        n: int = 1,
        path_substring: str = "",
        *,
        method: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        """Block until at least `n` matching requests were seen; TimeoutError otherwise.
        (From async code: `await asyncio.to_thread(relay.wait_for_requests, ...)`.)"""
        with self._cond:
            if not self._cond.wait_for(
                lambda: self._count_locked(path_substring, method) >= n, timeout
            ):
                raise TimeoutError(
                    f"{n} request(s) for {path_substring!r} not seen within {timeout}s; "
                    f"seen: {[(e.method, e.path) for e in self._exchanges]}"
                )

    def _record(self, method: str, path: str) -> Exchange:
        exchange = Exchange(method, path)
        with self._cond:
            self._exchanges.append(exchange)
            self._cond.notify_all()
        return exchange

    def _update(self, exchange: Exchange, **changes: Any) -> None:
        with self._lock:
            for key, value in changes.items():
                setattr(exchange, key, value)

    def _add_bytes(self, exchange: Exchange, n: int) -> None:
        with self._lock:
            exchange.body_bytes += n

    def _take_rule(self, method: str, path: str) -> FaultRule | None:
        with self._lock:
            for rule in self._rules:
                if rule.active and rule.fault.matches(method, path):
                    rule._hits += 1
                    return rule
        return None

    # ----------------------------------------------------------------- loop side

    async def _listen(self) -> None:
        if self._server is not None:
            return
        self._server = await asyncio.start_server(
            self._on_client, self._host, self._port, limit=HEAD_LIMIT, reuse_address=True
        )

    async def _unlisten(self, drop_connections: bool) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        if drop_connections:
            await self._drop_all()
        if server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), CLOSE_TIMEOUT)

    async def _drop_all(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        me = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not me]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=CLOSE_TIMEOUT)

    async def _shutdown(self) -> None:
        await self._unlisten(drop_connections=True)

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self._lock:
            self._connections += 1
        conn = _Connection(self, reader, writer)
        try:
            await conn.run()
        except (asyncio.CancelledError, _ProtocolError, *_CONNECTION_ERRORS):
            pass  # a top-level task of ours: end quietly
        except Exception as exc:  # a bug in the relay: keep it for `errors`
            with self._lock:
                self._errors.append(exc)
        finally:
            await conn.close()


class _Connection:
    """One client connection and its (lazily opened, reused) upstream connection."""

    def __init__(
        self, relay: FaultRelay, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.relay = relay
        self.client = _Peer(h11.SERVER, reader, writer)
        self.writer = writer
        relay._writers.add(writer)
        self.up: _Peer | None = None

    async def close(self) -> None:
        self._close_upstream()
        self.relay._writers.discard(self.writer)
        self.writer.close()  # after what was written: an orderly FIN
        try:
            await asyncio.wait_for(self.writer.wait_closed(), CLOSE_TIMEOUT)
        except (Exception, asyncio.CancelledError):  # e.g. the client does not read
            self.writer.transport.abort()

    def _close_upstream(self) -> None:
        up, self.up = self.up, None
        if up is not None:
            self.relay._writers.discard(up.writer)
            up.writer.transport.abort()

    async def run(self) -> None:
        first = await self.client.reader.read(READ_SIZE)
        if first[:1] == b"\x16":
            # a TLS ClientHello (skopeo tries https first): refuse at once, like a plain
            # HTTP server does, so that the client falls back to http without a timeout
            await self._send(_simple_response(400, headers=(("Connection", "close"),)))
            return
        self.client.h11.receive_data(first)
        for _ in range(MAX_REQUESTS_PER_CONNECTION):
            try:
                event = await self.client.next_event()
            except h11.RemoteProtocolError as exc:
                code = exc.error_status_hint
                await self._send(_simple_response(code, headers=(("Connection", "close"),)))
                return
            if not isinstance(event, h11.Request):
                return  # the client closed (or h11 paused it on a protocol error)
            if not await self._exchange(event) or not self.client.next_cycle():
                return

    async def _send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def _exchange(self, request: h11.Request) -> bool:
        """Handle one request; True to keep the client connection for another."""
        relay = self.relay
        method = request.method.decode("ascii").upper()
        path = request.target.decode("latin-1")
        exchange = relay._record(method, path)
        rule = relay._take_rule(method, path)
        action = rule.fault.action if rule is not None else None
        relay._update(exchange, action=action)
        expects_continue = self.client.h11.client_is_waiting_for_100_continue

        if isinstance(action, Drop):
            return False
        if isinstance(action, Blackhole):
            assert rule is not None
            await self._hold(rule, None, watch_client=True)
            return False
        if isinstance(action, Status):
            return await self._answer(action, method, exchange, expects_continue)
        if isinstance(action, Stall) and action.after_bytes is None:
            assert rule is not None
            await self._hold(rule, action.seconds)
        if expects_continue:  # we read the body before the target sees it: say continue
            await self._send(
                self.client.frame(h11.InformationalResponse(status_code=100, headers=[]))
            )
        return await self._forward(request, method, exchange, rule)

    async def _answer(
        self, action: Status, method: str, exchange: Exchange, expects_continue: bool
    ) -> bool:
        """Answer `action` without the target; True to keep the client connection."""
        headers = list(action.headers)
        if not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in headers):
            headers.append(("Content-Length", str(len(action.body))))
        if expects_continue:  # the client may never send the body: answer and close
            headers.append(("Connection", "close"))
        else:
            async with contextlib.aclosing(_body(self.client)) as body:
                async for _ in body:
                    pass
        response = h11.Response(
            status_code=action.code, headers=headers, reason=_reason(action.code)
        )
        data = self.client.frame(response)
        if method != "HEAD":
            data += self.client.frame(h11.Data(data=action.body))
        data += self.client.frame(h11.EndOfMessage())
        relay = self.relay
        relay._update(exchange, status=action.code, complete=True)
        await self._send(data)
        return not expects_continue

    async def _hold(
        self, rule: FaultRule, seconds: float | None, *, watch_client: bool = False
    ) -> None:
        """Wait until `rule` is removed, `seconds` pass, or (watch_client) the client closes."""
        waiters: list[asyncio.Future[Any]] = [asyncio.ensure_future(rule._released().wait())]
        if watch_client:
            waiters.append(asyncio.ensure_future(self._until_client_eof()))
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)

    async def _until_client_eof(self) -> None:
        with contextlib.suppress(*_CONNECTION_ERRORS):
            while await self.client.reader.read(READ_SIZE):
                pass

    async def _open_upstream(self) -> _Peer:
        if self.up is None:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    self.relay.target_host, self.relay.target_port, limit=HEAD_LIMIT
                ),
                self.relay.connect_timeout,
            )
            self.relay._writers.add(writer)
            self.up = _Peer(h11.CLIENT, reader, writer)
        return self.up

    async def _send_upstream(
        self, request: h11.Request, exchange: Exchange
    ) -> tuple[_Peer, h11.Response]:
        """Send the request (and its body) and read the final response head, relaying
        any 1xx."""
        up = await self._open_upstream()
        self.relay._update(exchange, forwarded=True)
        headers = [(k, v) for k, v in request.headers.raw_items() if k.lower() != b"expect"]
        forwarded = h11.Request(method=request.method, target=request.target, headers=headers)
        up.writer.write(up.frame(forwarded))
        if self.client.h11.their_state is h11.SEND_BODY:  # not yet read (a first attempt)
            async with contextlib.aclosing(_body(self.client)) as body:
                async for data in body:
                    up.writer.write(up.frame(h11.Data(data=data)))
                    await up.writer.drain()
        up.writer.write(up.frame(h11.EndOfMessage()))
        await up.writer.drain()
        for _ in range(MAX_INTERIM_RESPONSES):
            event = await up.next_event()
            if isinstance(event, h11.Response):
                return up, event
            if not isinstance(event, h11.InformationalResponse):
                raise _ProtocolError(f"the target answered {event!r}")
            if event.status_code != 100:  # 103 Early Hints; our 100 was sent already
                await self._send(self.client.frame(event))
        raise _ProtocolError("too many 1xx responses")

    async def _forward(
        self, request: h11.Request, method: str, exchange: Exchange, rule: FaultRule | None
    ) -> bool:
        relay = self.relay
        action = rule.fault.action if rule is not None else None
        has_body = _content_length(request) != 0 or any(
            name == b"transfer-encoding" for name, _ in request.headers
        )
        # a reused upstream connection may have been closed by the target: retry a
        # body-less request once on a fresh connection
        attempts = 1 if has_body else 2
        for attempt in range(attempts):
            reused = self.up is not None
            try:
                up, resp = await self._send_upstream(request, exchange)
                break
            except (*_CONNECTION_ERRORS, TimeoutError, _ProtocolError):
                self._close_upstream()
                if not reused or attempt + 1 == attempts:
                    return False
        else:  # pragma: no cover - the loop always breaks or returns
            return False

        code = resp.status_code
        no_body = method == "HEAD" or code in (204, 304) or _content_length(resp) == 0
        # counters first: the client must not see bytes the counters do not show yet
        relay._update(exchange, status=code, complete=no_body)
        head = h11.Response(status_code=code, headers=resp.headers.raw_items(), reason=resp.reason)
        await self._send(self.client.frame(head))

        cut = action.n_bytes if isinstance(action, CutAfter) else None
        flip = action.offset if isinstance(action, Corrupt) else None
        stall_at = action.after_bytes if isinstance(action, Stall) else None
        sent = 0
        cut_hit = False
        held = b""  # the latest segment, written once the next one (or the end) is known

        async def put(data: bytes) -> None:
            nonlocal held
            if held:
                self.writer.write(held)
            held = data
            await self.writer.drain()

        async def stall_here() -> None:
            nonlocal stall_at
            assert isinstance(action, Stall) and rule is not None
            await put(b"")  # everything so far reaches the client before the stall
            await self._hold(rule, action.seconds)
            stall_at = None

        try:
            async with contextlib.aclosing(_body(up)) as body:
                if stall_at == 0:
                    await stall_here()
                async for raw in body:
                    if cut is not None and sent >= cut:
                        cut_hit = True
                        break
                    data = raw
                    while data:  # each pass relays a non-empty prefix of data
                        limit = len(data)
                        if cut is not None:
                            limit = min(limit, cut - sent)
                        if stall_at is not None:
                            limit = min(limit, stall_at - sent)
                        piece, data = data[:limit], data[limit:]
                        if flip is not None and sent <= flip < sent + len(piece):
                            i = flip - sent
                            piece = piece[:i] + bytes([piece[i] ^ 0xFF]) + piece[i + 1 :]
                        sent += len(piece)
                        relay._add_bytes(exchange, len(piece))
                        await put(self.client.frame(h11.Data(data=piece)))
                        if stall_at is not None and sent >= stall_at:
                            await stall_here()
                        if cut is not None and sent >= cut:
                            break
                    if cut is not None and sent >= cut:
                        cut_hit = True
                        break
                if not cut_hit:
                    relay._update(exchange, complete=True)
                    await put(self.client.frame(h11.EndOfMessage()))
                await put(b"")
        except (*_CONNECTION_ERRORS, _ProtocolError):
            self._close_upstream()
            return False
        if cut is not None:  # the connection closes even if the body was shorter
            self._close_upstream()
            return False
        if not up.next_cycle():
            self._close_upstream()
        return True


def _content_length(message: h11.Request | h11.Response) -> int | None:
    for name, value in message.headers:
        if name == b"content-length":
            return int(value)
    return None
