"""Ground Control fixtures: every storage and API test runs against both backends.

- ``pg_cluster`` (session): a throwaway PostgreSQL 15 cluster (tests/support/postgres.py).
- ``database_url``: parametrized ``sqlite`` / ``postgresql``; a fresh SQLite file or a
  fresh PostgreSQL database (CREATE DATABASE) per test.
- ``db`` / ``store``: that database opened and migrated.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from groundcontrol.app import build_app
from groundcontrol.auth import hash_token, new_operator_token
from groundcontrol.config import Config
from groundcontrol.db import Database, open_database
from groundcontrol.db.migrations import migrate
from groundcontrol.services import Services
from groundcontrol.store import Store
from tests.support.images import sha256_bytes
from tests.support.postgres import PostgresCluster, postgres_available, postgres_cluster
from tests.support.upstream import UpstreamRegistry

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    if not postgres_available():
        pytest.fail(
            "PostgreSQL 15 server binaries and a `postgres` user are needed (Debian package "
            "`postgresql`), and the tests must run as root",
            pytrace=False,
        )
    with postgres_cluster() as cluster:
        yield cluster


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'gc.db'}"
        return
    cluster: PostgresCluster = request.getfixturevalue("pg_cluster")
    url = asyncio.run(cluster.create_database("gc"))
    yield url
    asyncio.run(cluster.drop_database(url))


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = await open_database(database_url)
    await migrate(database)
    yield database
    await database.close()


@pytest.fixture
def store(db: Database) -> Store:
    return Store(db)


# --- Ground Control in process ---------------------------------------------------------


class FakeClock:
    """Injected time: tests move it instead of sleeping."""

    def __init__(self, start: float = 1_750_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass(frozen=True)
class CentralRegistry:
    """A docker-registry holding library/app:v1 (manifest) and library/multi:v1 (index)."""

    url: str
    app_digest: str
    app_size: int
    app_media_type: str
    multi_digest: str
    multi_size: int
    multi_media_type: str


@pytest.fixture(scope="session")
def central_registry(
    tmp_path_factory: pytest.TempPathFactory, image_layout: Any, skopeo: Any
) -> Iterator[CentralRegistry]:
    registry = UpstreamRegistry(tmp_path_factory.mktemp("central") / "registry").start()
    try:
        described = {}
        for tag in ("app:v1", "multi:v1"):
            dst = f"docker://{registry.host}/library/{tag}"
            skopeo.copy(image_layout.oci(tag), dst, all_images=True)
            raw = skopeo.inspect_raw(dst)
            described[tag] = (
                sha256_bytes(raw),
                len(raw),
                json.loads(raw)["mediaType"],
            )
        yield CentralRegistry(registry.url, *described["app:v1"], *described["multi:v1"])
    finally:
        registry.stop()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def gc_config(tmp_path: Path, database_url: str) -> Config:
    return Config(
        listen="127.0.0.1:0",
        data_dir=tmp_path / "gc",
        database=database_url,
        register_rate_limit=1000,
    )


@pytest.fixture
async def services(gc_config: Config, clock: FakeClock) -> AsyncIterator[Services]:
    s = await Services.open(gc_config, clock=clock)
    yield s
    await s.close()


@pytest.fixture
async def client(services: Services) -> AsyncIterator[httpx.AsyncClient]:
    app = build_app(services)
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
        yield c


@pytest.fixture
async def operator_token(services: Services) -> str:
    token_id, token = new_operator_token()
    async with services.store.transaction() as q:
        await q.insert_api_token(token_id, "test operator", hash_token(token), int(services.now()))
    return token


@pytest.fixture
def op(operator_token: str) -> dict[str, str]:
    """Headers of an operator request."""
    return {"Authorization": f"Bearer {operator_token}"}
