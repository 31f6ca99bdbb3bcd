"""`satellite run`: the registry, and on a registered data dir the fleet agent beside it.

One process, one event loop: the registry app and the admin socket under hypercorn, the
fleet agent's loops as tasks started by the app's lifespan once the store is open. The
agent reaches the registry only through ``RegistryConsumer``: the signed config's cache
budget and upstreams, and upstream credentials from Ground Control.

Where a value comes from is kept for `satellite status`: ``local`` (the config file, the
environment or a flag; these win), ``signed`` (the applied state's config) or
``default``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from hypercorn.config import Config as HypercornConfig
from starlette.applications import Starlette

from appliance import zerocopy
from appliance.admin import admin_app, bind_socket, socket_path
from appliance.bundle import import_for_agent
from appliance.config import Config
from appliance.fleet import FleetAgent, Intervals
from appliance.fleetdb import FleetDB
from appliance.fleetmetrics import FleetMetrics
from appliance.gcclient import GroundControlClient
from appliance.identity import Identity, UpstreamCredential, load_identity, sweep_staged
from appliance.replicate import ReplicationLoop, Replicator, collect_garbage
from appliance.statereg import StateRegistryFallback
from appliance.workers import runtime_dir
from groundcontrol.contract import ImageStatus, StateDocument, TrustedState
from registry_proxy.app import RegistrySettings, create_app
from registry_proxy.deadline import BodyLimits
from registry_proxy.generation import SharedCounter
from registry_proxy.metrics import Metrics
from registry_proxy.progress import Progress
from registry_proxy.proxy import UpstreamLink
from registry_proxy.routing import Router, UpstreamName
from registry_proxy.store import ContentStore
from registry_proxy.upstream import UpstreamClient

log = logging.getLogger("satellite")

DEFAULT_STATE_INTERVAL = 60.0
DEFAULT_CHECKIN_INTERVAL = 60.0


def host_of(url: str) -> str:
    """``host[:port]`` of a URL, as Ground Control names registries in credentials."""
    return urlsplit(url).netloc


@dataclass
class RegistryConsumer:
    """Applies what the fleet agent verified to the running registry."""

    config: Config
    store: ContentStore
    app: Starlette
    metrics: Metrics
    credentials: tuple[UpstreamCredential, ...] = ()
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    agent: FleetAgent | None = None
    signed_upstreams: tuple[tuple[str, str, bool], ...] = ()
    # serving processes that share the bandwidth cap: each keeps within its share
    workers: int = 1

    def __post_init__(self) -> None:
        self._record_sources(None)
        registry = self.app.state.registry
        self.replicator = Replicator(
            self.store,
            registry.proxy,
            lambda: self.app.state.registry.router,
            on_change=self._images_changed,
            metrics=self.metrics,
        )
        self.replication = ReplicationLoop(
            self.replicator, lambda: self.agent.trust.state if self.agent else None
        )

    async def _images_changed(self) -> None:
        if self.agent is not None:
            await self.agent.check_images()

    # -- config -------------------------------------------------------------------------

    def _source(self, key: str, local_key: str, local: Any, signed: Any, default: Any) -> Any:
        if local_key in self.config.explicit:
            value, source = local, "local"
        elif signed is not None:
            value, source = signed, "signed"
        else:
            value, source = default, "default"
        self.sources[key] = {"value": value, "source": source}
        return value

    def _record_sources(self, signed: dict[str, Any] | None) -> None:
        signed = signed or {}
        budget = self._source(
            "cache_max_bytes",
            "storage.max_bytes",
            self.config.max_bytes,
            _int(signed.get("cache_max_bytes")),
            self.config.max_bytes,
        )
        self.store.max_bytes = budget or None
        self.metrics.cache_max.set(budget or 0)
        state_interval = self._source(
            "state_interval",
            "groundcontrol.state_interval",
            self.config.state_interval,
            _int(signed.get("state_interval")),
            DEFAULT_STATE_INTERVAL,
        )
        checkin_interval = self._source(
            "checkin_interval",
            "groundcontrol.checkin_interval",
            self.config.checkin_interval,
            _int(signed.get("checkin_interval")),
            DEFAULT_CHECKIN_INTERVAL,
        )
        bandwidth = self._source(
            "bandwidth_bytes_per_second",
            "-",
            None,
            _int(signed.get("bandwidth_bytes_per_second")),
            0,
        )
        self.app.state.registry.proxy.bandwidth.set_rate((bandwidth or 0) // self.workers)
        self.metrics.bandwidth_cap.set(bandwidth or 0)
        if self.agent is not None:
            self.agent.intervals.state = float(state_interval)
            self.agent.intervals.checkin = float(checkin_interval)
        self.signed_upstreams = _signed_upstreams(signed.get("upstreams"))
        self.sources["upstreams"] = {
            "value": [
                {"name": u.name, "url": u.url, "default": u.default, "source": "local"}
                for u in self.config.upstreams
            ]
            + [
                {"name": name, "url": url, "default": default, "source": "signed"}
                for name, url, default in self.signed_upstreams
                if name not in {u.name for u in self.config.upstreams}
            ],
            "source": "merged",
        }

    def upstreams(self, current: dict[str, UpstreamLink] | None = None) -> dict[str, UpstreamLink]:
        """Local upstreams, then the signed ones under names the local config does not
        use. An unchanged upstream keeps its object (breaker, connections)."""
        current = current or {}
        result: dict[str, UpstreamLink] = {}
        for name, url, default, local in upstream_names(self.config, self.signed_upstreams):
            kept = current.get(name)
            if kept is not None and kept.client.url == url.rstrip("/"):
                kept.default = default
                result[name] = kept
                continue
            username = local.username if local is not None else None
            password = local.password if local is not None else None
            if username is None:
                cred = self._credential_for(url)
                if cred is not None:
                    username, password = cred.username, cred.password
            result[name] = UpstreamLink(
                UpstreamClient(
                    name,
                    url,
                    username=username,
                    password=password,
                    ca_file=local.ca_file if local is not None else None,
                ),
                default=default,
            )
        return result

    def _credential_for(self, url: str) -> UpstreamCredential | None:
        host = host_of(url)
        return next((c for c in self.credentials if c.registry == host), None)

    # -- StateConsumer ------------------------------------------------------------------

    async def apply_state(self, doc: StateDocument) -> None:
        self._record_sources(doc.config)
        registry = self.app.state.registry
        before = dict(registry.proxy.upstreams)
        after = self.upstreams(before)
        if after.keys() != before.keys() or any(after[k] is not before[k] for k in after):
            registry.set_upstreams(after)
            log.info("upstreams now: %s", ", ".join(sorted(after)) or "none")
        registry.proxy.pin_tags(self.replicator.tag_pins(doc))
        self.replication.wake()

    def apply_credentials(self, credentials: Sequence[UpstreamCredential]) -> None:
        self.credentials = tuple(credentials)
        local = {u.name: u for u in self.config.upstreams}
        for name, up in self.app.state.registry.proxy.upstreams.items():
            if name in local and local[name].username is not None:
                continue  # a credential in the local config wins
            cred = self._credential_for(up.client.url)
            if cred is not None:
                up.client.auth.set_credentials(cred.username, cred.password)

    async def image_statuses(self, doc: StateDocument) -> list[ImageStatus]:
        return self.replicator.statuses(doc)

    async def cache_usage(self) -> tuple[int, int]:
        return await self.store.used_bytes(), self.store.max_bytes or 0


def upstream_names(
    config: Config, signed: tuple[tuple[str, str, bool], ...]
) -> list[tuple[str, str, bool, Any]]:
    """(name, url, default, local config entry or None): the local upstreams, then the
    signed ones under names the local config does not use."""
    local_names = {u.name for u in config.upstreams}
    has_local_default = any(u.default for u in config.upstreams)
    wanted: list[tuple[str, str, bool, Any]] = [
        (u.name, u.url, u.default, u) for u in config.upstreams
    ]
    for name, url, default in signed:
        if name not in local_names:
            wanted.append((name, url, default and not has_local_default, None))
    return wanted


def storage_router(config: Config, doc: StateDocument) -> Router:
    """The routing a state's images get once it is applied: under which repository the
    store keeps each (a bundle's import writes them there, so that serving and
    replication find them)."""
    signed = _signed_upstreams((doc.config or {}).get("upstreams"))
    return Router(
        [
            UpstreamName(name, url, default)
            for name, url, default, _ in upstream_names(config, signed)
        ]
    )


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _signed_upstreams(raw: object) -> tuple[tuple[str, str, bool], ...]:
    if not isinstance(raw, list):
        return ()
    result = []
    for item in raw:
        if not isinstance(item, dict):
            continue
        name, url, default = item.get("name"), item.get("url"), item.get("default", False)
        if (
            isinstance(name, str)
            and isinstance(url, str)
            and url.startswith(("http://", "https://"))
            and isinstance(default, bool)
        ):
            result.append((name, url.rstrip("/"), default))
    return tuple(result)


@dataclass
class Daemon:
    config: Config
    app: Starlette
    side_servers: list[tuple[Starlette, HypercornConfig]]


async def build(config: Config, *, primary: bool = True, shared: bool = False) -> Daemon:
    """The registry app, and with an identity the agent and the admin socket.

    ``shared``: one of several serving processes (appliance/workers.py), which swept the
    store before it started. Only the ``primary`` runs the agent, replication and the
    admin socket; the others follow the signed state it applies (``_follow``)."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    store = ContentStore(config.data_dir, max_bytes=config.max_bytes, shared=shared)
    metrics = Metrics()
    zerocopy.register_metrics(metrics.registry)
    identity = load_identity(config.data_dir)
    app = create_app(
        store,
        RegistrySettings(push=config.push),
        {},
        metrics=metrics,
        tag_timeout=config.tag_timeout,
        stale_after=config.stale_after,
        body_limits=BodyLimits(
            min_rate=config.body_min_rate,
            window=config.body_rate_window,
            timeout=config.body_timeout,
        ),
        access_log=config.log_format if config.log_access else None,
    )
    consumer = RegistryConsumer(config, store, app, metrics)
    if shared:
        consumer.workers = config.worker_count
        consumer._record_sources(None)
    # a 401/403 that a worker sees wakes the primary's agent (it alone asks Ground Control)
    refusals = SharedCounter(refusals_path(config)) if shared else None
    if not primary:
        if identity is not None:
            consumer.credentials = identity.upstream_credentials()
            if refusals is not None:
                app.state.registry.proxy.on_auth_error = _tell_primary(refusals)
        app.state.registry.set_upstreams(consumer.upstreams())
        _follow_lifespan(app, identity, consumer)
        return Daemon(config, app, [])
    sweep_staged(config.data_dir)
    agent: FleetAgent | None = None
    db: FleetDB | None = None
    if identity is not None:
        consumer.credentials = identity.upstream_credentials()
        db = await FleetDB(identity.db_path).open()
        stored = await db.load_trust()
        trust = TrustedState.load(
            identity.satellite, stored.root_chain, stored.state_envelope, stored.highest_version
        )
        agent = _agent(config, identity, db, trust, consumer, metrics)
        consumer.agent = agent
        app.state.registry.proxy.on_auth_error = agent.credentials_refused
        consumer._record_sources(trust.state.config if trust.state else None)
    app.state.registry.set_upstreams(consumer.upstreams())
    _wrap_lifespan(app, agent, db, consumer, refusals)
    side: list[tuple[Starlette, HypercornConfig]] = []
    sock = bind_socket(socket_path(config.data_dir))

    async def status() -> dict[str, Any]:
        if agent is None:
            return {
                "running": True,
                "registered": False,
                "config": consumer.sources,
                "store": await _store_status(store),
            }
        return {
            **await agent.status(),
            "registered": True,
            "config": consumer.sources,
            "store": await _store_status(store),
            "replication": consumer.replicator.progress(),
        }

    async def sync() -> dict[str, Any]:
        if agent is None:
            return {"outcome": "error", "version": 0, "message": "not registered"}
        return (await agent.sync_now()).to_dict()

    async def gc(dry_run: bool) -> dict[str, Any]:
        return await collect_garbage(store, dry_run=dry_run)

    async def bundle(path: Path, progress: Progress | None) -> dict[str, Any]:
        if agent is None:
            return {"outcome": "error", "message": "not registered"}
        return await import_for_agent(
            path, store, agent, lambda doc: storage_router(config, doc), progress
        )

    admin_config = HypercornConfig()
    admin_config.bind = [f"fd://{sock.fileno()}"]
    admin_config.accesslog = None
    admin_config.errorlog = logging.getLogger("hypercorn.error")
    admin_config.graceful_timeout = 2
    admin_config.include_server_header = False
    app.state.admin_socket = sock  # kept open for the process's life
    side.append((admin_app(status, sync, gc, bundle), admin_config))
    return Daemon(config, app, side)


async def _store_status(store: ContentStore) -> dict[str, Any]:
    return {"used_bytes": await store.used_bytes(), "max_bytes": store.max_bytes or 0}


def _agent(
    config: Config,
    identity: Identity,
    db: FleetDB,
    trust: TrustedState,
    consumer: RegistryConsumer,
    metrics: Metrics,
) -> FleetAgent:
    url = config.groundcontrol_url or identity.groundcontrol_url
    client = GroundControlClient(
        url,
        identity.credential(),
        ca_file=config.groundcontrol_ca_file or identity.ca_file,
    )
    intervals = Intervals(long_poll=55.0 if config.long_poll else 0.0)
    fallback = StateRegistryFallback(identity.satellite, consumer)
    agent = FleetAgent(
        identity=identity,
        db=db,
        trust=trust,
        client=client,
        consumer=consumer,
        metrics=FleetMetrics(metrics.registry),
        intervals=intervals,
        fallback=fallback.fetch,
        clock=time.time,
    )
    if not config.long_poll:
        agent.link.long_poll = False
    return agent


def _wrap_lifespan(
    app: Starlette,
    agent: FleetAgent | None,
    db: FleetDB | None,
    consumer: RegistryConsumer,
    refusals: SharedCounter | None,
) -> None:
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a: Starlette) -> AsyncIterator[None]:
        async with inner(a):
            tasks: list[asyncio.Task[None]] = []
            if agent is not None:
                await agent.start()
                consumer.replication.start()
                loop = asyncio.get_running_loop()
                if agent.metrics.multiprocess:
                    tasks.append(loop.create_task(_refresh(agent.metrics)))
                if refusals is not None:
                    tasks.append(loop.create_task(_watch_refusals(refusals, agent)))
            try:
                yield
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                if agent is not None:
                    await consumer.replication.close()
                    await agent.close()
                    await agent.client.aclose()
                if db is not None:
                    await db.close()

    app.router.lifespan_context = lifespan


FOLLOW_INTERVAL = 2.0


async def _refresh(metrics: FleetMetrics) -> None:
    while True:
        metrics.refresh()
        await asyncio.sleep(1.0)


def refusals_path(config: Config) -> Path:
    """Bumped by a worker whose upstream refused the credentials (a SharedCounter)."""
    return runtime_dir(config) / "credentials-refused"


def _tell_primary(refusals: SharedCounter) -> Callable[[str], None]:
    def refused(upstream: str) -> None:
        log.info("upstream %s refused our credentials; the agent's process asks again", upstream)
        refusals.bump()

    return refused


REFUSALS_INTERVAL = 1.0


async def _watch_refusals(refusals: SharedCounter, agent: FleetAgent) -> None:
    """The primary's side of ``_tell_primary``: a bump wakes the agent's credentials loop
    (which keeps its own minimum interval, so a burst of 401s is one refresh)."""
    seen = refusals.value
    while True:
        await asyncio.sleep(REFUSALS_INTERVAL)
        if refusals.value != seen:
            seen = refusals.value
            agent.credentials_refused("of another serving process")


def _follow_lifespan(app: Starlette, identity: Identity | None, consumer: RegistryConsumer) -> None:
    """A worker beside the primary applies the signed state and the upstream credentials
    the primary's agent stored (the fleet database, the identity directory) once they
    change: its upstreams, budget, bandwidth cap and tag pins are the primary's."""
    if identity is None:
        return
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a: Starlette) -> AsyncIterator[None]:
        async with inner(a):
            db = await FleetDB(identity.db_path).open()
            task = asyncio.get_running_loop().create_task(_follow(db, identity, consumer))
            try:
                yield
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await db.close()

    app.router.lifespan_context = lifespan


async def _follow(db: FleetDB, identity: Identity, consumer: RegistryConsumer) -> None:
    applied: tuple[int, tuple[UpstreamCredential, ...]] | None = None
    while True:
        try:
            stored = await db.load_trust()
            credentials = identity.upstream_credentials()
            if applied != (stored.highest_version, credentials):
                consumer.apply_credentials(credentials)
                trust = TrustedState.load(
                    identity.satellite,
                    stored.root_chain,
                    stored.state_envelope,
                    stored.highest_version,
                )
                if trust.state is not None:
                    await consumer.apply_state(trust.state)
                applied = (stored.highest_version, credentials)
        except Exception:
            log.exception("following the applied state failed; trying again")
        await asyncio.sleep(FOLLOW_INTERVAL)
