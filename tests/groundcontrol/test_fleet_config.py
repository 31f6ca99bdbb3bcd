"""The signed config tells a satellite where things are: the central registry as its
default upstream (with the credentials an operator set for that host, never Ground
Control's own resolver credentials) and the state registry that holds its state artifact.
Runs `groundcontrol serve` as a process on both backends against a real docker-registry."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from groundcontrol.config import Config
from groundcontrol.models import SatelliteUpstream, effective_config
from tests.groundcontrol.conftest import CentralRegistry
from tests.groundcontrol.fleet import SimSatellite
from tests.groundcontrol.test_serve import gc
from tests.support.groundcontrol import GroundControlProcess


def test_central_registry_is_the_default_upstream_unless_overridden() -> None:
    config = Config(registry_url="https://Harbor.example:8443/")
    central = SatelliteUpstream("harbor.example:8443", "https://Harbor.example:8443", default=True)
    assert effective_config(config, {}).upstreams == (central,)
    mirror = {"name": "docker.io", "url": "https://mirror.example", "default": True}
    assert effective_config(config, {"upstreams": [mirror]}).upstreams == (
        SatelliteUpstream("docker.io", "https://mirror.example", True),
    )
    assert effective_config(config, {"upstreams": []}).upstreams == ()  # none on purpose
    assert effective_config(Config(), {}).upstreams == ()  # no central registry configured
    assert "state_registry" not in effective_config(config, {}).to_dict()
    with_state = Config(state_registry_url="http://127.0.0.1:5000", state_registry_repository="s")
    assert effective_config(with_state, {}).to_dict()["state_registry"] == {
        "url": "http://127.0.0.1:5000",
        "repository": "s",
    }


@pytest.fixture
def server(
    tmp_path: Path, database_url: str, central_registry: CentralRegistry
) -> Iterator[tuple[GroundControlProcess, list[str]]]:
    data = tmp_path / "gc"
    config = tmp_path / "gc.toml"
    config.write_text(
        f'[registry]\nurl = "{central_registry.url}"\n'
        'username = "resolver"\npassword = "resolver-secret"\n'
        f'[state_registry]\nurl = "{central_registry.url}"\nrepository = "fleet/state"\n'
        'retry_interval = "0s"\n'
    )
    local = ["--database", database_url, "--data-dir", str(data), "--config", str(config)]
    process = GroundControlProcess(tmp_path, *local).launch()
    try:
        process.wait()
        token = gc("admin", "token", "create", "ops", *local).strip()
        yield process, ["--url", process.url, "--token", token]
    finally:
        assert process.stop() == 0, process.log_tail()


async def test_signed_config_names_the_central_registry_and_state_registry(
    server: tuple[GroundControlProcess, list[str]], central_registry: CentralRegistry
) -> None:
    process, remote = server
    host = central_registry.url.removeprefix("http://")
    gc("group", "create", "shops", "--image", "library/app:v1", *remote)
    join = gc("satellite", "create", "s1", "--group", "shops", *remote).strip()
    async with httpx.AsyncClient(base_url=process.url) as client:
        sat = SimSatellite(client, "s1")
        registration = await sat.register(join, time.time())
        central = {"name": host, "url": central_registry.url, "default": True}
        state_registry = {"url": central_registry.url, "repository": "fleet/state"}
        assert registration["config"]["upstreams"] == [central]
        assert registration["config"]["state_registry"] == state_registry
        # Ground Control's own resolver credentials are never handed out
        assert registration["upstream_credentials"] == []
        doc = await sat.state(time.time())  # verified against the pinned root
        assert doc.config["upstreams"] == [central]
        assert doc.config["state_registry"] == state_registry

        gc("credential", "set", host, "--username", "puller", *remote, stdin="pull-secret\n")
        r = await client.get("/api/v1/satellites/s1/credentials", headers=sat.headers)
        assert r.status_code == 200
        assert r.json()["upstream_credentials"] == [
            {"registry": host, "username": "puller", "password": "pull-secret"}
        ]
