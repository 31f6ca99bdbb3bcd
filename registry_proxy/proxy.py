"""Pull-through: the local store first for content, the upstream first for tags.

By digest, content is served from the store when present; on a miss one cache fill per
digest fetches it (see fill.py) and every client streams from that fill. By tag, the
upstream is asked with a short budget (a HEAD: the manifest is fetched only when its
digest is not cached yet), and the last known local mapping answers when the upstream
is unreachable or failing. When the upstream has not answered within a short budget
(``stale_after``) and a local mapping exists, that mapping answers at once (stale while
revalidate) and the lookup goes on in the background: it refreshes the mapping and feeds
the circuit breaker, which keeps an offline site from waiting on timeouts: while it is
open, requests are answered from the store at once. Every answer says where it came from
(``CacheStatus``: hit, miss, stale).

A manifest fetched from upstream is answered as soon as it is verified and parsed; it
is stored (file, fsync, database, tag) in the background, as blob fills are published
after their last byte is released. The next manifest request for the same repository
waits for those writes, so it reads a store that has them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from registry_proxy.bandwidth import Bandwidth
from registry_proxy.breaker import CircuitBreaker
from registry_proxy.content import BlobSource, CacheStatus, FillSource
from registry_proxy.digest import Digest
from registry_proxy.errors import RegistryError
from registry_proxy.fill import BlobFill
from registry_proxy.manifest import Descriptor, parse_manifest
from registry_proxy.metadata import ManifestRow
from registry_proxy.metrics import Metrics
from registry_proxy.routing import Target
from registry_proxy.store import ContentStore
from registry_proxy.upstream import (
    UpstreamAuthError,
    UpstreamClient,
    UpstreamError,
    UpstreamIntegrityError,
    UpstreamManifest,
    UpstreamNotFound,
    UpstreamUnavailable,
    as_registry_error,
)

log = logging.getLogger("satellite.proxy")
T = TypeVar("T")


@dataclass
class UpstreamLink:
    """One configured upstream as the proxy uses it: its client, whether it is the
    default, its circuit breaker and its background probe."""

    client: UpstreamClient
    default: bool = False
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker)
    probe: asyncio.Task[None] | None = None


@dataclass(frozen=True)
class _Lookup(Generic[T]):
    """A manifest lookup under way, and when it started (the event loop's clock)."""

    task: asyncio.Task[T]
    started: float


class Proxy:
    """The pull-through cache, behind the store's interface (``Content``): a target
    with an upstream is answered here, any other by the store it wraps."""

    def __init__(
        self,
        store: ContentStore,
        upstreams: dict[str, UpstreamLink],
        metrics: Metrics,
        *,
        tag_timeout: float = 3.0,
        stale_after: float = 0.25,
        fill_idle_timeout: float = 60.0,
    ) -> None:
        self.store = store
        self.upstreams = upstreams
        self.metrics = metrics
        self.tag_timeout = tag_timeout
        self.stale_after = stale_after  # 0: a cached tag waits for the upstream's answer
        self.fill_idle_timeout = fill_idle_timeout
        self._fills: dict[Digest, BlobFill] = {}
        self._lookups: dict[tuple[str, str, str], _Lookup[Any]] = {}
        self._storing: dict[str, set[asyncio.Task[None]]] = {}  # by repository
        self._budget: asyncio.Task[None] | None = None
        self._budget_again = False
        self._started = False
        self.on_auth_error: Callable[[str], None] | None = None
        self._retired: set[asyncio.Task[None]] = set()
        # tags the fleet's state names: they answer the state's digest, not upstream's
        self._tag_pins: dict[tuple[str, str], Digest] = {}
        # (stored repository, digest) of the platforms a kept index leaves out on purpose
        self.left_out: set[tuple[str, Digest]] = set()
        # the cap on upstream traffic (the signed config's bandwidth_bytes_per_second)
        self.bandwidth = Bandwidth()
        for name in upstreams:
            metrics.upstream_online.labels(name).set(1)

    def start(self) -> None:
        """Probes every upstream in the background: a link down at boot counts as a
        first failure, and the first pull does not pay for the HTTP client's first use."""
        self._started = True
        loop = asyncio.get_running_loop()
        for up in self.upstreams.values():
            up.probe = loop.create_task(self._probe(up))

    def set_upstreams(self, upstreams: dict[str, UpstreamLink]) -> None:
        """Replace the set of upstreams. An ``UpstreamLink`` object kept from the old set
        keeps its breaker and connections; one left out is closed once the requests
        that may still use it had time to finish."""
        old, self.upstreams = self.upstreams, dict(upstreams)
        loop = asyncio.get_running_loop()
        for name, up in self.upstreams.items():
            if old.get(name) is not up:
                self.metrics.upstream_online.labels(name).set(1)
                if self._started:
                    up.probe = loop.create_task(self._probe(up))
        for name, up in old.items():
            if self.upstreams.get(name) is not up:
                if name not in self.upstreams:
                    self.metrics.upstream_online.remove(name)
                task = loop.create_task(self._retire(up))
                self._retired.add(task)
                task.add_done_callback(self._retired.discard)

    async def _retire(self, up: UpstreamLink, grace: float = 300.0) -> None:
        try:
            await asyncio.sleep(grace)
        finally:
            if up.probe is not None:
                up.probe.cancel()
            await up.client.aclose()

    async def close(self) -> None:
        # manifests already answered are stored before the store closes
        storing = [task for tasks in self._storing.values() for task in tasks]
        await asyncio.gather(*storing, return_exceptions=True)
        tasks = [f.task for f in self._fills.values() if f.task is not None]
        tasks += [lookup.task for lookup in self._lookups.values()]  # revalidations
        if self._budget is not None:
            tasks.append(self._budget)
        tasks += [u.probe for u in self.upstreams.values() if u.probe is not None]
        tasks += list(self._retired)  # cancelling one closes its client at once
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for up in self.upstreams.values():
            await up.client.aclose()

    # -- Content: a local repository is the store's, a pull-through one is answered here

    def manifest_answer(
        self, target: Target, reference: str | Digest
    ) -> Coroutine[Any, Any, tuple[ManifestRow, CacheStatus | None]]:
        # a plain method handing on the coroutine: no extra frame on either path
        if target.upstream is None:
            return self.store.manifest_answer(target, reference)
        return self._pull_manifest(target, reference)

    def manifest_bytes(self, row: ManifestRow) -> Coroutine[Any, Any, bytes]:
        return self.store.manifest_bytes(row)  # fetched ones are remembered there at once

    def blob_answer(
        self, target: Target, digest: Digest
    ) -> Coroutine[Any, Any, tuple[BlobSource, CacheStatus | None]]:
        if target.upstream is None:
            return self.store.blob_answer(target, digest)
        return self._pull_blob(target, digest)

    def tag_list(
        self, target: Target, n: int | None, last: str | None
    ) -> Coroutine[Any, Any, list[str]]:
        return self.store.tag_list(target, n, last)  # the tags pulled so far

    def referrer_list(
        self, target: Target, subject: Digest, artifact_type: str | None
    ) -> Coroutine[Any, Any, list[Descriptor]]:
        return self.store.referrer_list(target, subject, artifact_type)

    # -- upstream health -----------------------------------------------------------

    def _upstream(self, target: Target) -> UpstreamLink:
        assert target.upstream is not None
        return self.upstreams[target.upstream]

    def _observe(self, up: UpstreamLink, exc: BaseException | None) -> None:
        name = up.client.name
        if exc is None or isinstance(exc, UpstreamNotFound | UpstreamAuthError):
            up.breaker.success()
        elif isinstance(exc, UpstreamUnavailable | TimeoutError):
            up.breaker.failure()
        if isinstance(exc, UpstreamError | TimeoutError):
            self.metrics.upstream_errors.labels(name, type(exc).__name__).inc()
        if isinstance(exc, UpstreamIntegrityError):
            self.metrics.digest_mismatches.labels(name).inc()
        if isinstance(exc, UpstreamAuthError) and self.on_auth_error is not None:
            self.on_auth_error(name)  # e.g. fetch rotated credentials from Ground Control
        self.metrics.upstream_online.labels(name).set(1 if up.breaker.online else 0)

    async def _call(self, up: UpstreamLink, call: Awaitable[T]) -> T:
        try:
            result = await call
        except BaseException as exc:
            self._observe(up, exc)
            raise
        self._observe(up, None)
        return result

    def _usable(self, up: UpstreamLink) -> bool:
        """May a request go upstream now? If not, start a background probe when due."""
        if up.breaker.allow_request():
            return True
        if up.breaker.needs_probe() and (up.probe is None or up.probe.done()):
            up.probe = asyncio.get_running_loop().create_task(self._probe(up))
        return False

    async def _probe(self, up: UpstreamLink) -> None:
        try:
            await up.client.ping(timeout=self.tag_timeout)
        except UpstreamError as exc:
            self._observe(up, UpstreamUnavailable(str(exc)))
        else:
            log.info("upstream %s is reachable", up.client.name)
            self._observe(up, None)

    # -- manifests -----------------------------------------------------------------

    def _lookup(
        self, key: tuple[str, str, str], make: Callable[[], Coroutine[Any, Any, T]]
    ) -> _Lookup[T]:
        """Single flight for manifest lookups: concurrent asks for the same reference
        share one upstream exchange, which a disconnecting client does not cancel."""
        lookup = self._lookups.get(key)
        if lookup is None:
            loop = asyncio.get_running_loop()
            task = loop.create_task(make())
            lookup = _Lookup(task, loop.time())
            self._lookups[key] = lookup
            task.add_done_callback(lambda t: self._lookup_done(key, t))
        else:
            self.metrics.coalesced.inc()
        return lookup

    async def manifest(self, target: Target, reference: str | Digest) -> ManifestRow:
        return (await self.manifest_answer(target, reference))[0]

    def pin_tags(self, pins: dict[tuple[str, str], Digest]) -> None:
        """``(stored repository, tag) -> digest`` that the fleet's desired state names:
        such a tag answers that digest, online or offline, and is never looked up
        upstream (the upstream's tag may have moved; the state has not)."""
        self._tag_pins = dict(pins)

    def tag_pin(self, target: Target, tag: str) -> Digest | None:
        return self._tag_pins.get((target.repo, tag))

    async def ensure_manifest(self, target: Target, digest: Digest) -> tuple[bytes, str]:
        """The manifest ``digest`` of ``target``, fetched and verified if it is not here,
        and stored before this returns (replication counts on it being durable)."""
        row = await self.manifest(target, digest)
        await self._stored(target.repo)
        row = await self.store.resolve(target.repo, digest)  # raises if storing failed
        return await self.store.manifest_bytes(row), row.media_type

    async def ensure_blob(self, target: Target, digest: Digest) -> bool:
        """Makes the blob ``digest`` of ``target`` present and verified; True when it was
        fetched now, False when it was here already (in this or another repository).
        A fill under way for a client is joined, never started twice."""
        if await self.store.mount_blob(target.repo, digest, None):
            return False
        fill = self._fill(target, digest, background=True)
        await fill.wait()
        if fill.error is not None:
            raise fill.error
        return True

    async def tagged(self, target: Target, tag: str) -> Digest | None:
        """The digest ``tag`` names (the upstream's answer, stored like any pulled tag);
        None when neither the upstream nor the store knows it."""
        try:
            row, _ = await self.manifest_answer(target, tag)
        except RegistryError as exc:
            if exc.code == "MANIFEST_UNKNOWN":
                return None
            raise
        return row.digest

    async def upstream_referrers(self, target: Target, digest: Digest) -> bytes | None:
        """The upstream's referrers index for ``digest`` (None: it has no referrers API)."""
        up = self._upstream(target)
        assert target.upstream_repo is not None
        if not self._usable(up):
            raise _offline(target, digest)
        try:
            body = await up.client.get_referrers(target.upstream_repo, digest)
        except UpstreamError as exc:
            self._observe(up, exc)
            raise as_registry_error(exc, "MANIFEST_UNKNOWN", str(digest)) from exc
        self._observe(up, None)
        return body

    async def _pull_manifest(
        self, target: Target, reference: str | Digest
    ) -> tuple[ManifestRow, CacheStatus]:
        up = self._upstream(target)
        assert target.upstream_repo is not None
        await self._stored(target.repo)
        if not isinstance(reference, Digest):
            pinned = self._tag_pins.get((target.repo, reference))
            if pinned is not None:
                return await self._pull_manifest(target, pinned)
        if isinstance(reference, Digest):
            try:
                row = await self.store.resolve(target.repo, reference)
                self.metrics.cache_hits.labels("manifest").inc()
                return row, CacheStatus.HIT
            except RegistryError:
                pass
            self.metrics.cache_misses.labels("manifest").inc()
            left_out = (target.repo, reference) in self.left_out
            if not self._usable(up):
                raise _not_kept(target, reference) if left_out else _offline(target, reference)
            fetch = self._lookup(
                ("digest", target.repo, str(reference)),
                lambda: self._fetch_by_digest(target, up, reference),
            )
            try:
                return await asyncio.shield(fetch.task), CacheStatus.MISS
            except UpstreamError as exc:
                if left_out:  # not here on purpose: the upstream's trouble is not the answer
                    raise _not_kept(target, reference) from exc
                raise as_registry_error(exc, "MANIFEST_UNKNOWN", str(reference)) from exc

        if self._usable(up):
            lookup = self._lookup(
                ("tag", target.repo, reference), lambda: self._tag_online(target, up, reference)
            )
            try:
                return await self._revalidate(target, reference, lookup)
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
        cached = await self._cached(target, reference)
        if cached is None:
            raise _offline(target, reference)
        self.metrics.cache_hits.labels("manifest").inc()
        self.metrics.stale_answers.labels(up.client.name, "unreachable").inc()
        return cached, CacheStatus.STALE

    async def _revalidate(
        self,
        target: Target,
        tag: str,
        lookup: _Lookup[tuple[ManifestRow, CacheStatus]],
    ) -> tuple[ManifestRow, CacheStatus]:
        """The upstream's answer if it comes within `stale_after` of the lookup's start;
        else the cached mapping, if any, while the lookup goes on (it refreshes the
        mapping and feeds the breaker); with nothing cached, the upstream's answer
        whenever it comes. A pull that joins a lookup already late answers at once."""
        task = lookup.task
        if self.stale_after > 0 and not task.done():
            left = lookup.started + self.stale_after - asyncio.get_running_loop().time()
            done = False
            if left > 0:
                # asyncio.wait neither cancels the lookup nor makes a task of its own
                done = bool((await asyncio.wait((task,), timeout=left))[0])
            if not done:
                row = await self._cached(target, tag)
                if row is not None:
                    assert target.upstream is not None
                    self.metrics.cache_hits.labels("manifest").inc()
                    self.metrics.stale_answers.labels(target.upstream, "slow").inc()
                    return row, CacheStatus.STALE
        return await asyncio.shield(task)

    async def _cached(self, target: Target, reference: str) -> ManifestRow | None:
        try:
            return await self.store.resolve(target.repo, reference)
        except RegistryError:
            return None

    def _lookup_done(self, key: tuple[str, str, str], task: asyncio.Task[Any]) -> None:
        self._lookups.pop(key, None)
        if not task.cancelled():
            task.exception()  # retrieved: every waiter may have gone away

    async def _fetch_by_digest(
        self, target: Target, up: UpstreamLink, digest: Digest, tag: str | None = None
    ) -> ManifestRow:
        assert target.upstream_repo is not None
        fetched = await self._call(up, up.client.get_manifest(target.upstream_repo, str(digest)))
        return self._keep(target, fetched, tag)

    def _keep(self, target: Target, fetched: UpstreamManifest, tag: str | None) -> ManifestRow:
        """Checks a fetched manifest and answers with it while it is stored (and `tag`
        pointed at it) in the background."""
        digest = fetched.digest
        parse_manifest(fetched.body, fetched.media_type)  # refused before anyone gets it
        self.store.remember_manifest_bytes(digest, fetched.body)
        task = asyncio.get_running_loop().create_task(
            self._store_manifest(target.repo, digest, fetched, tag)
        )
        pending = self._storing.setdefault(target.repo, set())
        pending.add(task)
        task.add_done_callback(lambda t: self._manifest_stored(target.repo, t))
        return ManifestRow(digest, fetched.media_type, len(fetched.body))

    async def _store_manifest(
        self, repo: str, digest: Digest, fetched: UpstreamManifest, tag: str | None
    ) -> None:
        await self.store.put_manifest(repo, digest, fetched.body, fetched.media_type, cached=True)
        if tag is not None:
            await self.store.set_tag(repo, tag, digest)

    def _manifest_stored(self, repo: str, task: asyncio.Task[None]) -> None:
        pending = self._storing.get(repo)
        if pending is not None:
            pending.discard(task)
            if not pending:
                del self._storing[repo]
        if not task.cancelled() and task.exception() is not None:
            log.error("could not cache a manifest of %s: %s", repo, task.exception())

    async def _stored(self, repo: str) -> None:
        """Waits until the manifests of `repo` answered before being stored are stored."""
        pending = self._storing.get(repo)
        if pending:
            await asyncio.gather(*(asyncio.shield(t) for t in pending), return_exceptions=True)

    async def _tag_online(
        self, target: Target, up: UpstreamLink, tag: str
    ) -> tuple[ManifestRow, CacheStatus]:
        assert target.upstream_repo is not None
        try:
            current = await self.store.resolve(target.repo, tag)
        except RegistryError:
            current = None
        fetched: UpstreamManifest | None = None
        if current is None:
            # nothing cached for the tag: one GET by tag (a HEAD first would only tell
            # what has to be fetched anyway; a pull saves a round trip)
            fetched = await self._call(
                up, up.client.get_manifest(target.upstream_repo, tag, timeout=self.tag_timeout)
            )
            digest = fetched.digest
        else:  # the usual case: a HEAD confirms that the tag has not moved
            head = await self._call(
                up, up.client.head_manifest(target.upstream_repo, tag, timeout=self.tag_timeout)
            )
            if current.digest == head.digest:
                self.metrics.cache_hits.labels("manifest").inc()
                return current, CacheStatus.HIT
            digest = head.digest
        local = await self.store.meta.manifest_by_digest(target.repo, digest)
        if local is not None:  # (moved) to a manifest that is cached already
            self.metrics.cache_hits.labels("manifest").inc()
            await self.store.set_tag(target.repo, tag, digest)
            return local, CacheStatus.HIT
        self.metrics.cache_misses.labels("manifest").inc()
        if fetched is None:
            return await self._fetch_by_digest(target, up, digest, tag), CacheStatus.MISS
        return self._keep(target, fetched, tag), CacheStatus.MISS

    # -- blobs ---------------------------------------------------------------------

    async def blob(self, target: Target, digest: Digest) -> BlobSource:
        return (await self.blob_answer(target, digest))[0]

    async def _pull_blob(self, target: Target, digest: Digest) -> tuple[BlobSource, CacheStatus]:
        try:
            opened = await self.store.open_blob(target.repo, digest)
            self.metrics.cache_hits.labels("blob").inc()
            return opened, CacheStatus.HIT
        except RegistryError:
            pass
        # the same bytes fetched for another repository: content addressing makes them ours
        if await self.store.mount_blob(target.repo, digest, None):
            self.metrics.cache_hits.labels("blob").inc()
            return await self.store.open_blob(target.repo, digest), CacheStatus.HIT
        fill = self._fill(target, digest)
        await fill.started.wait()
        if fill.error is not None:
            raise fill.error
        if not fill.done and fill.size is not None:
            try:
                return FillSource(fill.reader(), fill.size), CacheStatus.MISS
            except FileNotFoundError:
                pass  # it is being published right now
        await fill.wait()
        if fill.error is not None:
            raise fill.error
        return await self.store.open_blob(target.repo, digest), CacheStatus.MISS

    def _fill(self, target: Target, digest: Digest, *, background: bool = False) -> BlobFill:
        """The fill of ``digest`` under way (joined), or a new one started. A client
        joining a background (replication) fill raises it to a client's priority."""
        up = self._upstream(target)
        fill = self._fills.get(digest)
        if fill is not None and not fill.finished:
            self.metrics.coalesced.inc()
            if not background:
                fill.prioritize()
            if target.repo not in fill.repos:
                fill.repos.append(target.repo)
            return fill
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
            bandwidth=self.bandwidth,
            background=background,
        )
        self._fills[digest] = fill
        fill.start()
        return fill

    def _fill_done(
        self, target: Target, up: UpstreamLink, fill: BlobFill, exc: BaseException | None
    ) -> None:
        if self._fills.get(fill.digest) is fill:
            del self._fills[fill.digest]
        if not isinstance(exc, asyncio.CancelledError):
            self._observe(up, exc if isinstance(exc, UpstreamError) else None)
        if fill.done and self.store.max_bytes:
            self._keep_budget()

    def _keep_budget(self) -> None:
        """Evicts down to the budget after a fill, in the background: a fill that was
        published has succeeded, whatever eviction then runs into."""
        if self._budget is not None and not self._budget.done():
            self._budget_again = True  # the running pass may have missed this fill
            return
        self._budget = asyncio.get_running_loop().create_task(self._enforce_budget())

    async def _enforce_budget(self) -> None:
        while True:
            self._budget_again = False
            try:
                self.metrics.evictions.inc(len(await self.store.enforce_budget()))
            except Exception:
                log.exception("keeping the cache budget after a fill failed")
            if not self._budget_again:
                return


def _not_kept(target: Target, reference: Digest) -> RegistryError:
    return RegistryError(
        "MANIFEST_UNKNOWN", f"{target.name}@{reference} is a platform this satellite does not keep"
    )


def _offline(target: Target, reference: str | Digest) -> RegistryError:
    return RegistryError(
        "UNAVAILABLE",
        f"{target.name}@{reference} is not cached and upstream {target.upstream} is unreachable",
        status=503,
    )
