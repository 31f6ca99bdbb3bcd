"""The per-request access log of both programs, read from the real processes' output:
one line per request with method, target, status, bytes, duration and where a
pull-through answer came from; plain or JSON lines; off with `[log] access = false`;
`satellite run --push` turns pushes on from the command line."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx

from tests.conftest import SatelliteFactory
from tests.support.groundcontrol import GroundControlProcess
from tests.support.images import GeneratedLayout, sha256_bytes
from tests.support.satellite import SatelliteProcess, UpstreamTable
from tests.support.skopeo import Skopeo
from tests.support.upstream import UpstreamRegistry

ACCEPT = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json"
PLAIN = re.compile(
    r"INFO (?P<logger>[\w.]+): (?P<client>\S+) (?P<method>[A-Z]+) (?P<target>\S+) "
    r"(?P<status>\d+) (?P<bytes>\d+) (?P<ms>\d+\.\d)ms (?P<upstream>\S+)$"
)


def access_lines(path: Path, last_target: str) -> list[re.Match[str]]:
    """The plain access lines of a log, once the line of `last_target` is in (bounded)."""
    for _ in range(200):
        found = [m for line in path.read_text().splitlines() if (m := PLAIN.search(line))]
        found = [m for m in found if m["logger"].endswith(".access")]
        if any(m["target"] == last_target for m in found):
            return found
        time.sleep(0.05)
    raise AssertionError(f"no access line for {last_target} in {path}")


def push_blob(sat: SatelliteProcess, repo: str, data: bytes) -> str:
    digest = sha256_bytes(data)
    r = httpx.post(f"{sat.url}/v2/{repo}/blobs/uploads/?digest={digest}", content=data)
    assert r.status_code == 201, r.text
    return digest


def test_satellite_writes_one_plain_line_per_request(
    upstream_registry: UpstreamRegistry,
    satellite_factory: SatelliteFactory,
    skopeo: Skopeo,
    image_layout: GeneratedLayout,
) -> None:
    skopeo.copy(image_layout.oci("app:v1"), f"docker://{upstream_registry.host}/library/app:v1")
    sat = satellite_factory(
        push=True, upstreams=[UpstreamTable("up", upstream_registry.url, default=False)]
    )
    digest = push_blob(sat, "local/data", b"x" * 1000)
    blob = httpx.get(f"{sat.url}/v2/local/data/blobs/{digest}")
    assert blob.status_code == 200
    manifest = f"{sat.url}/v2/up/library/app/manifests/v1"
    first = httpx.get(manifest, headers={"accept": ACCEPT})
    second = httpx.get(manifest, headers={"accept": ACCEPT})
    assert httpx.get(f"{sat.url}/v2/local/data/blobs/sha256:{'0' * 64}").status_code == 404
    assert httpx.get(f"{sat.url}/v2/x%0Ay/tags/list").status_code >= 400

    lines = access_lines(sat.log_path, "/v2/x%0Ay/tags/list")
    by_target = {(m["method"], m["target"]): m for m in lines}
    push = by_target["POST", f"/v2/local/data/blobs/uploads/?digest={digest}"]
    assert (push["status"], push["upstream"], push["client"]) == ("201", "-", "127.0.0.1")
    get = by_target["GET", f"/v2/local/data/blobs/{digest}"]
    assert (get["status"], get["bytes"]) == ("200", "1000")
    pulls = [m for m in lines if m["target"] == "/v2/up/library/app/manifests/v1"]
    assert [(m["status"], m["upstream"]) for m in pulls] == [("200", "miss"), ("200", "hit")]
    assert pulls[0]["bytes"] == str(len(first.content)) == str(len(second.content))
    assert by_target["GET", f"/v2/local/data/blobs/sha256:{'0' * 64}"]["status"] == "404"
    # an encoded newline is logged as sent: it cannot start a forged line
    assert by_target["GET", "/v2/x%0Ay/tags/list"]["status"].startswith("4")


def test_satellite_json_lines(satellite_factory: SatelliteFactory) -> None:
    sat = satellite_factory(extra_config='[log]\nformat = "json"\n')
    digest = push_blob(sat, "local/data", b"y" * 10)
    assert httpx.get(f"{sat.url}/v2/local/data/blobs/{digest}").status_code == 200
    for _ in range(200):
        entries = [
            json.loads(line)
            for line in sat.log_path.read_text().splitlines()
            if line.startswith("{")
        ]
        if any(e["path"] == f"/v2/local/data/blobs/{digest}" for e in entries):
            break
        time.sleep(0.05)
    pull = next(e for e in entries if e["path"] == f"/v2/local/data/blobs/{digest}")
    assert {k: pull[k] for k in ("client", "method", "status", "bytes", "upstream")} == {
        "client": "127.0.0.1",
        "method": "GET",
        "status": 200,
        "bytes": 10,
        "upstream": "-",
    }
    assert isinstance(pull["duration_ms"], float)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", pull["time"])


def test_satellite_access_log_can_be_turned_off(satellite_factory: SatelliteFactory) -> None:
    sat = satellite_factory(extra_config="[log]\naccess = false\n")
    for _ in range(3):
        assert httpx.get(f"{sat.url}/v2/").status_code == 200
    sat.stop()  # everything written is in the log now
    log = sat.log_path.read_text()
    assert "listening on" in log
    assert "satellite.access" not in log


def test_run_push_flag_turns_pushes_on(satellite_factory: SatelliteFactory) -> None:
    read_only = satellite_factory(push=False)
    r = httpx.post(f"{read_only.url}/v2/local/data/blobs/uploads/")
    assert r.status_code == 405
    assert r.json()["errors"][0]["code"] == "UNSUPPORTED"
    pushable = satellite_factory(push=False, extra_args=["--push"])
    push_blob(pushable, "local/data", b"z" * 10)


def test_groundcontrol_writes_the_same_shape(tmp_path: Path) -> None:
    server = GroundControlProcess(tmp_path, "--data-dir", str(tmp_path / "gc")).launch()
    try:
        server.wait()
        assert httpx.get(f"{server.url}/api/v1/groups").status_code == 401
    finally:
        server.stop()
    lines = access_lines(server.log_path, "/api/v1/groups")
    groups = next(m for m in lines if m["target"] == "/api/v1/groups")
    assert groups["logger"] == "groundcontrol.access"
    assert (groups["method"], groups["status"], groups["upstream"]) == ("GET", "401", "-")
    assert int(groups["bytes"]) > 0
