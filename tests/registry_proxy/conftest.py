from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from registry_proxy.app import RegistrySettings, create_app
from registry_proxy.store import ContentStore
from tests.support.images import image_manifest
from tests.support.images import sha256_bytes as sha256


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[ContentStore]:
    s = ContentStore(tmp_path / "data")
    await s.open()
    yield s
    await s.close()


@pytest.fixture
async def client(store: ContentStore) -> AsyncIterator[httpx.AsyncClient]:
    """The registry app in-process (push enabled), over the store fixture."""
    app = create_app(store, RegistrySettings(push=True))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://registry") as c:
        yield c


async def push_blob(client: httpx.AsyncClient, repo: str, data: bytes) -> str:
    digest = sha256(data)
    r = await client.post(f"/v2/{repo}/blobs/uploads/?digest={digest}", content=data)
    assert r.status_code == 201, r.text
    return digest


async def push_image(
    client: httpx.AsyncClient, repo: str, tag: str, seed: bytes = b"x", **extra: Any
) -> tuple[str, bytes]:
    config = b'{"architecture":"amd64","os":"linux","seed":"' + seed + b'"}'
    layers = [seed * 1000 + bytes([i]) for i in range(2)]
    for blob in (config, *layers):
        await push_blob(client, repo, blob)
    body = image_manifest(config, layers, **extra)
    r = await client.put(
        f"/v2/{repo}/manifests/{tag}",
        content=body,
        headers={"content-type": "application/vnd.oci.image.manifest.v1+json"},
    )
    assert r.status_code == 201, r.text
    return r.headers["docker-content-digest"], body
