"""Which credentials Ground Control presents to a registry host, for every registry
client it runs (the image resolver and the state-artifact push): the upstream credential
stored for that host (sealed at rest), else ``[registry] username``/``password`` when the
host is the central registry's, else none (anonymous)."""

from __future__ import annotations

from urllib.parse import urlsplit

from groundcontrol.config import Config
from groundcontrol.sealing import Sealer
from groundcontrol.store import Store

Credentials = tuple[str, str]  # (username, password); ("", "") is anonymous


def sealed_for(registry: str) -> str:
    """What a stored upstream credential's password is sealed for: its registry host."""
    return f"upstream:{registry}"


class RegistryCredentials:
    def __init__(self, store: Store, sealer: Sealer, config: Config) -> None:
        self.store = store
        self.sealer = sealer
        self.config = config

    async def for_host(self, host: str) -> Credentials:
        async with self.store.transaction() as q:
            rows = await q.upstream_credentials()
        for row in rows:
            if row["registry"] == host:
                password = self.sealer.open(row["secret"], sealed_for(row["registry"]))
                return str(row["username"]), password
        if self.config.registry_username and urlsplit(self.config.registry_url).netloc == host:
            return self.config.registry_username, self.config.registry_password
        return "", ""
