"""Zero-copy blob sends through the real server: exact bytes, ranges, HEAD, keep-alive,
and clients that go away mid-transfer; each test checks the bytes went out by sendfile,
so that a server that silently fell back to copying fails here."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import http.client
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import hypercorn.asyncio.run
import hypercorn.protocol
import hypercorn.protocol.h11
import pytest
from hypercorn.asyncio import serve

from appliance import zerocopy
from appliance.server import hypercorn_config
from tests.conftest import SatelliteFactory
from tests.support.images import sha256_bytes
from tests.support.satellite import SatelliteProcess

MIB = 1024 * 1024


@pytest.fixture
def blob(satellite: SatelliteProcess) -> tuple[bytes, str]:
    # larger than zerocopy.SENDFILE_MAX_CHUNK, so a blob goes out in several calls
    data = os.urandom(2 * zerocopy.SENDFILE_MAX_CHUNK + 5 * MIB + 123)
    digest = sha256_bytes(data)
    r = httpx.post(
        f"{satellite.url}/v2/zc/blobs/uploads/?digest={digest}", content=data, timeout=60
    )
    assert r.status_code == 201
    return data, digest


def test_keep_alive_connection_serves_many_zero_copy_responses(
    satellite: SatelliteProcess, blob: tuple[bytes, str]
) -> None:
    data, digest = blob
    assert satellite.metric("satellite_zero_copy") == 1
    assert satellite.metric("satellite_sendfile_bytes_total") == 0
    conn = http.client.HTTPConnection("127.0.0.1", satellite.port, timeout=30)
    try:
        path = f"/v2/zc/blobs/{digest}"
        for _ in range(3):
            conn.request("GET", path)
            r = conn.getresponse()
            assert r.status == 200
            assert r.getheader("docker-content-digest") == digest
            assert r.read() == data
        conn.request("GET", path, headers={"Range": "bytes=1000000-3000000"})
        r = conn.getresponse()
        assert r.status == 206
        assert r.read() == data[1000000:3000001]
        edge = zerocopy.SENDFILE_MAX_CHUNK  # a range across the first call's end
        conn.request("GET", path, headers={"Range": f"bytes={edge - 7}-{2 * edge + 9}"})
        r = conn.getresponse()
        assert r.status == 206
        assert r.read() == data[edge - 7 : 2 * edge + 10]
        conn.request("HEAD", path)
        r = conn.getresponse()
        assert r.status == 200
        assert r.getheader("content-length") == str(len(data))
        assert r.read() == b""
        conn.request("GET", "/v2/")  # the connection is still in a sane state
        r = conn.getresponse()
        assert r.status == 200
        assert r.read() == b"{}"
    finally:
        conn.close()
    # every body byte above went out by sendfile: three whole blobs and two ranges
    ranges = (3000000 - 1000000 + 1) + (2 * edge + 9 - (edge - 7) + 1)
    assert satellite.metric("satellite_sendfile_bytes_total") == 3 * len(data) + ranges


def test_with_several_workers_the_sendfile_bytes_of_all_are_shown(
    satellite_factory: SatelliteFactory,
) -> None:
    """Each worker counts what it sent; /metrics (whichever worker answers it) shows the
    sum over all of them, like the registry's other counters."""
    sat = satellite_factory(workers=2)
    data = os.urandom(3 * MIB + 17)
    digest = sha256_bytes(data)
    r = httpx.post(f"{sat.url}/v2/zc/blobs/uploads/?digest={digest}", content=data, timeout=60)
    assert r.status_code == 201

    def senders() -> list[float]:
        return [n for n in sat.counter_by_pid("satellite_sendfile_bytes").values() if n]

    downloads = 0
    # each download on a new connection, until both workers have sent the blob
    while len(senders()) < 2 and downloads < 40:
        assert httpx.get(f"{sat.url}/v2/zc/blobs/{digest}", timeout=30).content == data
        downloads += 1
    assert len(senders()) == 2, "every connection went to the same worker"
    assert sum(senders()) == downloads * len(data)
    for _ in range(4):  # the scrapes, too, reach either worker
        assert sat.metric("satellite_sendfile_bytes_total") == downloads * len(data)
        assert sat.metric("satellite_zero_copy") == 1


def test_slow_readers_at_once_each_get_their_exact_bytes(
    satellite: SatelliteProcess, blob: tuple[bytes, str]
) -> None:
    """Clients with small receive buffers that read a little at a time: each sendfile
    call moves only what a socket took since the last, many calls per response."""
    data, digest = blob
    request = f"GET /v2/zc/blobs/{digest} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    bodies: list[bytes] = []

    def download() -> None:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            s.settimeout(30)
            s.connect(("127.0.0.1", satellite.port))
            s.sendall(request)
            received = bytearray()
            while b"\r\n\r\n" not in received:
                received += s.recv(16 * 1024)
            head, _, body = bytes(received).partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            got = bytearray(body)
            while len(got) < len(data):
                chunk = s.recv(16 * 1024)
                assert chunk, "the connection ended early"
                got += chunk
            bodies.append(bytes(got))

    threads = [threading.Thread(target=download) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert len(bodies) == 4
    assert all(body == data for body in bodies)
    assert satellite.metric("satellite_sendfile_bytes_total") == 4 * len(data)


def test_clients_leaving_mid_transfer_do_not_hurt_the_server(
    satellite: SatelliteProcess, blob: tuple[bytes, str]
) -> None:
    data, digest = blob
    request = f"GET /v2/zc/blobs/{digest} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", satellite.port), timeout=10) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            s.sendall(request)
            s.recv(65536)  # headers and the first bytes, then a reset
    r = httpx.get(f"{satellite.url}/v2/zc/blobs/{digest}", timeout=30)
    assert r.status_code == 200
    assert r.content == data
    assert "Traceback" not in satellite.log_tail()


def test_install_refuses_an_unknown_hypercorn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(zerocopy, "version", lambda name: "99.0")
    assert zerocopy.install() is False
    assert zerocopy.installed() is False


def test_uninstall_puts_hypercorns_classes_back() -> None:
    before = _hypercorn_classes()
    assert zerocopy.install() is True
    try:
        assert _hypercorn_classes() == (
            zerocopy.ZeroCopyTCPServer,
            zerocopy.ZeroCopyH11Protocol,
            zerocopy.ZeroCopyHTTPStream,
        )
        assert zerocopy.installed() is True
    finally:
        zerocopy.uninstall()
    assert _hypercorn_classes() == before
    assert zerocopy.installed() is False


def _hypercorn_classes() -> tuple[type, type, type]:
    return (
        hypercorn.asyncio.run.TCPServer,
        hypercorn.protocol.H11Protocol,
        hypercorn.protocol.h11.HTTPStream,
    )


def _file_app(file: Any, size: int) -> Any:
    """Answers /204 and /304 with that status and a zero-copy body (which must not go
    out), anything else with 200 and the whole `file`."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        assert zerocopy.EXTENSION in scope["extensions"]
        status = {"/204": 204, "/304": 304}.get(scope["path"], 200)
        headers = [] if status == 204 else [(b"content-length", str(size).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": zerocopy.EXTENSION, "file": file, "offset": 0, "count": size})

    return app


def test_no_body_goes_out_after_204_or_304() -> None:
    """An app that sends a file after 204/304 gets no body on the wire (as hypercorn
    drops ordinary bodies there); the connection stays in step for the next request."""
    body = Path(__file__).read_bytes()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    config = hypercorn_config("127.0.0.1", port)
    config.bind = [f"fd://{listener.detach()}"]  # hypercorn owns (and closes) it now
    assert zerocopy.install() is True
    sent_before = zerocopy.sent_bytes()
    running: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    def run(file: Any) -> None:
        async def main() -> None:
            stop = asyncio.Event()
            running.append((asyncio.get_running_loop(), stop))
            await serve(_file_app(file, len(body)), config, shutdown_trigger=stop.wait)

        asyncio.run(main())

    with open(__file__, "rb") as file:
        thread = threading.Thread(target=run, args=(file,), daemon=True)
        thread.start()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            for path, status in (("/204", 204), ("/304", 304), ("/file", 200), ("/304", 304)):
                conn.request("GET", path)  # the listener is bound: connecting cannot race
                r = conn.getresponse()
                assert r.status == status
                assert r.read() == (body if status == 200 else b"")
            conn.close()
            assert zerocopy.sent_bytes() - sent_before == len(body)
        finally:
            for loop, stop in running:
                loop.call_soon_threadsafe(stop.set)
            thread.join(timeout=15)
            zerocopy.uninstall()
    assert not thread.is_alive()


def test_without_the_extension_blobs_are_still_served(
    satellite_factory: SatelliteFactory,
) -> None:
    """The chunked path (as under a server without zero-copy) gives the same bytes."""
    sat = satellite_factory(extra_config="[server]\nzero_copy = false\n")
    data = os.urandom(3 * MIB)
    digest = sha256_bytes(data)
    assert (
        httpx.post(
            f"{sat.url}/v2/r/blobs/uploads/?digest={digest}", content=data, timeout=60
        ).status_code
        == 201
    )
    assert httpx.get(f"{sat.url}/v2/r/blobs/{digest}", timeout=30).content == data
    assert sat.metric("satellite_zero_copy") == 0
    assert sat.metric("satellite_sendfile_bytes_total") == 0
    assert "zero-copy blob sends: off" in sat.log_tail()


@contextlib.contextmanager
def _serving(app: Any, keep_alive_timeout: float) -> Iterator[tuple[int, Callable[[], None]]]:
    """hypercorn with the zero-copy classes in a thread: yields (port, stop)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    config = hypercorn_config("127.0.0.1", port)
    config.bind = [f"fd://{listener.detach()}"]
    config.keep_alive_timeout = keep_alive_timeout
    config.graceful_timeout = 30
    assert zerocopy.install() is True
    running: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
    started = threading.Event()

    async def main() -> None:
        stop = asyncio.Event()
        running.append((asyncio.get_running_loop(), stop))
        started.set()
        await serve(app, config, shutdown_trigger=stop.wait)

    def stop() -> None:  # once: the loop is closed after the server stopped
        while running:
            loop, event = running.pop()
            loop.call_soon_threadsafe(event.set)

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    try:
        assert started.wait(timeout=15)
        yield port, stop
    finally:
        stop()
        thread.join(timeout=40)
        zerocopy.uninstall()
    assert not thread.is_alive()


async def _slow_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers after `?s` seconds (0 by default), with the body b"ok"."""
    if scope["type"] != "http":
        return
    query = scope["query_string"].decode()
    await asyncio.sleep(float(query) if query else 0.0)
    headers = [(b"content-length", b"2")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"ok"})


def _response(conn: socket.socket) -> bytes:
    """One whole response of _slow_app (its head, then the body b"ok")."""
    data = b""
    for _ in range(100):
        if data.endswith(b"\r\n\r\nok"):
            return data
        chunk = conn.recv(4096)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    raise AssertionError(f"no whole response: {data!r}")


def _closed_by_server(conn: socket.socket) -> bool:
    """Whether the server closed `conn` (EOF) before the socket's own timeout."""
    try:
        return conn.recv(1) == b""
    except TimeoutError:
        return False


def test_an_idle_keep_alive_connection_is_closed_after_the_timeout_and_a_slow_request_is_not() -> (
    None
):
    request = b"GET /?%s HTTP/1.1\r\nHost: x\r\n\r\n"
    with (
        _serving(_slow_app, keep_alive_timeout=0.3) as (port, _),
        socket.create_connection(("127.0.0.1", port), timeout=20) as conn,
    ):
        # a request in flight three times as long as the idle timeout: answered
        conn.sendall(request % b"0.9")
        assert _response(conn).startswith(b"HTTP/1.1 200")
        # and again on the same connection (the timer was stopped, then re-armed)
        conn.sendall(request % b"0")
        assert _response(conn).startswith(b"HTTP/1.1 200")
        # idle now: the server ends the connection (long before the 20 s timeout)
        assert _closed_by_server(conn)


def test_a_connection_busy_in_short_requests_for_many_timeouts_stays_open() -> None:
    """The idle timer is armed once, not per request: when it fires it looks at how long
    the connection has been idle, so gaps shorter than the timeout never close it, however
    long the whole exchange, and the first longer one does."""
    request = b"GET /?%s HTTP/1.1\r\nHost: x\r\n\r\n"
    with (
        _serving(_slow_app, keep_alive_timeout=0.4) as (port, _),
        socket.create_connection(("127.0.0.1", port), timeout=20) as conn,
    ):
        started = time.monotonic()
        for _ in range(8):  # 8 x (0.15 s in flight + a 0.25 s gap): four timeouts long
            conn.sendall(request % b"0.15")
            assert _response(conn).startswith(b"HTTP/1.1 200")
            time.sleep(0.25)
        assert time.monotonic() - started > 4 * 0.4
        idle = time.monotonic()
        assert _closed_by_server(conn)
        assert 0.1 < time.monotonic() - idle < 5


def test_responses_carry_the_current_date() -> None:
    """hypercorn's Date header, built once a second (ServerConfig): always the current
    second's."""
    request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    with (
        _serving(_slow_app, keep_alive_timeout=5) as (port, _),
        socket.create_connection(("127.0.0.1", port), timeout=20) as conn,
    ):
        dates = []
        for _ in range(2):
            conn.sendall(request)
            head = _response(conn).split(b"\r\n")
            (date,) = [line[6:] for line in head if line.lower().startswith(b"date: ")]
            dates.append(email.utils.parsedate_to_datetime(date.decode()).timestamp())
            assert abs(dates[-1] - time.time()) < 2
            time.sleep(1.2)
        assert dates[1] > dates[0]


def test_stopping_the_server_closes_idle_keep_alive_connections_at_once() -> None:
    # an idle timeout far longer than the socket's: only the stop can close the
    # connection before the recv below times out
    with (
        _serving(_slow_app, keep_alive_timeout=600) as (port, stop),
        socket.create_connection(("127.0.0.1", port), timeout=20) as idle,
    ):
        idle.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _response(idle).startswith(b"HTTP/1.1 200")
        # a connection that goes idle only after the stop began is closed as well
        late = socket.create_connection(("127.0.0.1", port), timeout=20)
        with late:
            late.sendall(b"GET /?0.5 HTTP/1.1\r\nHost: x\r\n\r\n")
            stop()
            assert _closed_by_server(idle)
            assert _response(late).startswith(b"HTTP/1.1 200")
            assert _closed_by_server(late)


def test_the_event_loop_still_offers_what_file_sends_rely_on() -> None:
    """File ranges go out from a writer that `_FileSender` registers with the selector
    loop's private `_add_writer` (the public `add_writer` refuses a socket a transport
    owns). If a Python release drops or changes it, the sends silently fall back to
    `loop.sendfile`: this test says so instead."""
    a, b = socket.socketpair()
    fired: list[int] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert hasattr(loop, "_add_writer"), "asyncio's selector loop has no _add_writer"
        done = loop.create_future()

        def writable() -> None:
            fired.append(os.write(a.fileno(), b"x"))
            loop._remove_writer(a.fileno())  # type: ignore[attr-defined]
            done.set_result(None)

        loop._add_writer(a.fileno(), writable)  # type: ignore[attr-defined]
        await asyncio.wait_for(done, 10)

    with a, b:
        asyncio.run(main())
        assert fired == [1] and b.recv(1) == b"x"
