"""Every byte on disk is accounted for: a refused write leaves nothing behind, what a
crash leaves is swept at the next start, and the cache budget counts upload data."""

from __future__ import annotations

import hashlib
import json
import socket
import time
from pathlib import Path

import httpx
import pytest

from registry_proxy.digest import Digest
from registry_proxy.errors import RegistryError
from registry_proxy.store import ContentStore
from tests.conftest import SatelliteFactory
from tests.registry_proxy.conftest import push_blob, sha256
from tests.support.images import image_manifest, sha256_bytes
from tests.support.net import LOOPBACK

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


async def files_without_rows(store: ContentStore) -> list[Digest]:
    known = await store.meta.blob_digests()
    return [digest for digest, _ in store.layout.iter_blobs() if digest not in known]


def big_manifest(config: bytes, layers: list[bytes]) -> bytes:
    """A manifest near the 4 MiB limit, as in the report (annotations as padding)."""
    return image_manifest(config, layers, annotations={"pad": "x" * (4 * 1024 * 1024 - 4096)})


async def test_refused_manifests_leave_no_bytes(
    client: httpx.AsyncClient, store: ContentStore
) -> None:
    config = b'{"os":"linux"}'
    await push_blob(client, "r", config)
    refused = [
        image_manifest(config, [b"never pushed"]),  # MANIFEST_BLOB_UNKNOWN
        big_manifest(config, [b"never pushed either"]),
    ]
    for body in refused:
        r = await client.put(
            "/v2/r/manifests/t", content=body, headers={"content-type": OCI_MANIFEST}
        )
        assert r.status_code == 400, r.text[:300]
        assert r.json()["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN"
        assert store.blobs.size(Digest.parse(sha256(body))) is None
    assert await files_without_rows(store) == []
    assert await store.used_bytes() == len(config)


@pytest.mark.parametrize("size", [5, 10_241, 2**63 - 1])
async def test_a_layer_size_that_disagrees_with_the_blob_is_refused(
    client: httpx.AsyncClient, store: ContentStore, size: int
) -> None:
    config, layer = b'{"os":"linux"}', bytes(10_240)
    for blob in (config, layer):
        await push_blob(client, "r", blob)
    doc = json.loads(image_manifest(config, [layer]))
    doc["layers"][0]["size"] = size
    body = json.dumps(doc).encode()
    r = await client.put("/v2/r/manifests/t", content=body, headers={"content-type": OCI_MANIFEST})
    assert r.status_code == 400, r.text
    error = r.json()["errors"][0]
    assert error["code"] == "MANIFEST_INVALID"
    assert error["detail"]["sizes"] == [{"digest": sha256(layer), "size": size, "stored": 10_240}]
    assert (await client.get("/v2/r/manifests/t")).status_code == 404
    assert await files_without_rows(store) == []
    # the config's size is checked too, and the right sizes are accepted
    doc["layers"][0]["size"] = len(layer)
    doc["config"]["size"] = len(config) + 1
    r = await client.put(
        "/v2/r/manifests/t", content=json.dumps(doc), headers={"content-type": OCI_MANIFEST}
    )
    assert r.json()["errors"][0]["code"] == "MANIFEST_INVALID"
    doc["config"]["size"] = len(config)
    r = await client.put(
        "/v2/r/manifests/t", content=json.dumps(doc), headers={"content-type": OCI_MANIFEST}
    )
    assert r.status_code == 201, r.text


async def test_an_index_entry_size_must_be_the_child_manifest_size(
    client: httpx.AsyncClient, store: ContentStore
) -> None:
    config = b'{"os":"linux"}'
    await push_blob(client, "r", config)
    child = image_manifest(config, [])
    r = await client.put(
        f"/v2/r/manifests/{sha256(child)}", content=child, headers={"content-type": OCI_MANIFEST}
    )
    assert r.status_code == 201
    entry = {"mediaType": OCI_MANIFEST, "digest": sha256(child), "size": len(child) - 1}
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry]})
    r = await client.put("/v2/r/manifests/i", content=index, headers={"content-type": OCI_INDEX})
    assert r.status_code == 400
    assert r.json()["errors"][0]["code"] == "MANIFEST_INVALID"
    assert await files_without_rows(store) == []


async def test_a_manifest_refused_after_its_bytes_were_written_is_removed(
    client: httpx.AsyncClient, store: ContentStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race the early check cannot close: a blob deleted between the check and the
    transaction. The transaction refuses the manifest, and its file goes again."""
    config = b'{"os":"linux"}'
    await push_blob(client, "r", config)

    async def blob_deleted_meanwhile(repo: str, manifest: object) -> None:
        await store.delete_blob("r", Digest.parse(sha256(config)))

    monkeypatch.setattr(store.meta, "check_references", blob_deleted_meanwhile)
    body = image_manifest(config, [])
    r = await client.put("/v2/r/manifests/t", content=body, headers={"content-type": OCI_MANIFEST})
    assert r.json()["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN"
    assert store.blobs.size(Digest.parse(sha256(body))) is None
    assert list(store.layout.iter_blobs()) == []


async def test_a_refused_manifest_keeps_bytes_that_another_repository_holds(
    client: httpx.AsyncClient, store: ContentStore
) -> None:
    config = b'{"os":"linux"}'
    await push_blob(client, "a", config)
    body = image_manifest(config, [])
    r = await client.put("/v2/a/manifests/t", content=body, headers={"content-type": OCI_MANIFEST})
    assert r.status_code == 201
    # "b" lacks the config: refused there, still served from "a"
    r = await client.put("/v2/b/manifests/t", content=body, headers={"content-type": OCI_MANIFEST})
    assert r.json()["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN"
    assert (await client.get("/v2/a/manifests/t")).content == body


async def test_sweep_removes_files_that_no_row_accounts_for(
    client: httpx.AsyncClient, store: ContentStore
) -> None:
    kept = await push_blob(client, "r", b"kept")
    orphan = b"left by a crash between the file and its row"
    orphan_digest = Digest.parse(sha256(orphan))
    store.blobs.write_bytes(orphan, orphan_digest)
    assert await files_without_rows(store) == [orphan_digest]
    assert await store.sweep() == [orphan_digest]
    assert store.blobs.size(orphan_digest) is None
    assert store.blobs.size(Digest.parse(kept)) == 4
    assert await store.sweep() == []


async def test_upload_data_counts_in_the_budget(tmp_path: Path) -> None:
    store = ContentStore(tmp_path / "d", max_bytes=10_000)
    await store.open()
    try:

        async def body(data: bytes):  # type: ignore[no-untyped-def]
            yield data

        cached = await store.start_upload("r")
        await store.finish_upload("r", cached, Digest.parse(sha256(b"c" * 4000)), body(b"c" * 4000))
        upload = await store.start_upload("r")
        await store.append_upload("r", upload, body(b"u" * 8000))
        assert await store.used_bytes() == 12_000
        # the cached blob goes to make room; the upload in progress cannot
        assert await store.enforce_budget() == [Digest.parse(sha256(b"c" * 4000))]
        await store.close()
        # after a restart the upload's bytes are still counted
        store = ContentStore(tmp_path / "d", max_bytes=10_000)
        await store.open()
        await store.sweep()
        assert await store.used_bytes() == 8000
        assert await store.upload_offset("r", upload) == 8000
    finally:
        await store.close()


async def test_fill_staging_counts_in_the_budget(tmp_path: Path) -> None:
    """The bytes a fill from upstream has received so far (its staging file under
    partial/, kept across a restart for the resume) take room in the budget too."""
    store = ContentStore(tmp_path / "d", max_bytes=10_000)
    await store.open()
    try:

        async def body(data: bytes):  # type: ignore[no-untyped-def]
            yield data

        cached = Digest.parse(sha256(b"c" * 4000))
        await store.finish_upload("r", await store.start_upload("r"), cached, body(b"c" * 4000))
        staging = store.layout.partial_fill(Digest.parse(sha256(b"big")))
        staging.write_bytes(b"s" * 7000)
        assert await store.used_bytes() == 11_000
        assert await store.enforce_budget() == [cached]  # room for the fill in progress
        assert await store.used_bytes() == 7000
        staging.unlink()  # the fill was published or abandoned
        assert await store.used_bytes() == 0
    finally:
        await store.close()


async def test_pins_are_set_and_dropped_together(tmp_path: Path) -> None:
    store = ContentStore(tmp_path / "d")
    await store.open()
    try:
        digests = [Digest.parse(sha256(bytes([i]))) for i in range(3)]
        await store.pin(digests, "state")
        await store.pin(digests[:1], "other")
        assert sorted(map(str, await store.meta.pinned("state"))) == sorted(map(str, digests))
        await store.unpin(digests[:2], "state")
        assert await store.meta.pinned("state") == [digests[2]]
        assert await store.meta.pinned("other") == [digests[0]]
        await store.pin([], "state")  # nothing to pin: no transaction, no error
        await store.unpin([], "state")
    finally:
        await store.close()


def test_a_crash_during_a_monolithic_upload_leaves_nothing(
    satellite_factory: SatelliteFactory,
) -> None:
    """The client of `POST ...?digest=` never learned the upload's id, so nothing can
    resume it: the next start removes its data at once, not after 24 hours."""
    sat = satellite_factory()
    data = bytes(4 * 1024 * 1024)
    digest = sha256_bytes(data)
    with socket.create_connection((LOOPBACK, sat.port), timeout=20) as sock:
        head = (
            f"POST /v2/r/blobs/uploads/?digest={digest} HTTP/1.1\r\nHost: x\r\n"
            f"Content-Length: {len(data)}\r\n\r\n"
        )
        sock.sendall(head.encode() + data[: len(data) // 2])
        resumable = httpx.post(f"{sat.url}/v2/r/blobs/uploads/")  # the client knows this one
        assert resumable.status_code == 202
        uploads = sat.data_dir / "uploads"
        # wait (bounded) until the half upload's bytes are on disk, then crash
        for _ in range(400):
            if any(p.stat().st_size > 0 for p in uploads.glob("*/data")):
                break
            time.sleep(0.05)
        else:
            pytest.fail("the monolithic upload never reached the disk")
        sat.kill9()
    sat.start()
    left = [p.parent.name for p in (sat.data_dir / "uploads").glob("*/data")]
    assert left == [resumable.headers["docker-upload-uuid"]]


async def test_a_blob_whose_row_cannot_be_written_is_removed(
    client: httpx.AsyncClient, store: ContentStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full database after the file was published: the file goes too, as no budget
    or eviction would ever see it."""

    async def database_full(repo: str, digest: Digest, size: int) -> None:
        raise RegistryError("UNAVAILABLE", "no space left on the satellite's storage", status=507)

    monkeypatch.setattr(store.meta, "link_blob", database_full)
    data = b"published, never recorded"
    r = await client.post(f"/v2/r/blobs/uploads/?digest={sha256(data)}", content=data)
    assert r.status_code == 507
    assert list(store.layout.iter_blobs()) == []
    assert list(store.layout.uploads.iterdir()) == []


def test_a_start_removes_blob_files_without_rows(satellite_factory: SatelliteFactory) -> None:
    sat = satellite_factory()
    kept = b"pushed and recorded"
    r = httpx.post(f"{sat.url}/v2/r/blobs/uploads/?digest={sha256(kept)}", content=kept)
    assert r.status_code == 201
    sat.stop()
    orphan = b"published, then the power went"
    encoded = hashlib.sha256(orphan).hexdigest()
    path = sat.data_dir / "blobs" / "sha256" / encoded[:2] / encoded
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orphan)
    sat.start()
    assert not path.exists()
    assert httpx.get(f"{sat.url}/v2/r/blobs/{sha256(kept)}").content == kept
