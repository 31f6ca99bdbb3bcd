"""The proxy in-process against Debian's docker-registry: upstream manifests are answered
once verified and stored in the background (the store's write held back, or failing
like a full disk), and the cache budget is kept after fills without failing them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from registry_proxy.content import CacheStatus, Content, FillSource
from registry_proxy.digest import Digest
from registry_proxy.errors import RegistryError
from registry_proxy.manifest import parse_manifest
from registry_proxy.metrics import Metrics
from registry_proxy.proxy import Proxy, UpstreamLink
from registry_proxy.routing import Target
from registry_proxy.store import ContentStore
from registry_proxy.upstream import UpstreamClient
from tests.support.images import GeneratedLayout
from tests.support.skopeo import Skopeo
from tests.support.upstream import UpstreamRegistry

TARGET = Target(name="team/app", repo="up/team/app", upstream="up", upstream_repo="team/app")


@pytest.fixture
async def rig(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    upstream_registry: UpstreamRegistry,
    skopeo: Skopeo,
    image_layout: GeneratedLayout,
) -> AsyncIterator[tuple[Proxy, ContentStore]]:
    skopeo.copy(image_layout.oci("app:v1"), f"docker://{upstream_registry.host}/team/app:v1")
    store = ContentStore(tmp_path / "data", max_bytes=getattr(request, "param", None))
    await store.open()
    client = UpstreamClient("up", upstream_registry.url, backoff=0.01, max_backoff=0.05)
    proxy = Proxy(store, {"up": UpstreamLink(client, default=True)}, Metrics(), tag_timeout=2.0)
    try:
        yield proxy, store
    finally:
        await proxy.close()
        await store.close()


def hold_writes(
    store: ContentStore, monkeypatch: pytest.MonkeyPatch, before: Callable[[], Awaitable[None]]
) -> None:
    real = store.put_manifest

    async def put_manifest(*args: Any, **kwargs: Any) -> Any:
        await before()
        return await real(*args, **kwargs)

    monkeypatch.setattr(store, "put_manifest", put_manifest)


async def test_a_manifest_is_answered_before_it_is_stored_and_then_read_back(
    rig: tuple[Proxy, ContentStore],
    image_layout: GeneratedLayout,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    proxy, store = rig
    release = asyncio.Event()
    hold_writes(store, monkeypatch, release.wait)

    row = await asyncio.wait_for(proxy.manifest(TARGET, "v1"), 10)  # not held up
    assert str(row.digest) == image_layout.app.digest
    assert await store.manifest_bytes(row) == image_layout.app.manifest_bytes()
    assert await store.meta.manifest_by_tag(TARGET.repo, "v1") is None  # not stored yet

    # the next manifest request of the repository waits for the write
    follower = asyncio.create_task(proxy.manifest(TARGET, row.digest))
    await asyncio.sleep(0.2)
    assert not follower.done()
    release.set()
    assert await asyncio.wait_for(follower, 10) == row
    assert await store.resolve(TARGET.repo, "v1") == row  # tag and manifest are stored
    assert store.blobs.path(row.digest).exists()


async def test_a_failed_write_still_answers_and_caches_nothing(
    rig: tuple[Proxy, ContentStore],
    image_layout: GeneratedLayout,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    proxy, store = rig

    async def disk_full() -> None:
        raise RegistryError("UNAVAILABLE", "no space left on the cache disk", status=507)

    hold_writes(store, monkeypatch, disk_full)
    with caplog.at_level(logging.ERROR, logger="satellite.proxy"):
        row = await proxy.manifest(TARGET, "v1")
        assert str(row.digest) == image_layout.app.digest
        again = await proxy.manifest(TARGET, "v1")  # waits for the failed write first
    assert again == row
    assert "could not cache a manifest of up/team/app" in caplog.text
    with pytest.raises(RegistryError) as caught:
        await store.resolve(TARGET.repo, "v1")
    assert caught.value.code == "MANIFEST_UNKNOWN"
    assert not store.blobs.path(row.digest).exists()


async def test_close_finishes_the_writes_already_answered(
    tmp_path: Path, rig: tuple[Proxy, ContentStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy, store = rig

    async def slow() -> None:
        await asyncio.sleep(0.3)

    hold_writes(store, monkeypatch, slow)
    row = await proxy.manifest(TARGET, "v1")
    await proxy.close()  # a shutdown right after the answer
    assert await store.resolve(TARGET.repo, "v1") == row


async def test_one_content_interface_answers_local_repositories_from_the_store(
    rig: tuple[Proxy, ContentStore],
) -> None:
    proxy, store = rig
    content: Content = proxy
    row, cache = await content.manifest_answer(TARGET, "v1")
    assert cache is CacheStatus.MISS
    assert await content.manifest_answer(TARGET, "v1") == (row, CacheStatus.HIT)  # stored now
    manifest = parse_manifest(await content.manifest_bytes(row), row.media_type)
    layer = manifest.blob_references()[0].digest
    source, blob_cache = await content.blob_answer(TARGET, layer)
    assert blob_cache is CacheStatus.MISS
    source.close()  # a client gone: the fill goes on
    await proxy.ensure_blob(TARGET, layer)  # joins it until published
    source, blob_cache = await content.blob_answer(TARGET, layer)
    source.close()
    assert blob_cache is CacheStatus.HIT
    assert await content.tag_list(TARGET, None, None) == ["v1"]
    # the same stored repository named without an upstream: the store's, nothing forwarded
    local = Target(name=TARGET.repo, repo=TARGET.repo)
    assert await content.manifest_answer(local, "v1") == (row, None)
    assert await content.manifest_bytes(row) == await store.manifest_bytes(row)
    # a local repository the upstream has and the store has not: never fetched
    with pytest.raises(RegistryError) as refused:
        await content.manifest_answer(Target(name="team/app", repo="team/app"), "v1")
    assert refused.value.code == "MANIFEST_UNKNOWN"
    with pytest.raises(RegistryError) as refused:
        await content.blob_answer(Target(name="team/app", repo="team/app"), layer)
    assert refused.value.code == "BLOB_UNKNOWN"
    assert await content.referrer_list(local, row.digest, None) == []
    opened, local_cache = await content.blob_answer(local, layer)  # filled: the store has it
    opened.close()
    assert local_cache is None


async def fill(proxy: Proxy, digest: Digest) -> None:
    """One blob through the proxy, read to its end like a client would."""
    source = await proxy.blob(TARGET, digest)
    if isinstance(source, FillSource):
        async for _ in source.reader.spans(0, source.size):
            pass
    source.close()


async def bounded(condition: Callable[[], bool]) -> None:
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition did not come true within 2 s")


@pytest.mark.parametrize("rig", [1], indirect=True)  # a 1-byte budget: evict all it can
async def test_fills_keep_the_budget_and_eviction_cannot_fail_them(
    rig: tuple[Proxy, ContentStore],
    image_layout: GeneratedLayout,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    proxy, store = rig
    config, *layers = (Digest.parse(d) for d in image_layout.app.blob_digests)
    await fill(proxy, config)
    await bounded(lambda: proxy.metrics.evictions._value.get() >= 1)
    assert not store.blobs.path(config).exists()  # fetched, served, then evicted

    async def broken() -> list[Digest]:
        raise RegistryError("UNAVAILABLE", "the database is unwell", status=503)

    monkeypatch.setattr(store, "enforce_budget", broken)
    with caplog.at_level(logging.ERROR, logger="satellite.proxy"):
        await fill(proxy, layers[0])  # succeeds: eviction is not part of the fill
        await bounded(lambda: "keeping the cache budget" in caplog.text)
    await bounded(lambda: store.blobs.path(layers[0]).exists())  # published, kept
    (await store.open_blob(TARGET.repo, layers[0])).close()
