"""The store under real failure: kill -9 mid-upload, and one blob pushed by many at once."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import SatelliteFactory
from tests.support.images import sha256_bytes
from tests.support.satellite import SatelliteProcess

MIB = 1024 * 1024


def _blob(seed: int, size: int) -> bytes:
    return hashlib.shake_256(seed.to_bytes(4, "big")).digest(size)


def _assert_store_consistent(data_dir: Path) -> None:
    """Every visible blob matches its name; every tag and manifest has its bytes."""
    result = subprocess.run(
        [sys.executable, "-m", "appliance.cli", "verify", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    db = sqlite3.connect(data_dir / "metadata.db")
    try:
        for (digest,) in db.execute("SELECT digest FROM manifests"):
            alg, hexpart = digest.split(":")
            assert (data_dir / "blobs" / alg / hexpart[:2] / hexpart).exists(), digest
        dangling = db.execute(
            "SELECT t.repo, t.tag FROM tags t LEFT JOIN manifests m"
            " ON m.repo = t.repo AND m.digest = t.digest WHERE m.digest IS NULL"
        ).fetchall()
        assert dangling == []
        for (digest,) in db.execute("SELECT digest FROM blobs"):
            alg, hexpart = digest.split(":")
            assert (data_dir / "blobs" / alg / hexpart[:2] / hexpart).exists(), digest
    finally:
        db.close()


async def _push_slowly(client: httpx.AsyncClient, repo: str, data: bytes) -> None:
    location = (await client.post(f"/v2/{repo}/blobs/uploads/")).headers["location"]

    async def body():  # type: ignore[no-untyped-def]
        for i in range(0, len(data), 256 * 1024):
            yield data[i : i + 256 * 1024]
            await asyncio.sleep(0.005)

    r = await client.patch(location, content=body())
    r = await client.put(f"{location}?digest={sha256_bytes(data)}")
    assert r.status_code == 201


async def _push_manifests(client: httpx.AsyncClient, repo: str, count: int) -> None:
    config = b'{"architecture":"amd64","os":"linux"}'
    r = await client.post(
        f"/v2/{repo}/blobs/uploads/?digest={sha256_bytes(config)}", content=config
    )
    assert r.status_code == 201
    for i in range(count):
        body = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": sha256_bytes(config),
                    "size": len(config),
                },
                "layers": [],
                "annotations": {"n": str(i)},
            }
        ).encode()
        r = await client.put(
            f"/v2/{repo}/manifests/t{i % 7}",
            content=body,
            headers={"content-type": "application/vnd.oci.image.manifest.v1+json"},
        )
        assert r.status_code == 201


async def _load_then_kill(sat: SatelliteProcess, delay: float) -> None:
    blobs = [_blob(i, 6 * MIB + i) for i in range(6)]
    async with httpx.AsyncClient(base_url=sat.url, timeout=30) as client:
        tasks = [
            asyncio.create_task(_push_slowly(client, f"crash/r{i}", data))
            for i, data in enumerate(blobs)
        ]
        tasks.append(asyncio.create_task(_push_manifests(client, "crash/m", 10_000)))
        await asyncio.sleep(delay)
        sat.kill9()
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=30)
    # the server died under the clients: most of them must have seen it
    assert any(isinstance(r, BaseException) for r in results)


@pytest.fixture(params=[1, 2], ids=["1-worker", "2-workers"])
def satellite(
    request: pytest.FixtureRequest, satellite_factory: SatelliteFactory
) -> SatelliteProcess:
    """The satellite with one serving process, and with two sharing the store."""
    return satellite_factory(workers=request.param)


def test_kill9_during_uploads_leaves_only_verified_content(
    satellite: SatelliteProcess,
) -> None:
    for delay in (0.3, 0.8, 1.5):
        asyncio.run(_load_then_kill(satellite, delay))
        _assert_store_consistent(satellite.data_dir)
        satellite.start()
        # after a restart the store works, and staging from the crash was swept
        leftovers = list((satellite.data_dir / "uploads").iterdir())
        assert all(p.is_dir() for p in leftovers)
        data = _blob(99, MIB)
        r = httpx.post(
            f"{satellite.url}/v2/after/blobs/uploads/?digest={sha256_bytes(data)}",
            content=data,
            timeout=30,
        )
        assert r.status_code == 201
        assert httpx.get(f"{satellite.url}/v2/after/blobs/{sha256_bytes(data)}").content == data


def test_same_blob_pushed_concurrently_by_many_clients(satellite: SatelliteProcess) -> None:
    data = _blob(7, 8 * MIB)
    digest = sha256_bytes(data)

    async def one(i: int) -> int:
        async with httpx.AsyncClient(base_url=satellite.url, timeout=60) as client:
            location = (await client.post(f"/v2/shared/r{i % 2}/blobs/uploads/")).headers[
                "location"
            ]
            for start in range(0, len(data), 2 * MIB):
                chunk = data[start : start + 2 * MIB]
                r = await client.patch(
                    location,
                    content=chunk,
                    headers={"content-range": f"{start}-{start + len(chunk) - 1}"},
                )
                assert r.status_code == 202, r.text
            r = await client.put(f"{location}?digest={digest}")
            return r.status_code

    async def all_of_them() -> list[int]:
        return await asyncio.gather(*(one(i) for i in range(8)))

    assert asyncio.run(all_of_them()) == [201] * 8
    for repo in ("shared/r0", "shared/r1"):
        r = httpx.get(f"{satellite.url}/v2/{repo}/blobs/{digest}", timeout=30)
        assert r.status_code == 200
        assert sha256_bytes(r.content) == digest
    blob_files = list((satellite.data_dir / "blobs" / "sha256").rglob("*"))
    assert [p.name for p in blob_files if p.is_file()] == [digest.split(":")[1]]
    assert os.listdir(satellite.data_dir / "uploads") == []
    _assert_store_consistent(satellite.data_dir)


def test_sigterm_drains_and_exits_cleanly(satellite: SatelliteProcess) -> None:
    started = time.monotonic()
    code = satellite.stop()
    assert code == 0, satellite.log_tail()
    assert time.monotonic() - started < 15


def test_chunked_upload_survives_a_worker_killed_between_chunks(
    satellite_factory: SatelliteFactory,
) -> None:
    """Two serving processes share the store: each chunk of an upload comes on a
    connection of its own (so either process may take it), and a worker killed -9
    between chunks is started again by the supervisor; the upload goes on to the end."""
    sat = satellite_factory(workers=2)
    assert sat.pid is not None
    data = _blob(11, 6 * MIB)
    digest = sha256_bytes(data)
    location = httpx.post(f"{sat.url}/v2/up/load/blobs/uploads/", timeout=30).headers["location"]
    piece = MIB
    for start in range(0, len(data), piece):
        if start == 3 * MIB:
            workers = _children(sat.pid)
            assert len(workers) == 2
            os.kill(workers[0], signal.SIGKILL)
            deadline = time.monotonic() + 30
            while len(set(_children(sat.pid)) - set(workers)) < 1:
                assert time.monotonic() < deadline, "the killed worker was not started again"
                time.sleep(0.05)
        with httpx.Client(base_url=sat.url, timeout=30) as client:  # a fresh connection
            status = client.get(location)
            assert status.status_code == 204
            assert status.headers["range"] == f"0-{max(start - 1, 0)}"  # the bytes on disk
            r = client.patch(
                location,
                content=data[start : start + piece],
                headers={"content-range": f"{start}-{start + piece - 1}"},
            )
            assert r.status_code == 202, r.text
    r = httpx.put(f"{sat.url}{location}?digest={digest}", timeout=30)
    assert r.status_code == 201, r.text
    assert httpx.get(f"{sat.url}/v2/up/load/blobs/{digest}", timeout=30).content == data
    assert "killed by SIGKILL" in sat.log_path.read_text()  # the supervisor logged it
    _assert_store_consistent(sat.data_dir)


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_a_wedged_worker_is_killed_and_started_again(
    satellite_factory: SatelliteFactory,
) -> None:
    """A worker whose event loop stops (SIGSTOP) gives no sign of life: the supervisor
    kills it and starts another, and the satellite goes on serving on both. (The time
    without a sign of life is systemd's watchdog time: here 2 s, raised to the floor of
    10 s, instead of 30 s without systemd.)"""
    sat = satellite_factory(workers=2, env={"WATCHDOG_USEC": "2000000"})
    assert sat.pid is not None
    workers = _children(sat.pid)
    os.kill(workers[1], signal.SIGSTOP)
    deadline = time.monotonic() + 60
    while workers[1] in _children(sat.pid) or len(_children(sat.pid)) < 2:
        assert time.monotonic() < deadline, "the wedged worker was not replaced"
        time.sleep(0.2)
    assert "no sign of life for" in sat.log_path.read_text()
    for _ in range(20):  # fresh connections, spread over both workers
        assert httpx.get(f"{sat.url}/v2/", timeout=30).status_code == 200
    assert sat.stop() == 0


def test_a_tag_moved_through_one_worker_is_seen_by_every_worker(
    satellite_factory: SatelliteFactory,
) -> None:
    """Each worker caches tag lookups; a tag pushed again through one worker is at once
    the answer of the others too (they share a generation counter with the store)."""
    sat = satellite_factory(workers=2)
    config = b'{"architecture":"amd64","os":"linux"}'
    config_digest = sha256_bytes(config)
    r = httpx.post(f"{sat.url}/v2/moving/blobs/uploads/?digest={config_digest}", content=config)
    assert r.status_code == 201

    def push(n: int) -> str:
        body = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": config_digest,
                    "size": len(config),
                },
                "layers": [],
                "annotations": {"n": str(n)},
            }
        ).encode()
        r = httpx.put(
            f"{sat.url}/v2/moving/manifests/latest",
            content=body,
            headers={"content-type": "application/vnd.oci.image.manifest.v1+json"},
        )
        assert r.status_code == 201, r.text
        return sha256_bytes(body)

    def answers() -> set[str]:
        # fresh connections: the kernel spreads them over both workers
        return {
            httpx.get(f"{sat.url}/v2/moving/manifests/latest").headers["docker-content-digest"]
            for _ in range(30)
        }

    for n in range(5):
        digest = push(n)
        assert answers() == {digest}
