"""Request smuggling: both servers, as real hypercorn processes, over raw sockets.

A request that carries Content-Length and Transfer-Encoding, or that ends its lines with
a bare LF, is framed differently by different parsers (a proxy in front, the server);
each is refused with 400 and the connection closed, so that nothing sent after it on
the same connection is read as a request (RFC 9112 §6.3, §2.2).
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import SatelliteFactory
from tests.support.groundcontrol import GroundControlProcess
from tests.support.images import sha256_bytes
from tests.support.net import LOOPBACK

BOUND = 20.0  # seconds a server gets to answer or close; a bound, not a measurement
STATUS = re.compile(rb"HTTP/1\.1 (\d{3})")


def exchange(port: int, data: bytes) -> tuple[list[int], bool]:
    """Sends `data` at once; returns the statuses of the responses read and whether the
    server closed the connection (reading stops at the close or at the bound)."""
    with socket.create_connection((LOOPBACK, port), timeout=BOUND) as sock:
        sock.sendall(data)
        received = b""
        closed = False
        try:
            while chunk := sock.recv(65536):
                received += chunk
            closed = True
        except TimeoutError:
            pass
    return [int(m) for m in STATUS.findall(received)], closed


@pytest.fixture
def satellite_port(satellite_factory: SatelliteFactory) -> int:
    return satellite_factory().port


@pytest.fixture
def groundcontrol_port(tmp_path: Path) -> Iterator[int]:
    server = GroundControlProcess(tmp_path, "--data-dir", str(tmp_path / "gc")).launch()
    try:
        server.wait()
        yield server.port
    finally:
        server.stop()


SERVERS = ["satellite_port", "groundcontrol_port"]
PATH = {"satellite_port": b"/v2/", "groundcontrol_port": b"/healthz"}
# what a front proxy that frames by Content-Length would take for one request's body
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize("server", SERVERS)
def test_content_length_with_transfer_encoding_is_refused(
    server: str, request: pytest.FixtureRequest
) -> None:
    port: int = request.getfixturevalue(server)
    chunked = b"0\r\n\r\n"
    for first, second in (
        (b"Content-Length: %d" % len(chunked + SMUGGLED), b"Transfer-Encoding: chunked"),
        (b"Transfer-Encoding: chunked", b"Content-Length: 0"),
    ):
        head = b"POST %s HTTP/1.1\r\nHost: x\r\n%s\r\n%s\r\n\r\n" % (PATH[server], first, second)
        statuses, closed = exchange(port, head + chunked + SMUGGLED)
        assert statuses == [400], statuses  # the smuggled request is never read
        assert closed


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize(
    "head",
    [
        b"GET %s HTTP/1.1\nHost: x\n\n",  # every line
        b"GET %s HTTP/1.1\r\nHost: x\nAccept: */*\r\n\r\n",  # one header line
        b"GET %s HTTP/1.1\r\nHost: x\r\n\n",  # the end of the head
    ],
    ids=["every line", "one header", "end of head"],
)
def test_bare_lf_line_endings_are_refused(
    server: str, head: bytes, request: pytest.FixtureRequest
) -> None:
    port: int = request.getfixturevalue(server)
    statuses, closed = exchange(port, head % PATH[server] + SMUGGLED)
    assert statuses == [400], statuses
    assert closed


@pytest.mark.parametrize("server", SERVERS)
def test_a_bare_lf_after_a_good_request_closes_the_connection(
    server: str, request: pytest.FixtureRequest
) -> None:
    """Pipelined: the good request is answered, the bad one refused, nothing after it."""
    port: int = request.getfixturevalue(server)
    good = b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % PATH[server]
    bad = b"GET %s HTTP/1.1\nHost: x\n\n" % PATH[server]
    statuses, closed = exchange(port, good + bad + good)
    assert statuses == [200, 400], statuses
    assert closed


@pytest.mark.parametrize("server", SERVERS)
def test_well_framed_requests_keep_the_connection(
    server: str, request: pytest.FixtureRequest
) -> None:
    port: int = request.getfixturevalue(server)
    good = b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % PATH[server]
    last = b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % PATH[server]
    statuses, closed = exchange(port, good + good + last)
    assert statuses == [200, 200, 200], statuses
    assert closed


def test_a_chunked_upload_still_works(satellite_factory: SatelliteFactory) -> None:
    """Transfer-Encoding alone frames the body as before (and the blob is stored)."""
    port = satellite_factory().port
    data = b"0123456789" * 100
    digest = sha256_bytes(data)
    body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data)
    head = (
        b"POST /v2/r/blobs/uploads/?digest=%s HTTP/1.1\r\nHost: x\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" % digest.encode()
    )
    assert exchange(port, head + body) == ([201], True)
    get = b"GET /v2/r/blobs/%s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % digest.encode()
    assert exchange(port, get) == ([200], True)


def chunked_upload(data: bytes, trailer: bytes) -> bytes:
    """A monolithic chunked upload of `data` whose body ends with `trailer`."""
    digest = sha256_bytes(data)
    head = (
        b"POST /v2/r/blobs/uploads/?digest=%s HTTP/1.1\r\nHost: x\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" % digest.encode()
    )
    return head + b"%x\r\n%s\r\n0\r\n" % (len(data), data) + trailer


@pytest.mark.parametrize(
    "trailer",
    [
        b"\n",  # the empty line that ends the body
        b"X-Checksum: 1\n\r\n",  # a trailer field's line
        b"X-Checksum: 1\r\n\n",  # the end of the trailer section
    ],
    ids=["empty trailer", "trailer field", "end of trailer"],
)
def test_a_bare_lf_in_a_chunked_trailer_is_refused(
    satellite_factory: SatelliteFactory, trailer: bytes
) -> None:
    """A body a front proxy might end elsewhere: 400, closed, nothing after it read, and
    the blob it carried is not stored."""
    port = satellite_factory().port
    data = b"trailer\n" * 10  # bare LFs inside chunk data are data, never refused
    statuses, closed = exchange(port, chunked_upload(data, trailer) + SMUGGLED)
    assert statuses == [400], statuses
    assert closed
    digest = sha256_bytes(data).encode()
    get = b"GET /v2/r/blobs/%s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % digest
    assert exchange(port, get) == ([404], True)


def test_a_chunked_upload_with_trailer_fields_keeps_the_connection(
    satellite_factory: SatelliteFactory,
) -> None:
    port = satellite_factory().port
    data = b"trailer\n" * 10
    last = b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    statuses, closed = exchange(port, chunked_upload(data, b"X-Checksum: 1\r\n\r\n") + last)
    assert statuses == [201, 200], statuses
    assert closed
