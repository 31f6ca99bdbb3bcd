"""The cache budget: LRU eviction of unpinned content, never what is pinned or being read."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
from pathlib import Path

from registry_proxy.digest import Digest
from registry_proxy.store import ContentStore

REPO = Path(__file__).resolve().parents[2]


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


# A second serving process that publishes a blob (as a cache fill does) and stops after
# the file is in place, before its metadata row is written, until the test says go on.
PUBLISHER = """
import asyncio, sys
from pathlib import Path
from registry_proxy.digest import Digest
from registry_proxy.store import ContentStore

async def main(root: Path, digest: Digest, data: bytes) -> None:
    store = ContentStore(root, shared=True)
    await store.open()
    commit = store.blobs.commit

    def paused_commit(*args):
        size = commit(*args)
        print("committed", flush=True)
        sys.stdin.readline()
        return size

    store.blobs.commit = paused_commit
    staged = root / "partial" / "staged"
    staged.write_bytes(data)
    await store.adopt_blob(["other"], staged, digest, (digest, len(data)))
    await store.close()
    print("published", flush=True)

asyncio.run(main(Path(sys.argv[1]), Digest.parse(sys.argv[2]), bytes.fromhex(sys.argv[3])))
"""


async def test_a_budget_pass_leaves_a_blob_another_process_is_publishing(tmp_path: Path) -> None:
    """The budget pass of one serving process and the commit of the same blob in another
    exclude each other: evicted in between, the other's row would name a removed file."""
    root = tmp_path / "d"
    store = ContentStore(root, max_bytes=5_000, shared=True)
    await store.open()
    publisher: asyncio.subprocess.Process | None = None

    async def said() -> str:
        assert publisher is not None and publisher.stdout is not None
        return (await asyncio.wait_for(publisher.stdout.readline(), timeout=30)).decode().strip()

    try:
        data = b"p" * 3000
        publishing = await _put(store, "r", data)  # the least recently used
        other = await _put(store, "r", b"o" * 3000)  # 6000 bytes: one must go
        publisher = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            PUBLISHER,
            str(root),
            str(publishing),
            data.hex(),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=REPO,
        )
        assert publisher.stdin is not None
        assert await said() == "committed"
        # the pass skips the blob being published and frees the space with the next one
        assert await store.enforce_budget() == [other]
        publisher.stdin.write(b"go on\n")
        assert await said() == "published"
        assert await asyncio.wait_for(publisher.wait(), timeout=30) == 0
        # the publish and the earlier copy both stand: the rows name a file with the bytes
        assert await store.blob_size("r", publishing) == len(data)
        assert await store.blob_size("other", publishing) == len(data)
        assert store.blobs.path(publishing).read_bytes() == data
        assert not store.blobs.path(other).exists()
        # no lock file is left behind once nobody holds it
        assert list((root / "locks").glob("*.publish")) == []
    finally:
        if publisher is not None and publisher.returncode is None:
            publisher.kill()
            await publisher.wait()
        await store.close()
