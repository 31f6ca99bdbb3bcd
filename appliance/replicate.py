"""Replication: the store converges on exactly what the verified state names.

For each image of the state, its manifest or index is fetched by digest through the
pull-through proxy (the one path that talks to upstreams: routing, credentials, the
breaker, single-flight, verification while streaming), stored, and walked:

- an index keeps its bytes (its digest intact) and only the children of the platforms the
  state lists, plus the attestation manifests in the same index that refer to a kept
  child; a listed platform the index does not have fails the image;
- an image manifest's config and layers are fetched; a blob already in the store (pulled
  through earlier, imported, shared with another image) is not fetched again, and one
  that several images or repositories need is fetched once (the proxy's fills are
  single-flight per digest, and a blob stored for another repository is mounted).

Everything an image needs is pinned (owner ``state``), so the cache budget never evicts
it; what a new state no longer needs is unpinned and becomes evictable. A tag the state
names resolves to the state's digest on this satellite, online or offline (the proxy's
tag pins), whatever the upstream's tag now says.

One image failing (not found upstream, a digest mismatch, credentials refused, a platform
missing) is recorded as ``failed`` with its reason and tried again with exponential
backoff and jitter; the other images converge regardless. Which children of an index
to keep is ``registry_proxy.platforms.plan_children`` (shared with USB bundles).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from groundcontrol.contract import ImageDescriptor, ImageStatus, ImageStatusValue, StateDocument
from registry_proxy.digest import Digest
from registry_proxy.errors import RegistryError
from registry_proxy.manifest import Descriptor, Manifest, parse_manifest
from registry_proxy.metrics import Metrics
from registry_proxy.platforms import plan_children
from registry_proxy.proxy import Proxy
from registry_proxy.referrers import find_referrers
from registry_proxy.routing import Router, Target
from registry_proxy.store import ContentStore
from registry_proxy.upstream import UpstreamUnavailable
from registry_proxy.waits import wait_event

log = logging.getLogger("satellite.replicate")

PIN_OWNER = "state"
RETRY_MIN = 5.0
RETRY_MAX = 600.0
# an image held already asks its upstream for new referrers (a signature added later)
# at most this often, not on every pass (a pass runs whenever any image is retried)
REFERRERS_REFRESH = 900.0


@dataclass
class ImageProgress:
    """What replication knows of one image of the state."""

    status: ImageStatusValue = "missing"  # missing | replicating | present | failed
    error: str | None = None
    attempts: int = 0
    next_try: float = 0.0
    digests: frozenset[Digest] = frozenset()  # its closure, once replicated
    referrers: frozenset[Digest] = frozenset()  # the part of it that refers to the image
    referrers_at: float | None = None  # clock when the upstream was last asked for them


@dataclass
class Pass:
    """The outcome of one reconcile pass."""

    present: int = 0
    failed: int = 0
    blobs_fetched: int = 0
    pinned: int = 0
    unpinned: int = 0


@dataclass
class Replicator:
    store: ContentStore
    proxy: Proxy
    router: Callable[[], Router]  # the current router (upstreams change at runtime)
    concurrency: int = 4
    clock: Callable[[], float] = time.monotonic
    rng: random.Random = field(default_factory=random.Random)
    images: dict[tuple[str, str], ImageProgress] = field(default_factory=dict)
    on_change: Callable[[], Awaitable[None]] | None = None
    metrics: Metrics | None = None
    blobs_fetched: int = 0
    bytes_fetched: int = 0  # blob bytes fetched from upstreams, over the process's life
    passes: int = 0
    running: bool = False
    last_pass_seconds: float | None = None
    # the pass under way (or the last one): what its images need and how far it got
    pass_started: float = 0.0
    pass_seconds: float = 0.0
    # bytes of the blobs it has found needed so far, of those now here, and fetched
    pass_bytes_needed: int = 0
    pass_bytes_done: int = 0
    pass_bytes_fetched: int = 0
    _pass_seen: set[Digest] = field(default_factory=set)
    _pass_left_out: set[tuple[str, Digest]] = field(default_factory=set)

    def progress(self) -> dict[str, Any]:
        """Where replication stands, for ``satellite status`` and ``sync --now``'s bar."""
        counts = {"present": 0, "missing": 0, "failed": 0}
        for p in self.images.values():
            counts[p.status] = counts.get(p.status, 0) + 1
        bandwidth = self.proxy.bandwidth
        elapsed = (self.clock() - self.pass_started) if self.running else self.pass_seconds
        rate = self.pass_bytes_fetched / elapsed if elapsed > 0 else 0.0
        left = max(0, self.pass_bytes_needed - self.pass_bytes_done)
        return {
            "running": self.running,
            "passes": self.passes,
            "images": counts,
            "blobs_fetched": self.blobs_fetched,
            "bytes_fetched": self.bytes_fetched,
            "last_pass_seconds": self.last_pass_seconds,
            "pass_bytes_needed": self.pass_bytes_needed,
            "pass_bytes_done": self.pass_bytes_done,
            "bandwidth_bytes_per_second": bandwidth.rate,
            "bandwidth_waited_seconds": round(bandwidth.waited, 3),
            # the pass under way, or the last one
            "pass_bytes_fetched": self.pass_bytes_fetched,
            "pass_seconds": round(elapsed, 3),
            "pass_bytes_per_second": round(rate),
            "eta_seconds": round(left / rate, 1) if self.running and rate > 0 else None,
            "next_retry_in": _later(self.next_retry(), self.clock()),
        }

    def statuses(self, doc: StateDocument) -> list[ImageStatus]:
        out = []
        for image in doc.images:
            progress = self.images.get((image.repository, image.digest))
            if progress is None:
                out.append(ImageStatus(image.repository, image.digest, "missing"))
            else:
                out.append(
                    ImageStatus(image.repository, image.digest, progress.status, progress.error)
                )
        return out

    def next_retry(self) -> float | None:
        """When the earliest failed image is due again (clock time), if any."""
        due = [p.next_try for p in self.images.values() if p.status == "failed"]
        return min(due) if due else None

    async def reconcile(self, doc: StateDocument) -> Pass:
        """One pass over the state: every image not present is tried (failed ones when
        their backoff has passed), then pins follow what the state needs."""
        result = Pass()
        wanted = {(i.repository, i.digest) for i in doc.images}
        for key in list(self.images):
            if key not in wanted:
                del self.images[key]
        self.proxy.pin_tags(self.tag_pins(doc))
        limit = asyncio.Semaphore(self.concurrency)
        fetched_before = self.blobs_fetched
        self.running, self.pass_started, self.pass_seconds = True, self.clock(), 0.0
        self.pass_bytes_needed = self.pass_bytes_fetched = 0
        self.pass_bytes_done = 0
        self._pass_seen, self._pass_left_out = set(), set()

        async def one(image: ImageDescriptor) -> None:
            key = (image.repository, image.digest)
            progress = self.images.setdefault(key, ImageProgress())
            if progress.status == "failed" and progress.next_try > self.clock():
                return
            if progress.status == "missing":  # a failed one stays failed until it succeeds
                progress.status = "replicating"
            try:
                progress.digests = frozenset(await self._image(image, limit, progress))
            except Exception as exc:  # one image's failure is its own
                progress.attempts += 1
                progress.status = "failed"
                progress.error = _reason(exc)
                delay = min(RETRY_MAX, RETRY_MIN * 2 ** (progress.attempts - 1))
                progress.next_try = self.clock() + delay * (0.5 + self.rng.random() / 2)
                log.warning(
                    "replicating %s@%s failed (attempt %d): %s",
                    image.repository,
                    image.digest,
                    progress.attempts,
                    progress.error,
                )
            else:
                progress.status, progress.error, progress.attempts = "present", None, 0

        try:
            await asyncio.gather(*(one(i) for i in doc.images))
            self.pass_seconds = self.clock() - self.pass_started
            return await self._settle(result, fetched_before)
        finally:
            # settled once the image results are recorded (``on_change``): a reader
            # that sees the pass over sees its outcome too
            self.running = False
            self.pass_seconds = self.pass_seconds or self.clock() - self.pass_started
            self.passes += 1

    async def _settle(self, result: Pass, fetched_before: int) -> Pass:
        self.proxy.left_out = self._pass_left_out  # what the current state leaves out
        result.blobs_fetched = self.blobs_fetched - fetched_before
        result.pinned, result.unpinned = await self._pins()
        result.present = sum(1 for p in self.images.values() if p.status == "present")
        result.failed = sum(1 for p in self.images.values() if p.status == "failed")
        self.last_pass_seconds = round(self.pass_seconds, 3)
        if self.metrics is not None:
            self.metrics.replication_seconds.observe(self.pass_seconds)
            for status in ("missing", "replicating", "present", "failed"):
                count = sum(1 for p in self.images.values() if p.status == status)
                self.metrics.replication_images.labels(status).set(count)
        if self.on_change is not None:
            await self.on_change()
        return result

    # -- one image ----------------------------------------------------------------------

    def tag_pins(self, doc: StateDocument) -> dict[tuple[str, str], Digest]:
        router = self.router()
        return {
            (router.route(i.repository).repo, i.tag): Digest.parse(i.digest)
            for i in doc.images
            if i.tag
        }

    async def _image(
        self, image: ImageDescriptor, limit: asyncio.Semaphore, progress: ImageProgress
    ) -> set[Digest]:
        target = self.router().route(image.repository)
        if target.upstream is None:
            # nothing to fetch it from: it must be here already (pushed or imported)
            return await self._local_closure(target, Digest.parse(image.digest), image.platforms)
        digest = Digest.parse(image.digest)
        manifest = await self._manifest(target, digest)
        closure = {digest}
        if manifest.is_index:
            children = plan_children(manifest, image.platforms)
            kept = {c.digest for c in children}
            left_out = {(target.repo, c.digest) for c in manifest.manifests if c.digest not in kept}
            self._pass_left_out |= left_out
            self.proxy.left_out |= left_out  # answers 404 offline from now on
            parts = await asyncio.gather(
                *(self._child(target, child.digest, limit) for child in children)
            )
            for part in parts:
                closure |= part
        else:
            closure |= await self._blobs(target, manifest, limit)
        fresh = progress.referrers_at is not None and (
            self.clock() - progress.referrers_at < REFERRERS_REFRESH
        )
        if progress.status == "present" and fresh:
            closure |= progress.referrers
        else:
            try:
                found = await self._referrers(target, digest, limit)
                progress.referrers = frozenset(found)
                closure |= found
            except Exception as exc:
                if progress.status != "present" and not _unreachable(exc):
                    raise  # e.g. a signature the upstream lost: the image is not whole
                # the upstream cannot be asked (a site offline, an air-gapped one whose
                # images came on a bundle) or a refresh of an image held already: the image
                # is here; what referred to it stays as it was
                log.info("referrers of %s@%s not refreshed: %s", image.repository, digest, exc)
                closure |= progress.digests
            progress.referrers_at = self.clock()
        if image.tag:
            await self.store.set_tag(target.repo, image.tag, digest)
        return closure

    async def _child(self, target: Target, digest: Digest, limit: asyncio.Semaphore) -> set[Digest]:
        manifest = await self._manifest(target, digest)
        if manifest.is_index:  # an index in an index: keep all of it
            closure = {digest}
            for part in await asyncio.gather(
                *(self._child(target, c.digest, limit) for c in manifest.manifests)
            ):
                closure |= part
            return closure
        return {digest} | await self._blobs(target, manifest, limit)

    async def _referrers(
        self, target: Target, digest: Digest, limit: asyncio.Semaphore
    ) -> set[Digest]:
        """The artifacts that refer to the image (signatures, SBOMs, attestations), with
        their blobs, so that checking them works offline: those the upstream's referrers
        API lists, or, where it has none, those its tags name by the referrers tag schema
        (``sha256-<hex>``, an index of referrers) and cosign's (``sha256-<hex>.sig``,
        ``.att``, ``.sbom``); those tags are stored too. The lookup is
        ``registry_proxy.referrers`` (shared with USB bundles)."""
        found = await find_referrers(
            digest,
            lambda: self.proxy.upstream_referrers(target, digest),
            lambda tag: self.proxy.tagged(target, tag),
            lambda d: self._manifest(target, d),
        )
        listed = list(dict.fromkeys(r.digest for r in found))
        closure: set[Digest] = set()
        for part in await asyncio.gather(*(self._child(target, d, limit) for d in listed)):
            closure |= part
        return closure

    async def _manifest(self, target: Target, digest: Digest) -> Manifest:
        body, media_type = await self.proxy.ensure_manifest(target, digest)
        return parse_manifest(body, media_type)

    async def _blobs(
        self, target: Target, manifest: Manifest, limit: asyncio.Semaphore
    ) -> set[Digest]:
        refs = manifest.blob_references()

        async def fetch(ref: Descriptor) -> None:
            first = ref.digest not in self._pass_seen
            if first:
                self._pass_seen.add(ref.digest)
                self.pass_bytes_needed += ref.size
            async with limit:
                if await self.proxy.ensure_blob(target, ref.digest):
                    self.blobs_fetched += 1
                    self.bytes_fetched += ref.size
                    self.pass_bytes_fetched += ref.size
                    if self.metrics is not None:
                        self.metrics.replicated_bytes.inc(ref.size)
            if first:
                self.pass_bytes_done += ref.size

        await asyncio.gather(*(fetch(r) for r in refs))
        return {r.digest for r in refs}

    async def _local_closure(
        self, target: Target, digest: Digest, platforms: tuple[str, ...]
    ) -> set[Digest]:
        row, _ = await self.store.manifest_answer(target, digest)  # the store's own, as Content
        manifest = parse_manifest(await self.store.manifest_bytes(row), row.media_type)
        closure = {digest}
        children = plan_children(manifest, platforms) if manifest.is_index else ()
        for child in children:
            closure |= await self._local_closure(target, child.digest, ())
        for ref in manifest.blob_references():
            await self.store.blob_size(target.repo, ref.digest)  # raises when absent
            closure.add(ref.digest)
        return closure

    # -- pins -------------------------------------------------------------------------

    async def _pins(self) -> tuple[int, int]:
        """Pins the closures of the state's images; unpins what no image needs any more.
        A failed image keeps the pins of the closure it last had."""
        needed: set[Digest] = set()
        for progress in self.images.values():
            needed |= progress.digests
        pinned = set(await self.store.meta.pinned(PIN_OWNER))
        await self.store.pin(needed - pinned, PIN_OWNER)
        await self.store.unpin(pinned - needed, PIN_OWNER)
        return len(needed - pinned), len(pinned - needed)


def _later(when: float | None, now: float) -> float | None:
    return None if when is None else round(max(0.0, when - now), 1)


def _unreachable(exc: BaseException) -> bool:
    """The upstream could not be asked at all (as opposed to answering something wrong)."""
    return isinstance(exc, UpstreamUnavailable) or (
        isinstance(exc, RegistryError) and exc.status == 503
    )


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return str(text)[:500]


class ReplicationLoop:
    """Runs reconcile passes in the background: at start, whenever a state is applied
    (``wake``), and when the earliest failed image is due again. A failing pass is
    logged and never ends the loop, nor takes the registry down."""

    def __init__(
        self,
        replicator: Replicator,
        current: Callable[[], StateDocument | None],
    ) -> None:
        self.replicator = replicator
        self.current = current
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.passes = 0

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            doc = self.current()
            if doc is not None:
                try:
                    await self.replicator.reconcile(doc)
                except Exception:
                    log.exception("a replication pass failed")
                self.passes += 1
            due = self.replicator.next_retry()
            timeout = None if due is None else max(0.5, due - self.replicator.clock())
            await wait_event(self._wake, timeout)


async def collect_garbage(store: ContentStore, *, dry_run: bool = False) -> dict[str, Any]:
    """``satellite gc``: evicts every unpinned blob (cached content no state needs) now,
    not when the cache budget would; what the state needs is pinned and stays."""
    freed = await store.evict_unpinned(dry_run=dry_run)
    return {
        "dry_run": dry_run,
        "blobs": len(freed),
        "bytes": sum(size for _, size in freed),
        "digests": [str(digest) for digest, _ in freed],
        "pinned": len(await store.meta.pinned(PIN_OWNER)),
    }
