"""Replication against real upstream registries, in-process: what refers to an image is
kept, so that signature checks work offline, and an image the upstream loses fails alone.

In-process replicator and proxy against Debian's docker-registry, which has no referrers
API: a cosign-style signature under ``sha256-<hex>.sig`` and an SBOM listed in the OCI
referrers tag schema's index (``sha256-<hex>``) are replicated with their blobs, pinned,
and answer from the store with the upstream stopped (the tag, and the satellite's own
referrers API). A signature whose blob the upstream lost fails its image alone.

Against an upstream that answers the referrers API (a satellite's own registry), the
referrers it lists are replicated though no tag names them, and one added later is picked
up when an image held already refreshes its referrers (not on every pass).

A manifest deleted upstream fails its image alone (the others converge) and the image
recovers once it is pushed back and its backoff has passed."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from appliance.replicate import PIN_OWNER, REFERRERS_REFRESH, Replicator
from groundcontrol.contract import ImageDescriptor, StateDocument
from registry_proxy.digest import Digest
from registry_proxy.metrics import Metrics
from registry_proxy.proxy import Proxy, UpstreamLink
from registry_proxy.referrers import referrer_tags
from registry_proxy.routing import Router, UpstreamName
from registry_proxy.store import ContentStore
from registry_proxy.upstream import UpstreamClient
from tests.conftest import SatelliteFactory
from tests.support.artifacts import attach, sbom_by_digest
from tests.support.images import ImageRef, build_image
from tests.support.skopeo import Skopeo
from tests.support.upstream import UpstreamRegistry


def state(*images: ImageRef) -> StateDocument:
    now = datetime.now(UTC)
    return StateDocument(
        satellite="shop",
        version=1,
        issued_at=now,
        expires=now + timedelta(days=1),
        images=tuple(
            ImageDescriptor("team/app", i.tag, i.digest, i.media_type, i.size) for i in images
        ),
    )


@contextlib.asynccontextmanager
async def replicating(
    data: Path, url: str, clock: Callable[[], float] = time.monotonic
) -> AsyncIterator[tuple[Replicator, ContentStore]]:
    """A store, a proxy to the registry at ``url`` and a replicator over them."""
    store = ContentStore(data)
    await store.open()
    client = UpstreamClient("up", url, backoff=0.01, max_backoff=0.05, retries=1)
    proxy = Proxy(store, {"up": UpstreamLink(client, default=True)}, Metrics(), tag_timeout=2.0)
    router = Router([UpstreamName("up", url, default=True)])
    try:
        yield Replicator(store, proxy, lambda: router, clock=clock), store
    finally:
        await proxy.close()
        await store.close()


@pytest.fixture
async def rig(
    tmp_path: Path, upstream_registry: UpstreamRegistry
) -> AsyncIterator[tuple[Replicator, ContentStore]]:
    async with replicating(tmp_path / "data", upstream_registry.url) as made:
        yield made


async def test_signatures_and_sboms_are_replicated_and_answer_offline(
    tmp_path: Path,
    upstream_registry: UpstreamRegistry,
    skopeo: Skopeo,
    rig: tuple[Replicator, ContentStore],
) -> None:
    replicator, store = rig
    layout = tmp_path / "layout"
    app = build_image(layout, "v1", layers=2, layer_size=16 * 1024, seed="signed")
    skopeo.copy(f"oci:{layout}:v1", f"docker://{upstream_registry.host}/team/app:v1")
    artifacts = attach(upstream_registry, "team/app", app)

    result = await replicator.reconcile(state(app))
    assert result.present == 1 and result.failed == 0, replicator.statuses(state(app))
    pins = {str(d) for d in await store.meta.pinned(PIN_OWNER)}
    assert set(artifacts.values()) | set(app.all_digests) <= pins

    upstream_registry.stop()  # offline: the store alone answers
    repo = "up/team/app"
    subject = Digest.parse(app.digest)
    sig_tag = referrer_tags(subject)[1]
    assert str((await store.resolve(repo, sig_tag)).digest) == artifacts["signature"]
    for blob in ("signature_layer", "sbom_layer", "empty"):
        assert await store.blob_size(repo, Digest.parse(artifacts[blob])) > 0
    listed = await store.referrers(repo, subject, None)
    assert [str(d.digest) for d in listed] == [artifacts["sbom"]]
    # a second pass with everything present fetches nothing (the upstream is gone)
    again = await replicator.reconcile(state(app))
    assert again.present == 1 and again.blobs_fetched == 0


async def test_a_signature_the_upstream_lost_fails_its_image_alone(
    tmp_path: Path,
    upstream_registry: UpstreamRegistry,
    skopeo: Skopeo,
    rig: tuple[Replicator, ContentStore],
) -> None:
    replicator, _ = rig
    layout = tmp_path / "layout"
    signed = build_image(layout, "v1", layers=1, layer_size=8 * 1024, seed="lost")
    plain = build_image(layout, "v2", layers=1, layer_size=8 * 1024, seed="plain")
    for tag in ("v1", "v2"):
        skopeo.copy(f"oci:{layout}:{tag}", f"docker://{upstream_registry.host}/team/app:{tag}")
    artifacts = attach(upstream_registry, "team/app", signed)
    url = f"{upstream_registry.url}/v2/team/app/blobs/{artifacts['signature_layer']}"
    async with httpx.AsyncClient() as c:
        assert (await c.delete(url)).status_code == 202

    doc = state(signed, plain)
    result = await replicator.reconcile(doc)
    by_digest = {s.digest: s for s in replicator.statuses(doc)}
    assert result.present == 1 and result.failed == 1
    assert by_digest[plain.digest].status == "present"
    failed = by_digest[signed.digest]
    assert failed.status == "failed" and failed.error
    assert artifacts["signature_layer"] in failed.error


async def test_referrers_api_upstream_and_a_referrer_added_later(
    tmp_path: Path, satellite_factory: SatelliteFactory, skopeo: Skopeo
) -> None:
    upstream = satellite_factory()  # a registry that answers GET /v2/<name>/referrers/<digest>
    layout = tmp_path / "layout"
    app = build_image(layout, "v1", layers=1, layer_size=8 * 1024, seed="api")
    skopeo.copy(f"oci:{layout}:v1", f"docker://{upstream.host}/team/app:v1")
    with httpx.Client(base_url=upstream.url, timeout=60) as c:
        first = sbom_by_digest(c, "team/app", app, b'{"spdxVersion": "SPDX-2.3", "name": "first"}')

    now = [1000.0]
    repo, subject, doc = "up/team/app", Digest.parse(app.digest), state(app)
    async with replicating(tmp_path / "data", upstream.url, lambda: now[0]) as made:
        replicator, store = made
        result = await replicator.reconcile(doc)
        assert result.present == 1 and result.failed == 0, replicator.statuses(doc)
        listed = [str(d.digest) for d in await store.referrers(repo, subject, None)]
        assert listed == [first["manifest"]]  # found by the API: no tag names it
        pins = {str(d) for d in await store.meta.pinned(PIN_OWNER)}
        assert {first["manifest"], first["layer"]} <= pins
        with httpx.Client(base_url=upstream.url, timeout=60) as c:
            tags = c.get("/v2/team/app/tags/list").json()["tags"]
            second = sbom_by_digest(
                c, "team/app", app, b'{"spdxVersion": "SPDX-2.3", "name": "second"}'
            )
        assert not set(referrer_tags(subject)) & set(tags)  # the tag schema was not used

        # a pass soon after (another image's retry, say) does not ask the upstream again
        await replicator.reconcile(doc)
        listed = [str(d.digest) for d in await store.referrers(repo, subject, None)]
        assert listed == [first["manifest"]]
        # once the refresh is due, the referrer added meanwhile is replicated and pinned
        now[0] += REFERRERS_REFRESH
        result = await replicator.reconcile(doc)
        assert result.present == 1 and result.pinned == 2  # its manifest and layer
        listed = [str(d.digest) for d in await store.referrers(repo, subject, None)]
        assert sorted(listed) == sorted([first["manifest"], second["manifest"]])
        pins = {str(d) for d in await store.meta.pinned(PIN_OWNER)}
        assert {second["manifest"], second["layer"]} <= pins


async def test_a_manifest_deleted_upstream_fails_alone_and_recovers_when_pushed_back(
    tmp_path: Path, upstream_registry: UpstreamRegistry, skopeo: Skopeo
) -> None:
    layout = tmp_path / "layout"
    kept = build_image(layout, "v1", layers=1, layer_size=8 * 1024, seed="kept")
    gone = build_image(layout, "v2", layers=1, layer_size=8 * 1024, seed="gone")
    for tag in ("v1", "v2"):
        skopeo.copy(
            f"oci:{layout}:{tag}",
            f"docker://{upstream_registry.host}/team/app:{tag}",
            "--preserve-digests",
        )
    async with httpx.AsyncClient(base_url=upstream_registry.url, timeout=60) as c:
        assert (await c.delete(f"/v2/team/app/manifests/{gone.digest}")).status_code == 202
        assert (await c.head(f"/v2/team/app/manifests/{gone.digest}")).status_code == 404

    now = [1000.0]
    doc = state(kept, gone)
    async with replicating(tmp_path / "data", upstream_registry.url, lambda: now[0]) as made:
        replicator, store = made
        result = await replicator.reconcile(doc)
        by_digest = {s.digest: s for s in replicator.statuses(doc)}
        assert result.present == 1 and result.failed == 1
        assert by_digest[kept.digest].status == "present"
        failed = by_digest[gone.digest]
        assert failed.status == "failed" and failed.error and "not known upstream" in failed.error
        due = replicator.next_retry()
        assert due is not None and due > now[0]  # backed off, not retried at once

        skopeo.copy(  # pushed back, same digest
            f"oci:{layout}:v2",
            f"docker://{upstream_registry.host}/team/app:v2",
            "--preserve-digests",
        )
        await replicator.reconcile(doc)  # before its backoff has passed: not tried
        assert {s.digest: s.status for s in replicator.statuses(doc)}[gone.digest] == "failed"
        now[0] = due
        result = await replicator.reconcile(doc)
        assert result.present == 2 and result.failed == 0, replicator.statuses(doc)
        pins = {str(d) for d in await store.meta.pinned(PIN_OWNER)}
        assert set(gone.all_digests) | set(kept.all_digests) <= pins
        row = await store.resolve("up/team/app", Digest.parse(gone.digest))
        assert await store.manifest_bytes(row) == gone.manifest_bytes()
