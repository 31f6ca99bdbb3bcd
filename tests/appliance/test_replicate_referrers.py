"""Replication keeps what refers to an image, so that signature checks work offline.

In-process replicator and proxy against Debian's docker-registry, which has no referrers
API: a cosign-style signature under ``sha256-<hex>.sig`` and an SBOM listed in the OCI
referrers tag schema's index (``sha256-<hex>``) are replicated with their blobs, pinned,
and answer from the store with the upstream stopped (the tag, and the satellite's own
referrers API). A signature whose blob the upstream lost fails its image alone."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from appliance.replicate import PIN_OWNER, Replicator, referrer_tags
from groundcontrol.contract import ImageDescriptor, StateDocument
from registry_proxy.digest import Digest
from registry_proxy.metrics import Metrics
from registry_proxy.proxy import Proxy, UpstreamLink
from registry_proxy.routing import Router, UpstreamName
from registry_proxy.store import ContentStore
from registry_proxy.upstream import UpstreamClient
from tests.support.images import ImageRef, build_image, sha256_bytes
from tests.support.skopeo import Skopeo
from tests.support.upstream import UpstreamRegistry, push_blob

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
EMPTY = "application/vnd.oci.empty.v1+json"


_digest = sha256_bytes


def _blob(c: httpx.Client, repo: str, data: bytes) -> dict[str, Any]:
    return {"digest": push_blob(c, repo, data), "size": len(data)}


def _put_manifest(c: httpx.Client, repo: str, ref: str, doc: dict[str, Any]) -> dict[str, Any]:
    body = json.dumps(doc).encode()
    media_type = doc["mediaType"]
    r = c.put(f"/v2/{repo}/manifests/{ref}", content=body, headers={"Content-Type": media_type})
    assert r.status_code == 201, r.text
    return {"mediaType": media_type, "digest": _digest(body), "size": len(body)}


def attach(upstream: UpstreamRegistry, repo: str, image: ImageRef) -> dict[str, str]:
    """A cosign-style signature and an SBOM (by the referrers tag schema) for ``image``."""
    subject = {"mediaType": image.media_type, "digest": image.digest, "size": image.size}
    sig_tag, schema_tag = (
        referrer_tags(Digest.parse(image.digest))[1],
        referrer_tags(Digest.parse(image.digest))[0],
    )
    with httpx.Client(base_url=upstream.url, timeout=60) as c:
        empty = _blob(c, repo, b"{}")
        payload = json.dumps({"critical": {"image": {"docker-manifest-digest": image.digest}}})
        layer = _blob(c, repo, payload.encode())
        signature = _put_manifest(
            c,
            repo,
            sig_tag,
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **empty},
                "layers": [
                    {
                        "mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
                        **layer,
                        "annotations": {"dev.cosignproject.cosign/signature": "MEUCIQ=="},
                    }
                ],
            },
        )
        sbom_layer = _blob(c, repo, b'{"spdxVersion": "SPDX-2.3", "name": "app"}')
        sbom = _put_manifest(
            c,
            repo,
            "sbom-of-app",
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "artifactType": "application/spdx+json",
                "config": {"mediaType": EMPTY, **empty},
                "layers": [{"mediaType": "application/spdx+json", **sbom_layer}],
                "subject": subject,
            },
        )
        _put_manifest(
            c,
            repo,
            schema_tag,
            {
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": [{**sbom, "artifactType": "application/spdx+json"}],
            },
        )
    return {
        "signature": signature["digest"],
        "signature_layer": layer["digest"],
        "sbom": sbom["digest"],
        "sbom_layer": sbom_layer["digest"],
        "empty": empty["digest"],
    }


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


@pytest.fixture
async def rig(
    tmp_path: Path, upstream_registry: UpstreamRegistry
) -> AsyncIterator[tuple[Replicator, ContentStore]]:
    store = ContentStore(tmp_path / "data")
    await store.open()
    client = UpstreamClient("up", upstream_registry.url, backoff=0.01, max_backoff=0.05, retries=1)
    proxy = Proxy(store, {"up": UpstreamLink(client, default=True)}, Metrics(), tag_timeout=2.0)
    router = Router([UpstreamName("up", upstream_registry.url, default=True)])
    try:
        yield Replicator(store, proxy, lambda: router), store
    finally:
        await proxy.close()
        await store.close()


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
