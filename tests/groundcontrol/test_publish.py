"""Publishing: images resolved against a real registry (Debian's docker-registry),
new versions for exactly the affected satellites, and the pure merging underneath."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from groundcontrol.config import Config
from groundcontrol.errors import UpstreamError
from groundcontrol.models import Group, parse_images
from groundcontrol.publish import content_hash, desired_images
from groundcontrol.registry_credentials import RegistryCredentials
from groundcontrol.resolver import Resolver
from groundcontrol.services import Services
from tests.groundcontrol.conftest import CentralRegistry, FakeClock
from tests.groundcontrol.fleet import SimSatellite
from tests.support.net import free_port

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@pytest.fixture
def gc_config(gc_config: Config, central_registry: CentralRegistry) -> Config:
    return dataclasses.replace(gc_config, registry_url=central_registry.url)


def group(name: str, images: list[Any]) -> Group:
    return Group(name, "", parse_images(images), 0, 0)


def test_desired_images_merge_platforms_and_dedupe() -> None:
    a = group("a", [{"reference": "x/app:1", "platforms": ["linux/amd64"]}, "x/db:2"])
    b = group("b", [{"reference": "x/app:1", "platforms": ["linux/arm64"]}])
    c = group("c", ["x/app:1"])
    refs = desired_images([a, b])
    assert [(r.reference, r.platforms) for r in refs] == [
        ("x/app:1", ("linux/amd64", "linux/arm64")),
        ("x/db:2", ()),
    ]
    # an empty list means every platform, which absorbs explicit lists
    assert desired_images([a, c])[0].platforms == ()
    assert desired_images([]) == []


def test_content_hash_ignores_order_of_config_keys() -> None:
    assert content_hash([], {"a": 1, "b": 2}) == content_hash([], {"b": 2, "a": 1})
    assert content_hash([], {"a": 1}) != content_hash([], {"a": 2})


async def test_group_images_are_resolved_to_full_descriptors(
    client: httpx.AsyncClient,
    op: dict[str, str],
    clock: FakeClock,
    central_registry: CentralRegistry,
) -> None:
    r = await client.post(
        "/api/v1/groups",
        json={
            "name": "shops",
            "images": [
                "library/app:v1",
                {"reference": "library/multi:v1", "platforms": ["linux/arm64"]},
            ],
        },
        headers=op,
    )
    assert r.status_code == 201, r.text
    r = await client.post(
        "/api/v1/satellites", json={"name": "s1", "groups": ["shops"]}, headers=op
    )
    sat = SimSatellite(client, "s1")
    await sat.register(r.json()["join_token"]["token"], clock.now)
    doc = await sat.state(clock.now)
    by_repo = {i.repository: i for i in doc.images}
    app, multi = by_repo["library/app"], by_repo["library/multi"]
    assert (app.tag, app.digest, app.size, app.media_type) == (
        "v1",
        central_registry.app_digest,
        central_registry.app_size,
        central_registry.app_media_type,
    )
    assert (multi.digest, multi.size, multi.media_type, multi.platforms) == (
        central_registry.multi_digest,
        central_registry.multi_size,
        central_registry.multi_media_type,
        ("linux/arm64",),
    )


async def test_group_change_publishes_for_exactly_its_members(
    client: httpx.AsyncClient,
    op: dict[str, str],
    clock: FakeClock,
    central_registry: CentralRegistry,
) -> None:
    for name in ("g1", "g2"):
        await client.post("/api/v1/groups", json={"name": name}, headers=op)
    sats = {}
    for name, groups in (("a", ["g1"]), ("b", ["g1", "g2"]), ("c", ["g2"]), ("d", [])):
        r = await client.post(
            "/api/v1/satellites", json={"name": name, "groups": groups}, headers=op
        )
        sats[name] = SimSatellite(client, name)
        await sats[name].register(r.json()["join_token"]["token"], clock.now)
    r = await client.put("/api/v1/groups/g1", json={"images": ["library/app:v1"]}, headers=op)
    assert r.status_code == 200, r.text
    assert r.json()["published"] == [
        {"satellite": "a", "version": 2},
        {"satellite": "b", "version": 2},
    ]
    for name, version in (("a", 2), ("b", 2), ("c", 1), ("d", 1)):
        doc = await sats[name].state(clock.now)
        assert doc.version == version, name
    # digest references resolve too; b now holds the image by tag and by digest
    ref = f"library/app@{central_registry.app_digest}"
    r = await client.put("/api/v1/groups/g2", json={"images": [ref]}, headers=op)
    assert [p["satellite"] for p in r.json()["published"]] == ["b", "c"]
    doc_b = await sats["b"].state(clock.now)
    assert {(i.tag, i.digest) for i in doc_b.images} == {
        ("v1", central_registry.app_digest),
        (None, central_registry.app_digest),
    }


async def test_unresolvable_images_are_refused_and_nothing_changes(
    client: httpx.AsyncClient, op: dict[str, str]
) -> None:
    r = await client.post(
        "/api/v1/groups", json={"name": "g", "images": ["library/nope:v1"]}, headers=op
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "image_not_found"
    await client.post("/api/v1/groups", json={"name": "g"}, headers=op)
    await client.post("/api/v1/satellites", json={"name": "s", "groups": ["g"]}, headers=op)
    r = await client.put("/api/v1/groups/g", json={"images": ["library/app:v404"]}, headers=op)
    assert r.status_code == 422
    group_now = (await client.get("/api/v1/groups/g", headers=op)).json()
    assert group_now["images"] == []
    sat = (await client.get("/api/v1/satellites/s", headers=op)).json()
    assert sat["published_version"] == 1


async def test_unreachable_registry_is_a_502() -> None:
    resolver = Resolver(f"http://127.0.0.1:{free_port()}", timeout=2)
    try:
        with pytest.raises(Exception) as exc:
            await resolver.resolve(parse_images(["library/app:v1"])[0])
        assert getattr(exc.value, "status", None) == 502
        assert getattr(exc.value, "code", None) == "registry_unavailable"
    finally:
        await resolver.aclose()


async def test_basic_auth_registry(
    upstream_registry_factory: Callable[..., Any], image_layout: Any, skopeo: Any
) -> None:
    registry = upstream_registry_factory(auth=("ci", "pw"))
    skopeo.copy(
        image_layout.oci("app:v1"),
        f"docker://{registry.host}/team/app:v1",
        dest_creds=("ci", "pw"),
    )
    ref = parse_images(["team/app:v1"])[0]
    good = Resolver(registry.url, "ci", "pw")
    anonymous = Resolver(registry.url)
    try:
        desc = await good.resolve(ref)
        assert desc.media_type == OCI_MANIFEST and desc.digest.startswith("sha256:")
        with pytest.raises(Exception) as exc:
            await anonymous.resolve(ref)
        assert getattr(exc.value, "code", None) == "registry_unauthorized"
    finally:
        await good.aclose()
        await anonymous.aclose()


async def test_the_resolver_uses_the_credential_stored_for_its_host(
    upstream_registry_factory: Callable[..., Any],
    image_layout: Any,
    skopeo: Any,
    services: Services,
    client: httpx.AsyncClient,
    op: dict[str, str],
) -> None:
    """The same lookup as the state-artifact push: an upstream credential for the
    registry's host wins; without one the resolver is anonymous and refused."""
    registry = upstream_registry_factory(auth=("ci", "pw"))
    skopeo.copy(
        image_layout.oci("app:v1"),
        f"docker://{registry.host}/team/app:v1",
        dest_creds=("ci", "pw"),
    )
    credentials = RegistryCredentials(services.store, services.sealer, services.config)
    resolver = Resolver(registry.url, credentials=credentials.for_host)
    ref = parse_images(["team/app:v1"])[0]
    try:
        with pytest.raises(UpstreamError) as exc:
            await resolver.resolve(ref)
        assert exc.value.code == "registry_unauthorized"
        r = await client.put(
            f"/api/v1/upstream-credentials/{registry.host}",
            json={"username": "ci", "password": "pw"},
            headers=op,
        )
        assert r.status_code == 200, r.text
        desc = await resolver.resolve(ref)
        assert desc.media_type == OCI_MANIFEST and desc.digest.startswith("sha256:")
    finally:
        await resolver.aclose()
