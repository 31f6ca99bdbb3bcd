"""The fault-injecting relay (tests/support/faultrelay.py) against a real docker-registry.

One docker-registry serves the module: a 256 KiB blob in repository "r", mounted into 80
long-named repositories so that /v2/_catalog comes back chunked (Go's server chunks bodies
over 2 KiB written without a Content-Length).
"""

from __future__ import annotations

import hashlib
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.faultrelay import (
    Blackhole,
    Fault,
    FaultRelay,
    blackhole,
    corrupt,
    cut_after,
    drop,
    stall,
    status,
)
from tests.support.images import sha256_bytes
from tests.support.net import LOOPBACK
from tests.support.upstream import UpstreamRegistry

SHORT = httpx.Timeout(10.0, read=0.5)  # for requests that are meant to hang
CATALOG_REPOS = 80


@dataclass(frozen=True)
class Blob:
    repo: str
    digest: str
    data: bytes

    @property
    def path(self) -> str:
        return f"/v2/{self.repo}/blobs/{self.digest}"


def make_data(seed: str, size: int) -> bytes:
    blocks = (hashlib.sha256(f"{seed}-{i}".encode()).digest() for i in range(size // 32 + 1))
    return b"".join(blocks)[:size]


def client(base_url: str, timeout: httpx.Timeout | float = 10.0) -> httpx.Client:
    return httpx.Client(base_url=base_url, timeout=timeout, trust_env=False)


def push_blob(http: httpx.Client, repo: str, data: bytes) -> str:
    """POST an upload, then PUT the whole body with ?digest= (docker-registry 2.8 answers a
    monolithic POST ?digest= with 202 and an empty upload, so two steps are needed)."""
    digest = sha256_bytes(data)
    started = http.post(f"/v2/{repo}/blobs/uploads/")
    assert started.status_code == 202, started.text
    location = started.headers["location"]
    # httpx's params= would replace the upload URL's _state query: append instead
    sep = "&" if "?" in location else "?"
    done = http.put(
        f"{location}{sep}digest={digest}",
        content=data,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert done.status_code == 201, done.text
    return digest


def read_until_closed(sock: socket.socket, max_reads: int = 10_000) -> bytes:
    out = bytearray()
    for _ in range(max_reads):
        data = sock.recv(65536)
        if not data:
            return bytes(out)
        out += data
    raise AssertionError("connection not closed")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpstreamRegistry]:
    reg = UpstreamRegistry(Path(tmp_path_factory.mktemp("faultrelay")) / "upstream")
    reg.start()
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="module")
def blob(registry: UpstreamRegistry) -> Blob:
    data = make_data("faultrelay", 256 * 1024)
    with client(registry.url) as http:
        digest = push_blob(http, "r", data)
    return Blob("r", digest, data)


@pytest.fixture(scope="module")
def catalog_repos(registry: UpstreamRegistry, blob: Blob) -> None:
    with client(registry.url) as http:
        for i in range(CATALOG_REPOS):
            mounted = http.post(
                f"/v2/a-repository-with-a-rather-long-name-{i:04d}/blobs/uploads/",
                params={"mount": blob.digest, "from": blob.repo},
            )
            assert mounted.status_code == 201, mounted.text


def direct_catalog(registry: UpstreamRegistry) -> bytes:
    with client(registry.url) as http:
        response = http.get("/v2/_catalog")
    assert response.status_code == 200
    assert response.headers.get("transfer-encoding") == "chunked"
    assert len(response.content) > 2048
    return response.content


@pytest.fixture
def relay(registry: UpstreamRegistry) -> Iterator[FaultRelay]:
    with FaultRelay(LOOPBACK, registry.port) as r:
        yield r
        assert r.errors == []


# --------------------------------------------------------------------------- passthrough


def test_passthrough_get_head_range(relay: FaultRelay, blob: Blob) -> None:
    with client(relay.url) as http:
        got = http.get(blob.path)
        head = http.head(blob.path)
        part = http.get(blob.path, headers={"Range": "bytes=1000-1999"})
    assert got.status_code == 200
    assert got.content == blob.data
    assert got.headers["docker-content-digest"] == blob.digest
    assert head.status_code == 200
    assert head.headers["content-length"] == str(len(blob.data))
    assert head.content == b""
    assert part.status_code == 206
    assert part.content == blob.data[1000:2000]

    assert relay.requests == [("GET", blob.path), ("HEAD", blob.path), ("GET", blob.path)]
    assert relay.count(blob.digest, method="GET") == 2
    assert relay.bytes_relayed_for(blob.digest) == len(blob.data) + 1000
    assert [(e.status, e.forwarded, e.complete) for e in relay.exchanges] == [
        (200, True, True),
        (200, True, True),
        (206, True, True),
    ]


def test_keep_alive_across_body_framings(
    relay: FaultRelay, registry: UpstreamRegistry, blob: Blob, catalog_repos: None
) -> None:
    """Content-Length, HEAD, 304 and chunked responses all end where they should: five
    requests share one client connection."""
    expected_catalog = direct_catalog(registry)
    with client(relay.url) as http:
        got = http.get(blob.path)
        head = http.head(blob.path)
        not_modified = http.get(blob.path, headers={"If-None-Match": got.headers["etag"]})
        catalog = http.get("/v2/_catalog")
        base = http.get("/v2/")
    assert got.content == blob.data
    assert head.content == b""
    assert not_modified.status_code == 304
    assert catalog.headers["transfer-encoding"] == "chunked"
    assert catalog.content == expected_catalog
    assert base.status_code == 200
    assert relay.connections == 1
    assert [e.status for e in relay.exchanges] == [200, 200, 304, 200, 200]
    assert relay.bytes_relayed_for("/v2/_catalog") == len(expected_catalog)


def test_pipelined_requests_on_one_socket(relay: FaultRelay, blob: Blob) -> None:
    requests = (
        f"HEAD {blob.path} HTTP/1.1\r\nHost: {relay.netloc}\r\n\r\n"
        f"GET {blob.path} HTTP/1.1\r\nHost: {relay.netloc}\r\nRange: bytes=0-9\r\n\r\n"
        f"GET /v2/ HTTP/1.1\r\nHost: {relay.netloc}\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection((relay.host, relay.port), timeout=10) as sock:
        sock.sendall(requests)
        raw = read_until_closed(sock)
    assert [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", raw)] == [
        200,
        206,
        200,
    ]
    assert b"\r\n\r\n" + blob.data[:10] + b"HTTP/1.1 200" in raw
    assert relay.connections == 1
    assert relay.requests == [("HEAD", blob.path), ("GET", blob.path), ("GET", "/v2/")]


# --------------------------------------------------------------------------- faults


def test_cut_after_interrupts_the_transfer_once(relay: FaultRelay, blob: Blob) -> None:
    rule = relay.add_fault(Fault(blob.digest, cut_after(1000), method="GET", times=1))
    received = bytearray()
    with client(relay.url) as http:
        with (
            pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)),
            http.stream("GET", blob.path) as response,
        ):
            assert response.status_code == 200
            for chunk in response.iter_raw():
                received += chunk
        again = http.get(blob.path)
    assert bytes(received) == blob.data[:1000]
    assert again.content == blob.data
    assert rule.hits == 1
    assert not rule.active
    assert relay.bytes_relayed_for(blob.digest) == 1000 + len(blob.data)
    first, second = relay.exchanges
    assert (first.complete, second.complete) == (False, True)


def test_corrupt_flips_exactly_one_byte(relay: FaultRelay, blob: Blob) -> None:
    relay.add_fault(Fault(blob.digest, corrupt(12345), times=1))
    with client(relay.url) as http:
        bad = http.get(blob.path).content
        good = http.get(blob.path).content
    assert len(bad) == len(blob.data)
    assert [i for i, (a, b) in enumerate(zip(bad, blob.data, strict=True)) if a != b] == [12345]
    assert bad[12345] == blob.data[12345] ^ 0xFF
    assert good == blob.data


def test_faults_inside_a_chunked_body(
    relay: FaultRelay, registry: UpstreamRegistry, catalog_repos: None
) -> None:
    expected = direct_catalog(registry)
    relay.add_fault(Fault("/v2/_catalog", corrupt(100), times=1))
    relay.add_fault(Fault("/v2/_catalog", cut_after(1000), times=1))
    received = bytearray()
    with client(relay.url) as http:
        bad = http.get("/v2/_catalog").content
        with (
            pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)),
            http.stream("GET", "/v2/_catalog") as response,
        ):
            for chunk in response.iter_bytes():
                received += chunk
        good = http.get("/v2/_catalog").content
    assert len(bad) == len(expected)
    assert [i for i, (a, b) in enumerate(zip(bad, expected, strict=True)) if a != b] == [100]
    assert bytes(received) == expected[:1000]
    assert good == expected


def test_stall_before_responding(relay: FaultRelay, blob: Blob) -> None:
    rule = relay.add_fault(Fault(blob.digest, stall(None), times=1))
    with client(relay.url, timeout=SHORT) as http, pytest.raises(httpx.ReadTimeout):
        http.get(blob.path)
    assert rule.hits == 1
    relay.clear()
    relay.add_fault(Fault(blob.digest, stall(0.05), times=1))
    with client(relay.url) as http:
        assert http.get(blob.path).content == blob.data  # after a short stall
        assert http.get(blob.path).content == blob.data


def test_stall_in_the_middle_times_out_a_reader(relay: FaultRelay, blob: Blob) -> None:
    relay.add_fault(Fault(blob.digest, stall(None, after_bytes=4096), times=1))
    received = bytearray()
    with (
        client(relay.url, timeout=SHORT) as http,
        pytest.raises(httpx.ReadTimeout),
        http.stream("GET", blob.path) as response,
    ):
        assert response.status_code == 200
        for chunk in response.iter_raw():
            received += chunk
    assert bytes(received) == blob.data[:4096]
    assert relay.bytes_relayed_for(blob.digest) == 4096


async def test_stall_in_the_middle_resumes_when_the_rule_is_removed(
    relay: FaultRelay, blob: Blob
) -> None:
    rule = relay.add_fault(Fault(blob.digest, stall(None, after_bytes=4096), times=1))
    received = bytearray()
    seen_at_release = -1
    async with (
        httpx.AsyncClient(base_url=relay.url, timeout=10.0, trust_env=False) as http,
        http.stream("GET", blob.path) as response,
    ):
        async for chunk in response.aiter_raw():
            received += chunk
            if seen_at_release < 0 and len(received) >= 4096:
                seen_at_release = len(received)  # the relay holds: nothing more comes
                relay.remove_fault(rule)
    assert seen_at_release == 4096
    assert bytes(received) == blob.data


def test_status_answers_without_contacting_the_target(relay: FaultRelay, blob: Blob) -> None:
    relay.add_fault(Fault(blob.digest, status(503, b"down"), method="GET", times=2))
    relay.add_fault(Fault("/v2/", status(429, headers={"Retry-After": "7"}), method="HEAD"))
    with client(relay.url) as http:
        first = http.get(blob.path)
        second = http.get(blob.path)
        limited = http.head(blob.path)
        third = http.get(blob.path)
    assert (first.status_code, first.content) == (503, b"down")
    assert second.status_code == 503
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "7"
    assert third.content == blob.data
    assert [e.forwarded for e in relay.exchanges] == [False, False, False, True]
    assert relay.bytes_relayed_for(blob.digest) == len(blob.data)
    assert relay.connections == 1  # status answers keep the connection alive


def test_drop_closes_without_an_answer(relay: FaultRelay, blob: Blob) -> None:
    rule = relay.add_fault(Fault(blob.digest, drop(), times=1))
    with client(relay.url) as http:
        with pytest.raises(httpx.RemoteProtocolError):
            http.get(blob.path)
        assert http.get(blob.path).content == blob.data
    assert rule.hits == 1
    assert [(e.forwarded, e.status) for e in relay.exchanges] == [(False, None), (True, 200)]


def test_blackhole_never_answers_until_cleared(relay: FaultRelay, blob: Blob) -> None:
    rule = relay.add_fault(Fault(blob.digest, blackhole()))
    with client(relay.url, timeout=SHORT) as http:
        with pytest.raises(httpx.ReadTimeout):
            http.get(blob.path)
        assert http.get("/v2/").status_code == 200  # other paths still pass
    assert isinstance(rule.fault.action, Blackhole)
    [held, _] = relay.exchanges
    assert (held.forwarded, held.status) == (False, None)

    request = f"GET {blob.path} HTTP/1.1\r\nHost: {relay.netloc}\r\n\r\n".encode()
    with socket.create_connection((relay.host, relay.port), timeout=10) as sock:
        sock.sendall(request)
        relay.wait_for_requests(2, blob.digest)
        relay.clear()
        assert read_until_closed(sock) == b""  # closed without an answer
    with client(relay.url) as http:
        assert http.get(blob.path).content == blob.data


def test_go_down_refuses_and_come_up_serves_on_the_same_port(relay: FaultRelay, blob: Blob) -> None:
    port = relay.port
    with socket.create_connection((relay.host, relay.port), timeout=10) as sock:
        sock.sendall(f"GET /v2/ HTTP/1.1\r\nHost: {relay.netloc}\r\n\r\n".encode())
        answer = b""
        for _ in range(100):  # the head, then the 2-byte body "{}"
            answer += sock.recv(65536)
            if answer.endswith(b"\r\n\r\n{}"):
                break
        assert answer.startswith(b"HTTP/1.1 200 ")
        relay.go_down()
        assert not relay.listening
        try:
            leftover = read_until_closed(sock)  # open connections are dropped too
        except ConnectionResetError:
            leftover = b""
        assert leftover == b""
    with client(relay.url) as http, pytest.raises(httpx.ConnectError):
        http.get(blob.path)
    relay.come_up()
    assert relay.port == port
    with client(relay.url) as http:
        assert http.get(blob.path).content == blob.data


def test_counters_with_an_upload_through_the_relay(relay: FaultRelay) -> None:
    data = make_data("pushed", 100 * 1024)
    with client(relay.url) as http:
        digest = push_blob(http, "pushed", data)  # request bodies pass through
        path = f"/v2/pushed/blobs/{digest}"
        relay.add_fault(
            Fault(re.compile(r"/blobs/sha256:[0-9a-f]{64}$"), status(404), method="HEAD")
        )
        assert http.head(path).status_code == 404
        assert http.get(path).content == data
        assert http.get(path).content == data
    uploads = [p for m, p in relay.requests if "/blobs/uploads/" in p]
    assert len(uploads) == 2
    assert uploads[1].startswith("/v2/pushed/blobs/uploads/")  # Location pointed at the relay
    assert relay.count(digest) == 4  # HEAD, 2 GETs, and the PUT's ?digest=
    assert relay.count(path, method="GET") == 2
    assert relay.bytes_relayed_for(path) == 2 * len(data)
    with pytest.raises(TimeoutError):
        relay.wait_for_requests(3, path, method="GET", timeout=0.01)
    relay.reset_counters()
    assert relay.requests == []
    assert relay.bytes_relayed_for(path) == 0


# --------------------------------------------------------------------------- protocol edges


def read_head(sock: socket.socket, max_reads: int = 100) -> bytes:
    """Bytes up to and including the first blank line (what follows is dropped)."""
    out = b""
    for _ in range(max_reads):
        if b"\r\n\r\n" in out:
            return out.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
        data = sock.recv(65536)
        if not data:
            raise AssertionError(f"closed before a whole head: {out!r}")
        out += data
    raise AssertionError(f"no whole head in {max_reads} reads: {out!r}")


def test_malformed_requests_are_refused_without_reaching_the_target(relay: FaultRelay) -> None:
    garbage = [
        b"GET /v2/ HTTP/1.1\r\nHost: x\r\nbad header line\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello: the client falls back
    ]
    for request in garbage:
        with socket.create_connection((relay.host, relay.port), timeout=10) as sock:
            sock.sendall(request)
            answer = read_until_closed(sock)  # at once, not at a timeout
        assert answer.startswith(b"HTTP/1.1 400 "), request
        assert b"\r\nConnection: close\r\n" in answer
    assert relay.requests == []
    assert relay.connections == 2


def test_expect_continue_is_answered_by_the_relay(relay: FaultRelay) -> None:
    head = (
        f"POST /v2/expect/blobs/uploads/ HTTP/1.1\r\nHost: {relay.netloc}\r\n"
        "Expect: 100-continue\r\nContent-Length: 4\r\n\r\n"
    )
    with socket.create_connection((relay.host, relay.port), timeout=10) as sock:
        sock.sendall(head.encode())
        assert read_head(sock).startswith(b"HTTP/1.1 100 ")  # before the body is sent
        sock.sendall(b"abcd")
        answer = read_head(sock)
    assert answer.startswith(b"HTTP/1.1 202 "), answer
    assert re.search(rb"\r\nLocation: http://[^/]+/v2/expect/blobs/uploads/", answer), answer

    relay.add_fault(Fault("/v2/refused/", status(403, b"no"), method="POST"))
    with socket.create_connection((relay.host, relay.port), timeout=10) as sock:
        sock.sendall(head.replace("/v2/expect/", "/v2/refused/").encode())
        answer = read_until_closed(sock)  # answered at once, the body never sent
    assert answer.startswith(b"HTTP/1.1 403 ")
    assert answer.endswith(b"\r\n\r\nno")
    assert [(e.method, e.forwarded, e.status) for e in relay.exchanges] == [
        ("POST", True, 202),
        ("POST", False, 403),
    ]
