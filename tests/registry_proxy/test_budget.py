"""The cache budget: LRU eviction of unpinned content, never what is pinned or being read."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from registry_proxy.digest import Digest
from registry_proxy.store import ContentStore


async def _put(store: ContentStore, repo: str, data: bytes) -> Digest:
    digest = Digest("sha256", hashlib.sha256(data).hexdigest())

    async def body():  # type: ignore[no-untyped-def]
        yield data

    upload = await store.start_upload(repo)
    await store.finish_upload(repo, upload, digest, body())
    return digest


async def test_lru_eviction_respects_pins_and_readers(tmp_path: Path) -> None:
    store = ContentStore(tmp_path / "d", max_bytes=10_000)
    await store.open()
    try:
        blobs = [await _put(store, "r", bytes([i]) * 3000) for i in range(3)]  # 9000 bytes
        assert await store.enforce_budget() == []
        # order of use: 1 then 0 then 2 (2 most recent); 1 is pinned; 0 is being read
        for i in (1, 0, 2):
            (await store.open_blob("r", blobs[i])).close()
            await store.meta.flush_access()
        await store.pin([blobs[1]], "state")
        reading = await store.open_blob("r", blobs[0])
        newest = await _put(store, "r", b"n" * 3000)  # 12000 > 10000: adopt evicts
        evicted = await store.enforce_budget()
        # 1 is pinned, 0 is open: the least recently used evictable blob is 2
        assert evicted == [blobs[2]]
        assert not store.blobs.path(blobs[2]).exists()
        assert store.blobs.path(blobs[1]).exists()
        assert store.blobs.path(blobs[0]).exists()
        assert store.blobs.path(newest).exists()
        assert await store.used_bytes() <= 10_000
        # the open reader still has all its bytes
        assert len(os.pread(reading.fd, 5000, 0)) == 3000
        reading.close()
        await store.unpin([blobs[1]], "state")
        await _put(store, "r", b"m" * 3000)
        await store.enforce_budget()
        assert await store.used_bytes() <= 9_000
    finally:
        await store.close()


async def test_eviction_of_a_manifest_drops_its_tags(tmp_path: Path) -> None:
    import json

    store = ContentStore(tmp_path / "d", max_bytes=1)
    await store.open()
    try:
        body = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": [],
            }
        ).encode()
        digest, _ = await store.put_manifest("r", "t", body, None)
        await store.enforce_budget()
        assert await store.meta.manifest_by_tag("r", "t") is None
        assert not store.blobs.path(digest).exists()
    finally:
        await store.close()
