"""Zero-copy blob sends through the real server: exact bytes, ranges, HEAD, keep-alive,
and clients that go away mid-transfer."""

from __future__ import annotations

import http.client
import os
import socket

import httpx
import pytest

from appliance import zerocopy
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
