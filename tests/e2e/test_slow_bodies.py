"""Request bodies read under a deadline, on both programs as real processes, driven over
raw sockets: a client that trickles or stalls its body is answered 408 and the
connection closed; a steady upload over several windows is not cut; a client that goes
away mid-body is an INFO line, not a traceback; Ground Control's registration counts
an attempt before reading its body.

The deadlines are configured small (a 1 s window) so that the tests end quickly; nothing
here measures time.
"""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from groundcontrol.config import load_config
from registry_proxy.units import ConfigError
from tests.conftest import SatelliteFactory
from tests.support.groundcontrol import GroundControlProcess
from tests.support.images import sha256_bytes
from tests.support.net import LOOPBACK
from tests.support.satellite import SatelliteProcess

SLOW_SERVER = """
[server]
body_min_rate = 1000
body_rate_window = 1
"""


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    closed: bool  # the server closed the connection after the answer


def connect(port: int) -> socket.socket:
    sock = socket.create_connection((LOOPBACK, port), timeout=20)
    return sock


def read_answer(sock: socket.socket) -> Answer:
    """One HTTP/1.1 response (Content-Length framed), then whether the server closed."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before a response: {data!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    try:
        closed = sock.recv(1) == b""
    except (TimeoutError, ConnectionResetError):
        closed = False
    return Answer(status, headers, rest[:length], closed)


def trickle(sock: socket.socket, head: bytes, byte_every: float = 0.2) -> None:
    """Sends the head, then one body byte every `byte_every` s until the server
    answers (bounded: at most 300 bytes)."""
    sock.sendall(head)
    for _ in range(300):
        readable, _, _ = select.select([sock], [], [], byte_every)
        if readable:
            return
        sock.sendall(b"x")
    raise AssertionError("the server never answered a trickling body")


def wait_for_log(path: Path, text: str) -> str:
    for _ in range(200):
        log = path.read_text(errors="replace")
        if text in log:
            return log
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never appeared in {path}")


# ----------------------------------------------------------------------- the satellite


@pytest.fixture
def satellite(satellite_factory: SatelliteFactory) -> SatelliteProcess:
    return satellite_factory(extra_config=SLOW_SERVER)


def start_upload(sat: SatelliteProcess) -> str:
    r = httpx.post(f"{sat.url}/v2/demo/slow/blobs/uploads/")
    assert r.status_code == 202
    return r.headers["location"]


def test_a_trickling_upload_is_answered_408_and_closed(satellite: SatelliteProcess) -> None:
    location = start_upload(satellite)
    with connect(satellite.port) as sock:
        head = (
            f"PATCH {location} HTTP/1.1\r\nHost: x\r\n"
            "Content-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\n"
        ).encode()
        trickle(sock, head)
        answer = read_answer(sock)
    assert answer.status == 408
    assert answer.closed
    error = json.loads(answer.body)["errors"][0]
    assert error["code"] == "REQUEST_TIMEOUT"
    assert "bytes/s" in error["message"]
    log = wait_for_log(satellite.log_path, "too slow")
    assert "Traceback" not in log
    # what arrived stays, and the upload goes on from there (a client may resume)
    r = httpx.get(f"{satellite.url}{location}")
    assert r.status_code == 204


def test_a_stalled_monolithic_upload_is_answered_408(satellite: SatelliteProcess) -> None:
    digest = "sha256:" + "0" * 64
    with connect(satellite.port) as sock:
        sock.sendall(
            f"POST /v2/demo/slow/blobs/uploads/?digest={digest} HTTP/1.1\r\nHost: x\r\n"
            "Content-Length: 5000\r\n\r\nabc".encode()
        )
        answer = read_answer(sock)  # nothing more is sent
    assert answer.status == 408
    assert answer.closed


def test_a_steady_upload_over_several_windows_is_not_cut(satellite: SatelliteProcess) -> None:
    data = bytes(range(256)) * 4096  # 1 MiB in 32 pieces, well above the floor
    digest = sha256_bytes(data)
    location = start_upload(satellite)
    with connect(satellite.port) as sock:
        sock.sendall(
            f"PUT {location}?digest={digest} HTTP/1.1\r\nHost: x\r\n"
            f"Content-Length: {len(data)}\r\n\r\n".encode()
        )
        piece = len(data) // 32
        for offset in range(0, len(data), piece):
            sock.sendall(data[offset : offset + piece])
            time.sleep(0.1)  # pacing only: 32 pieces span several 1 s windows
        answer = read_answer(sock)
    assert answer.status == 201, answer.body
    blob = httpx.get(f"{satellite.url}/v2/demo/slow/blobs/{digest}")
    assert blob.content == data


def test_a_client_gone_mid_body_is_an_info_line(satellite: SatelliteProcess) -> None:
    location = start_upload(satellite)
    with connect(satellite.port) as sock:
        sock.sendall(
            f"PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n".encode()
            + b"y" * 5000
        )
    log = wait_for_log(satellite.log_path, "went away while sending the body")
    assert "INFO satellite.http: client 127.0.0.1 went away" in log
    assert "Traceback" not in log
    assert "ERROR" not in log
    assert httpx.get(f"{satellite.url}/v2/").status_code == 200


# ----------------------------------------------------------------------- Ground Control


@pytest.fixture
def groundcontrol(tmp_path: Path) -> Iterator[GroundControlProcess]:
    config = tmp_path / "gc.toml"
    config.write_text(
        '[server]\nbody_min_rate = "1000"\nbody_rate_window = "1s"\n\n[join]\nrate_limit = 2\n'
    )
    server = GroundControlProcess(
        tmp_path, "--data-dir", str(tmp_path / "gc"), "--config", str(config)
    ).launch()
    server.wait()
    yield server
    server.stop()


def register_head(length: int) -> bytes:
    return (
        "POST /api/v1/register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def test_groundcontrol_answers_a_trickling_registration_408(
    groundcontrol: GroundControlProcess,
) -> None:
    with connect(groundcontrol.port) as sock:
        trickle(sock, register_head(200))
        answer = read_answer(sock)
    assert answer.status == 408
    assert answer.closed
    assert json.loads(answer.body)["error"]["code"] == "request_timeout"
    log = wait_for_log(groundcontrol.log_path, "too slow")
    assert "Traceback" not in log
    assert "unexpected error" not in log


def test_groundcontrol_counts_a_registration_before_its_body(
    groundcontrol: GroundControlProcess,
) -> None:
    """Past the rate limit an attempt is refused before a byte of its body: clients
    holding bodies back cannot dodge the limit."""
    for _ in range(2):  # two attempts (the limit) with a body: refused as bad tokens
        r = httpx.post(
            f"{groundcontrol.url}/api/v1/register", json={"token": "gcj_x", "public_key": "x"}
        )
        assert r.status_code in (400, 401)
    with connect(groundcontrol.port) as sock:
        sock.sendall(register_head(200))  # and no body at all
        answer = read_answer(sock)
    assert answer.status == 429
    assert json.loads(answer.body)["error"]["code"] == "rate_limited"


def test_groundcontrol_logs_a_client_gone_mid_body_at_info(
    groundcontrol: GroundControlProcess,
) -> None:
    with connect(groundcontrol.port) as sock:
        sock.sendall(register_head(200) + b'{"token": ')
    log = wait_for_log(groundcontrol.log_path, "went away while sending the body")
    assert "Traceback" not in log
    assert "unexpected error" not in log
    assert httpx.get(f"{groundcontrol.url}/healthz").status_code == 200


def test_groundcontrol_body_deadline_config(tmp_path: Path) -> None:
    path = tmp_path / "gc.toml"
    path.write_text('[server]\nbody_min_rate = "4KiB"\nbody_rate_window = "1m"\n')
    config = load_config(path, environ={"GROUNDCONTROL_SERVER_BODY_TIMEOUT": "10m"})
    assert (config.body_min_rate, config.body_rate_window, config.body_timeout) == (
        4096,
        60,
        600,
    )
    defaults = load_config(None, environ={})
    assert (defaults.body_min_rate, defaults.body_rate_window, defaults.body_timeout) == (
        1024,
        30,
        0,
    )
    path.write_text("[server]\nbody_rate_window = 0\n")
    with pytest.raises(ConfigError, match=r"server\.body_rate_window"):
        load_config(path, environ={})
