"""The fallback source of signed state: the state artifact in an OCI registry.

When Ground Control cannot be reached and the signed config names a state registry
(``state_registry: {url, repository}``), the satellite reads
``<repository>/<satellite>:latest`` through the project's one registry client
(registry_proxy.upstream), with the upstream credentials Ground Control gave it. The
bytes it returns are untrusted: the agent passes them through ``TrustedState`` exactly
like an answer from the API, so a stale or forged ``latest`` is refused as such.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from groundcontrol.contract import DEFAULT_ROOT_MAX_BYTES, DEFAULT_STATE_MAX_BYTES
from groundcontrol.contract.artifact import LATEST_TAG, LayerRef, parse_state_manifest
from registry_proxy.digest import Digest
from registry_proxy.upstream import Timeouts, UpstreamClient

if TYPE_CHECKING:
    from appliance.daemon import RegistryConsumer


class StateRegistryError(Exception):
    pass


class StateRegistryFallback:
    def __init__(self, satellite: str, consumer: RegistryConsumer) -> None:
        self.satellite = satellite
        self.consumer = consumer
        self._client: UpstreamClient | None = None
        self._client_key: tuple[str, str | None] | None = None

    def _location(self) -> tuple[str, str] | None:
        state = self.consumer.agent.trust.state if self.consumer.agent else None
        raw: Any = state.config.get("state_registry") if state is not None else None
        if not isinstance(raw, dict):
            return None
        url, repository = raw.get("url"), raw.get("repository")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            return None
        if not isinstance(repository, str) or not repository:
            return None
        return url.rstrip("/"), repository.strip("/")

    def _client_for(self, url: str) -> UpstreamClient:
        host = urlsplit(url).netloc
        cred = next((c for c in self.consumer.credentials if c.registry == host), None)
        key = (url, cred.username if cred else None)
        if self._client is None or self._client_key != key:
            self._client = UpstreamClient(
                "state-registry",
                url,
                username=cred.username if cred else None,
                password=cred.password if cred else None,
                timeouts=Timeouts(),
                retries=1,
            )
            self._client_key = key
        return self._client

    async def fetch(self, have: int) -> tuple[list[bytes], bytes] | None:
        """The root chain and state envelope of ``latest``, or None when no state
        registry is configured. Raises when it is configured and fails."""
        location = self._location()
        if location is None:
            return None
        url, repository = location
        client = self._client_for(url)
        repo = f"{repository}/{self.satellite}"
        manifest = await client.get_manifest(repo, LATEST_TAG)
        try:
            artifact = parse_state_manifest(manifest.body)
        except ValueError as exc:
            raise StateRegistryError(f"{url}/{repo}:latest: {exc}") from exc
        roots = [
            await self._blob(client, repo, artifact.roots[v], DEFAULT_ROOT_MAX_BYTES)
            for v in sorted(artifact.roots)
        ]
        state = await self._blob(client, repo, artifact.state, DEFAULT_STATE_MAX_BYTES)
        return roots, state

    @staticmethod
    async def _blob(client: UpstreamClient, repo: str, layer: LayerRef, cap: int) -> bytes:
        if layer.size > cap:
            raise StateRegistryError(f"{layer.digest}: {layer.size} bytes is over {cap}")
        digest = Digest.parse(layer.digest)
        hasher = digest.hasher()
        chunks: list[bytes] = []
        total = 0
        async with client.open_blob(repo, digest) as blob:
            async for chunk in blob.chunks():
                total += len(chunk)
                if total > layer.size:
                    raise StateRegistryError(f"{layer.digest}: more bytes than announced")
                hasher.update(chunk)
                chunks.append(chunk)
        if total != layer.size or Digest.of_hasher(hasher) != digest:
            raise StateRegistryError(f"{layer.digest}: content does not match its digest")
        return b"".join(chunks)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
