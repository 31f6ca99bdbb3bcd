"""Pull-through: the local store first for content, the upstream first for tags.

By digest, content is served from the store when present; on a miss one cache fill per
digest fetches it (see fill.py) and every client streams from that fill. By tag, the
upstream is asked with a short budget (a HEAD: the manifest is fetched only when its
digest is not cached yet), and the last known local mapping answers when the upstream
is unreachable or failing. A circuit breaker per upstream keeps an offline site from
waiting on timeouts: while it is open, requests are answered from the store at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from registry_proxy.breaker import CircuitBreaker
from registry_proxy.digest import Digest
from registry_proxy.errors import RegistryError
from registry_proxy.fill import BlobFill, FillReader
from registry_proxy.metadata import ManifestRow
from registry_proxy.metrics import Metrics
from registry_proxy.routing import Target
from registry_proxy.store import ContentStore, OpenBlob
from registry_proxy.upstream import (
    UpstreamAuthError,
    UpstreamClient,
    UpstreamError,
    UpstreamIntegrityError,
    UpstreamNotFound,
    UpstreamUnavailable,
    as_registry_error,
)

log = logging.getLogger("satellite.proxy")
T = TypeVar("T")


@dataclass
class Upstream:
    client: UpstreamClient
    default: bool = False
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker)
    probe: asyncio.Task[None] | None = None


@dataclass(frozen=True)
class FillSource:
    """A blob being filled from upstream: its reader, its total size."""

    reader: FillReader
    size: int

    def close(self) -> None:
        self.reader.close()


class Proxy:
    def __init__(
        self,
        store: ContentStore,
        upstreams: dict[str, Upstream],
        metrics: Metrics,
        *,
        tag_timeout: float = 3.0,
        fill_idle_timeout: float = 60.0,
    ) -> None:
        self.store = store
        self.upstreams = upstreams
        self.metrics = metrics
        self.tag_timeout = tag_timeout
        self.fill_idle_timeout = fill_idle_timeout
        self._fills: dict[Digest, BlobFill] = {}
        self._lookups: dict[tuple[str, str, str], asyncio.Task[ManifestRow]] = {}
        for name in upstreams:
            metrics.upstream_online.labels(name).set(1)

    async def close(self) -> None:
        tasks = [f.task for f in self._fills.values() if f.task is not None]
        tasks += [u.probe for u in self.upstreams.values() if u.probe is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for up in self.upstreams.values():
            await up.client.aclose()

    # -- upstream health -----------------------------------------------------------

    def _upstream(self, target: Target) -> Upstream:
        assert target.upstream is not None
        return self.upstreams[target.upstream]

    def _observe(self, up: Upstream, exc: BaseException | None) -> None:
        name = up.client.name
        if exc is None or isinstance(exc, UpstreamNotFound | UpstreamAuthError):
            up.breaker.success()
        elif isinstance(exc, UpstreamUnavailable | TimeoutError):
            up.breaker.failure()
        if isinstance(exc, UpstreamError | TimeoutError):
            self.metrics.upstream_errors.labels(name, type(exc).__name__).inc()
        if isinstance(exc, UpstreamIntegrityError):
            self.metrics.digest_mismatches.labels(name).inc()
        self.metrics.upstream_online.labels(name).set(1 if up.breaker.online else 0)

    async def _call(self, up: Upstream, call: Awaitable[T]) -> T:
        try:
            result = await call
        except BaseException as exc:
            self._observe(up, exc)
            raise
        self._observe(up, None)
        return result

    def _usable(self, up: Upstream) -> bool:
        """May a request go upstream now? If not, start a background probe when due."""
        if up.breaker.allow_request():
            return True
        if up.breaker.needs_probe() and (up.probe is None or up.probe.done()):
            up.probe = asyncio.get_running_loop().create_task(self._probe(up))
        return False

    async def _probe(self, up: Upstream) -> None:
        try:
            await up.client.ping(timeout=self.tag_timeout)
        except UpstreamError as exc:
            self._observe(up, UpstreamUnavailable(str(exc)))
        else:
            log.info("upstream %s is reachable again", up.client.name)
            self._observe(up, None)

    # -- manifests -----------------------------------------------------------------

    async def _once(
        self, key: tuple[str, str, str], make: Callable[[], Coroutine[Any, Any, ManifestRow]]
    ) -> ManifestRow:
        """Single flight for manifest lookups: concurrent asks for the same reference
        share one upstream exchange, which a disconnecting client does not cancel."""
        task = self._lookups.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(make())
            self._lookups[key] = task
            task.add_done_callback(lambda t: self._lookup_done(key, t))
        else:
            self.metrics.coalesced.inc()
        return await asyncio.shield(task)

    async def manifest(self, target: Target, reference: str | Digest) -> ManifestRow:
        up = self._upstream(target)
        assert target.upstream_repo is not None
        if isinstance(reference, Digest):
            try:
                row = await self.store.resolve(target.repo, reference)
                self.metrics.cache_hits.labels("manifest").inc()
                return row
            except RegistryError:
                pass
            self.metrics.cache_misses.labels("manifest").inc()
            if not self._usable(up):
                raise _offline(target, reference)
            try:
                return await self._once(
                    ("digest", target.repo, str(reference)),
                    lambda: self._fetch_by_digest(target, up, reference),
                )
            except UpstreamError as exc:
                raise as_registry_error(exc, "MANIFEST_UNKNOWN", str(reference)) from exc

        if self._usable(up):
            try:
                return await self._once(
                    ("tag", target.repo, reference),
                    lambda: self._tag_online(target, up, reference),
                )
            except UpstreamNotFound as exc:
                raise RegistryError(
                    "MANIFEST_UNKNOWN", f"{target.name}:{reference} is not known upstream"
                ) from exc
            except (UpstreamError, TimeoutError) as exc:
                log.warning(
                    "upstream %s failed for %s:%s (%s); answering from the cache",
                    target.upstream,
                    target.name,
                    reference,
                    exc,
                )
        try:
            row = await self.store.resolve(target.repo, reference)
        except RegistryError:
            raise _offline(target, reference) from None
        self.metrics.cache_hits.labels("manifest").inc()
        return row

    def _lookup_done(self, key: tuple[str, str, str], task: asyncio.Task[ManifestRow]) -> None:
        self._lookups.pop(key, None)
        if not task.cancelled():
            task.exception()  # retrieved: every waiter may have gone away

    async def _fetch_by_digest(self, target: Target, up: Upstream, digest: Digest) -> ManifestRow:
        assert target.upstream_repo is not None
        fetched = await self._call(up, up.client.get_manifest(target.upstream_repo, str(digest)))
        await self.store.put_manifest(
            target.repo, digest, fetched.body, fetched.media_type, cached=True
        )
        return await self.store.resolve(target.repo, digest)

    async def _tag_online(self, target: Target, up: Upstream, tag: str) -> ManifestRow:
        assert target.upstream_repo is not None
        head = await self._call(
            up, up.client.head_manifest(target.upstream_repo, tag, timeout=self.tag_timeout)
        )
        local = await self.store.meta.manifest_by_digest(target.repo, head.digest)
        if local is not None:
            self.metrics.cache_hits.labels("manifest").inc()
            current = await self.store.meta.manifest_by_tag(target.repo, tag)
            if current is None or current.digest != head.digest:
                await self.store.set_tag(target.repo, tag, head.digest)
            return local
        self.metrics.cache_misses.labels("manifest").inc()
        row = await self._fetch_by_digest(target, up, head.digest)
        await self.store.set_tag(target.repo, tag, head.digest)
        return row

    # -- blobs ---------------------------------------------------------------------

    async def blob(self, target: Target, digest: Digest) -> OpenBlob | FillSource:
        try:
            opened = await self.store.open_blob(target.repo, digest)
            self.metrics.cache_hits.labels("blob").inc()
            return opened
        except RegistryError:
            pass
        # the same bytes fetched for another repository: content addressing makes them ours
        if await self.store.mount_blob(target.repo, digest, None):
            self.metrics.cache_hits.labels("blob").inc()
            return await self.store.open_blob(target.repo, digest)
        up = self._upstream(target)
        fill = self._fills.get(digest)
        if fill is not None and not fill.finished:
            self.metrics.coalesced.inc()
            if target.repo not in fill.repos:
                fill.repos.append(target.repo)
        else:
            self.metrics.cache_misses.labels("blob").inc()
            if not self._usable(up):
                raise _offline(target, digest)
            assert target.upstream_repo is not None
            fill = BlobFill(
                self.store,
                up.client,
                target.upstream_repo,
                target.repo,
                digest,
                self.metrics,
                idle_timeout=self.fill_idle_timeout,
                on_result=lambda f, exc: self._fill_done(target, up, f, exc),
            )
            self._fills[digest] = fill
            fill.start()
        await fill.started.wait()
        if fill.error is not None:
            raise fill.error
        if not fill.done and fill.size is not None:
            try:
                return FillSource(fill.reader(), fill.size)
            except FileNotFoundError:
                pass  # it is being published right now
        await fill.wait()
        if fill.error is not None:
            raise fill.error
        return await self.store.open_blob(target.repo, digest)

    def _fill_done(
        self, target: Target, up: Upstream, fill: BlobFill, exc: BaseException | None
    ) -> None:
        if self._fills.get(fill.digest) is fill:
            del self._fills[fill.digest]
        if not isinstance(exc, asyncio.CancelledError):
            self._observe(up, exc if isinstance(exc, UpstreamError) else None)


def _offline(target: Target, reference: str | Digest) -> RegistryError:
    return RegistryError(
        "UNAVAILABLE",
        f"{target.name}@{reference} is not cached and upstream {target.upstream} is unreachable",
        status=503,
    )
