"""A full disk: a clear error, nothing half-written becomes visible, nothing is lost."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from registry_proxy.app import RegistrySettings, create_app
from registry_proxy.digest import Digest
from registry_proxy.fill import _fill_error
from registry_proxy.proxy import UpstreamLink
from registry_proxy.store import ContentStore
from registry_proxy.upstream import UpstreamClient
from tests.support.images import sha256_bytes
from tests.support.upstream import UpstreamRegistry


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs (the suite runs as root, as the bootstrap needs)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs for the full-disk test: {result.stderr}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
async def disk_client(small_disk: Path) -> AsyncIterator[tuple[httpx.AsyncClient, ContentStore]]:
    store = ContentStore(small_disk / "data")
    await store.open()
    app = create_app(store, RegistrySettings(push=True))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://r"
    ) as client:
        yield client, store
    await store.close()


async def test_upload_on_a_full_disk(disk_client: tuple[httpx.AsyncClient, ContentStore]) -> None:
    client, store = disk_client
    small = b"kept" * 1000
    small_digest = sha256_bytes(small)
    assert (
        await client.post(f"/v2/r/blobs/uploads/?digest={small_digest}", content=small)
    ).status_code == 201
    big = b"\x01" * (4 * 1024 * 1024)
    digest = sha256_bytes(big)
    r = await client.post(f"/v2/r/blobs/uploads/?digest={digest}", content=big)
    assert r.status_code == 507
    assert r.json()["errors"][0]["message"] == "no space left on the satellite's storage"
    assert (await client.head(f"/v2/r/blobs/{digest}")).status_code == 404
    # the staging bytes were released and what was there before is intact
    assert list(store.layout.uploads.iterdir()) == []
    assert (await client.get(f"/v2/r/blobs/{small_digest}")).content == small
    assert await store.verify() == []
    # and once there is room again, the same push works
    medium = b"\x02" * (512 * 1024)
    r = await client.post(
        f"/v2/r/blobs/uploads/?digest={sha256_bytes(medium)}",
        content=medium,
    )
    assert r.status_code == 201


async def test_a_pulled_blob_that_cannot_fit_is_refused_before_its_first_byte(
    small_disk: Path, upstream_registry: UpstreamRegistry
) -> None:
    """The fill reserves the blob's blocks before it takes a byte (fallocate): a client
    gets a clear 507, not a 200 whose body breaks off when the disk fills up; the
    staging file is gone and the store still serves what it had."""
    big = os.urandom(4 * 1024 * 1024)
    digest = sha256_bytes(big)
    async with httpx.AsyncClient(base_url=upstream_registry.url) as up:
        started = await up.post("/v2/team/big/blobs/uploads/")
        location = httpx.URL(started.headers["location"])
        assert (await up.put(location.copy_add_param("digest", digest), content=big)).is_success
    store = ContentStore(small_disk / "data")
    await store.open()
    upstream = UpstreamClient("up", upstream_registry.url, backoff=0.01, max_backoff=0.05)
    app = create_app(store, RegistrySettings(), {"up": UpstreamLink(upstream, default=True)})
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://r"
        ) as client:
            r = await client.get(f"/v2/team/big/blobs/{digest}")
            assert r.status_code == 507
            error = r.json()["errors"][0]
            assert error["message"] == "no space left on the satellite's storage"
            assert list(store.layout.partial.iterdir()) == []
    finally:
        await app.state.registry.proxy.close()
        await store.close()


def test_a_fills_own_storage_failures_are_told_as_such_and_the_networks_are_not() -> None:
    """Whichever step of a fill meets the full disk (the lock or staging file, the size
    file, a write, the reservation), its clients hear of the satellite's storage; a
    network error that escaped the upstream client's translation stays an upstream one."""
    digest = Digest.parse(sha256_bytes(b"x"))
    full = _fill_error(OSError(errno.ENOSPC, "No space left on device"), digest)
    assert (full.status, full.message) == (507, "no space left on the satellite's storage")
    broken = _fill_error(OSError(errno.EIO, "Input/output error"), digest)
    assert broken.message == "storage error: Input/output error"
    for network in (ConnectionResetError(), TimeoutError()):
        assert _fill_error(network, digest).message.startswith("upstream failed")
