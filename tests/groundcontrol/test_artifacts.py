"""Signed state pushed to a real registry (Debian's docker-registry) as OCI artifacts with
oras-py, pulled back with oras-py and verified with the contract; a registry that is down
never breaks publishing through the API."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from oras.client import OrasClient

from groundcontrol import keys as keymod
from groundcontrol.app import build_app
from groundcontrol.artifacts import (
    ANNOTATION_ROOT_VERSION,
    ANNOTATION_SATELLITE,
    ANNOTATION_STATE_VERSION,
    ENVELOPE_MEDIA_TYPE,
    ROOT_ARTIFACT_TYPE,
    STATE_ARTIFACT_TYPE,
    root_artifact,
    state_artifact,
)
from groundcontrol.auth import hash_token, new_operator_token
from groundcontrol.config import Config, load_config
from groundcontrol.contract import verify_root, verify_root_chain, verify_state
from groundcontrol.services import Services
from registry_proxy.units import ConfigError
from tests.groundcontrol.conftest import CentralRegistry, FakeClock
from tests.groundcontrol.fleet import SimSatellite, at
from tests.support.net import free_port
from tests.support.upstream import UpstreamRegistry


def _prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}/satellite-state"


@pytest.fixture
def gc_config(gc_config: Config, central_registry: CentralRegistry) -> Config:
    return dataclasses.replace(
        gc_config,
        registry_url=central_registry.url,
        state_registry_url=central_registry.url,
        state_registry_repository=_prefix(),
    )


def host_of(url: str) -> str:
    return url.removeprefix("http://")


def oras_pull(host: str, ref: str, outdir: Path) -> dict[str, bytes]:
    client = OrasClient(hostname=host, insecure=True)
    files = client.pull(target=f"{host}/{ref}", outdir=str(outdir))
    return {Path(f).name: Path(f).read_bytes() for f in files}


def oras_manifest(host: str, ref: str) -> dict[str, Any]:
    client = OrasClient(hostname=host, insecure=True)
    manifest: dict[str, Any] = client.get_manifest(f"{host}/{ref}")
    return manifest


async def flush(services: Services) -> None:
    async with asyncio.timeout(60):
        await services.artifacts.flush()


async def fleet_of_one(
    client: httpx.AsyncClient, op: dict[str, str], clock: FakeClock
) -> SimSatellite:
    r = await client.post("/api/v1/groups", json={"name": "shops"}, headers=op)
    assert r.status_code == 201, r.text
    r = await client.post(
        "/api/v1/satellites", json={"name": "s1", "groups": ["shops"]}, headers=op
    )
    assert r.status_code == 201, r.text
    sat = SimSatellite(client, "s1")
    await sat.register(r.json()["join_token"]["token"], clock.now)
    return sat


def test_artifact_manifests_are_oci_artifacts() -> None:
    roots = [(1, b'{"r":1}'), (2, b'{"r":2}')]
    art = state_artifact("s1", 7, b'{"env":1}', roots, 1_750_000_000)
    m = art.manifest()
    assert m["artifactType"] == STATE_ARTIFACT_TYPE
    assert m["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert m["config"]["mediaType"] == "application/vnd.oci.empty.v1+json"
    assert m["config"]["size"] == 2
    assert [layer["mediaType"] for layer in m["layers"]] == [ENVELOPE_MEDIA_TYPE] * 3
    titles = [layer["annotations"]["org.opencontainers.image.title"] for layer in m["layers"]]
    assert titles == ["state.json", "root-1.json", "root-2.json"]
    assert m["annotations"][ANNOTATION_SATELLITE] == "s1"
    assert m["annotations"][ANNOTATION_STATE_VERSION] == "7"
    assert m["annotations"][ANNOTATION_ROOT_VERSION] == "2"
    assert (
        art.manifest_bytes()
        == state_artifact("s1", 7, b'{"env":1}', roots, 1_750_000_000).manifest_bytes()
    )
    r = root_artifact(roots, 0).manifest()
    assert r["artifactType"] == ROOT_ARTIFACT_TYPE and len(r["layers"]) == 2


def test_state_registry_config(tmp_path: Path) -> None:
    path = tmp_path / "gc.toml"
    path.write_text(
        '[state_registry]\nurl = "https://harbor.example:8443/"\nrepository = "fleet/state"\n'
        'retry_interval = "5m"\n'
    )
    config = load_config(path, environ={})
    assert config.state_registry_url == "https://harbor.example:8443"
    assert config.state_registry_repository == "fleet/state"
    assert config.state_registry_retry_interval == 300
    assert load_config(None, environ={}).state_registry_url == ""  # off by default
    for bad, key in (
        ('url = "harbor.example"', "state_registry.url"),
        ('url = "https://h.example/some/path"', "state_registry.url"),
        ('repository = "Bad Repo"', "state_registry.repository"),
    ):
        path.write_text(f"[state_registry]\n{bad}\n")
        with pytest.raises(ConfigError, match=key):
            load_config(path, environ={})


async def test_group_change_pushes_a_verifiable_artifact(
    client: httpx.AsyncClient,
    op: dict[str, str],
    clock: FakeClock,
    services: Services,
    central_registry: CentralRegistry,
    tmp_path: Path,
) -> None:
    sat = await fleet_of_one(client, op, clock)
    r = await client.put("/api/v1/groups/shops", json={"images": ["library/app:v1"]}, headers=op)
    assert r.json()["published"] == [{"satellite": "s1", "version": 2}]
    await flush(services)
    assert services.artifacts.stats.failures == 0
    host = host_of(central_registry.url)
    prefix = services.config.state_registry_repository

    manifest = oras_manifest(host, f"{prefix}/s1:v2")
    assert manifest["artifactType"] == STATE_ARTIFACT_TYPE
    assert manifest["layers"][0]["mediaType"] == ENVELOPE_MEDIA_TYPE
    assert manifest["annotations"][ANNOTATION_SATELLITE] == "s1"
    assert manifest["annotations"][ANNOTATION_STATE_VERSION] == "2"
    assert oras_manifest(host, f"{prefix}/s1:latest") == manifest

    files = oras_pull(host, f"{prefix}/s1:v2", tmp_path / "pulled")
    assert sat.root is not None
    doc = verify_state(files["state.json"], sat.root, "s1", at(clock.now), 1)
    assert doc.version == 2
    assert [i.repository for i in doc.images] == ["library/app"]
    # byte for byte what the API serves
    api = await client.get("/api/v1/satellites/s1/state", headers=sat.headers)
    assert api.content == files["state.json"]
    # the root chain travels with it: trust on first use gives the same root
    assert verify_root(files["root-1.json"], None, at(clock.now)) == sat.root
    # and the trust repository holds the chain alone
    chain = oras_pull(host, f"{prefix}/trust/root:latest", tmp_path / "roots")
    assert list(chain) == ["root-1.json"]

    # the root rotates: the chain grows in the registry, the next state carries it
    await keymod.rotate(services.store, services.keys, "state", clock.now)
    stats = await services.artifacts.sync()
    assert stats.failures == 0
    chain = oras_pull(host, f"{prefix}/trust/root:v2", tmp_path / "roots2")
    assert verify_root_chain([chain["root-2.json"]], sat.root, at(clock.now)).version == 2
    r = await client.post("/api/v1/satellites/s1/publish", headers=op)
    assert r.json()["published"] == [{"satellite": "s1", "version": 3}]
    await flush(services)
    files = oras_pull(host, f"{prefix}/s1:latest", tmp_path / "pulled3")
    root2 = verify_root_chain([files["root-2.json"]], sat.root, at(clock.now))
    assert verify_state(files["state.json"], root2, "s1", at(clock.now), 2).version == 3


async def test_registry_down_does_not_break_publishing(
    tmp_path: Path,
    database_url: str,
    central_registry: CentralRegistry,
    clock: FakeClock,
) -> None:
    state_registry = UpstreamRegistry(tmp_path / "state-registry", port=free_port())
    config = Config(
        listen="127.0.0.1:0",
        data_dir=tmp_path / "gc",
        database=database_url,
        register_rate_limit=1000,
        registry_url=central_registry.url,
        registry_timeout=5,
        state_registry_url=state_registry.url,  # nothing listens there yet
        state_registry_repository=_prefix(),
    )
    services = await Services.open(config, clock=clock)
    try:
        token_id, token = new_operator_token()
        async with services.store.transaction() as q:
            await q.insert_api_token(token_id, "op", hash_token(token), int(clock.now))
        op = {"Authorization": f"Bearer {token}"}
        transport = httpx.ASGITransport(app=build_app(services), client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            sat = await fleet_of_one(client, op, clock)
            r = await client.put(
                "/api/v1/groups/shops", json={"images": ["library/app:v1"]}, headers=op
            )
            assert r.status_code == 200, r.text
            assert r.json()["published"] == [{"satellite": "s1", "version": 2}]
            assert (await sat.state(clock.now, 1)).version == 2  # the API path stands
            await flush(services)
            stats = services.artifacts.stats
            assert stats.failures >= 1 and stats.pending >= 1 and stats.pushed == 0
            r = await client.get("/api/v1/status", headers=op)
            assert r.json()["state_registry"]["failures"] == stats.failures

            # the registry comes up: the next publish pushes what was missed
            state_registry.start()
            try:
                r = await client.post("/api/v1/satellites/s1/publish", headers=op)
                assert r.json()["published"] == [{"satellite": "s1", "version": 3}]
                await flush(services)
                assert services.artifacts.stats.pending == 0
                host = host_of(state_registry.url)
                prefix = config.state_registry_repository
                files = oras_pull(host, f"{prefix}/s1:v3", tmp_path / "pulled")
                assert sat.root is not None
                doc = verify_state(files["state.json"], sat.root, "s1", at(clock.now), 2)
                assert doc.version == 3
                assert oras_manifest(host, f"{prefix}/trust/root:v1")["layers"]
            finally:
                state_registry.stop()
    finally:
        await services.close()


async def test_push_with_upstream_credentials(
    tmp_path: Path,
    client: httpx.AsyncClient,
    op: dict[str, str],
    clock: FakeClock,
    services: Services,
) -> None:
    """A registry with htpasswd auth: the upstream credential configured for its host is
    used (the same as satellites get), here set before the first publish."""
    registry = UpstreamRegistry(tmp_path / "auth-registry", auth=("pusher", "s3cret")).start()
    try:
        pusher = services.artifacts
        pusher.config = dataclasses.replace(pusher.config, state_registry_url=registry.url)
        pusher.target = dataclasses.replace(
            pusher.target or pytest.fail("pushing is configured"),
            host=registry.host,
        )
        r = await client.put(
            f"/api/v1/upstream-credentials/{registry.host}",
            json={"username": "pusher", "password": "s3cret"},
            headers=op,
        )
        assert r.status_code == 200, r.text
        await fleet_of_one(client, op, clock)
        await flush(services)
        assert pusher.stats.failures == 0, pusher.stats.last_error
        prefix = services.config.state_registry_repository
        url = f"{registry.url}/v2/{prefix}/s1/manifests/v1"
        async with httpx.AsyncClient(trust_env=False) as plain:
            anon = await plain.get(url)
            assert anon.status_code == 401
            authed = await plain.get(
                url,
                auth=("pusher", "s3cret"),
                headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
            )
        assert authed.status_code == 200
        assert json.loads(authed.content)["artifactType"] == STATE_ARTIFACT_TYPE
    finally:
        registry.stop()
