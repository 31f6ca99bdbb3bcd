"""Everything a request handler needs, built once per process from the config."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from groundcontrol.artifacts import ArtifactPusher
from groundcontrol.config import Config
from groundcontrol.db import Database, open_database
from groundcontrol.db.migrations import migrate
from groundcontrol.harbor import HarborClient, HarborRobots
from groundcontrol.keys import KeyStore, Signer, init_trust
from groundcontrol.publish import Publisher
from groundcontrol.registry_credentials import RegistryCredentials
from groundcontrol.resolver import Resolver
from groundcontrol.sealing import Sealer
from groundcontrol.store import Store
from groundcontrol.watch import StateWatch

Clock = Callable[[], float]


@dataclass
class Services:
    config: Config
    db: Database
    store: Store
    keys: KeyStore
    signer: Signer
    resolver: Resolver
    publisher: Publisher
    sealer: Sealer
    clock: Clock
    artifacts: ArtifactPusher
    watch: StateWatch
    harbor: HarborRobots | None = None

    def now(self) -> float:
        return self.clock()

    @classmethod
    async def open(
        cls,
        config: Config,
        *,
        clock: Clock = time.time,
        apply_migrations: bool = True,
        init_keys: bool = True,
        registry_transport: httpx.AsyncBaseTransport | None = None,
        harbor_transport: httpx.AsyncBaseTransport | None = None,
        listen: bool = False,
    ) -> Services:
        """``listen``: hear other processes' publishes on PostgreSQL (``serve`` does;
        a CLI command has no long-polls to wake)."""
        db = await open_database(config.database_url)
        watch = StateWatch(config.long_poll_waiters)
        try:
            if apply_migrations:
                await migrate(db, now=clock())
            store = Store(db, on_state_change=watch.wake)
            keys = KeyStore(config.keys_dir)
            if init_keys:
                await init_trust(store, keys, clock())
        except BaseException:
            await db.close()
            raise
        signer = Signer(keys)
        sealer = Sealer(config.keys_dir / "secrets.key")
        resolver = Resolver(
            config.registry_url,
            credentials=RegistryCredentials(store, sealer, config).for_host,
            timeout=config.registry_timeout,
            transport=registry_transport,
        )
        artifacts = ArtifactPusher(store, sealer, config, clock=clock)
        # after each publish that committed: push to the registry in the background
        publisher = Publisher(store, signer, resolver, config, on_published=artifacts.notify)
        harbor = None
        if config.harbor_url:
            client = HarborClient(
                config.harbor_url,
                config.harbor_username,
                config.harbor_password,
                timeout=config.registry_timeout,
                transport=harbor_transport,
            )
            harbor = HarborRobots(client, sealer, config.harbor_robot_ttl_days)
        if listen:
            watch.start_listening(db)
        return cls(
            config,
            db,
            store,
            keys,
            signer,
            resolver,
            publisher,
            sealer,
            clock,
            artifacts,
            watch,
            harbor,
        )

    async def close(self) -> None:
        await self.watch.aclose()
        await self.artifacts.aclose()
        if self.harbor is not None:
            await self.harbor.client.aclose()
        await self.resolver.aclose()
        await self.db.close()
