"""Following Ground Control: the orchestrator beside the registry in `satellite run`.

fetch → verify → persist → act, for every state, whatever its source (Ground Control's
long-poll, a plain poll, ``satellite sync --now``, the state registry when Ground Control
is down). Verification is the contract's ``TrustedState``; persistence is the fleet
database (fleetdb.py), written before anything acts on a state; acting is the
``StateConsumer`` the daemon passes in (the registry's config, and replication next).

Every report goes through the outbox: built, signed with the device key and numbered in
one transaction, sent in batches, removed only when acknowledged. Heartbeats go every
``checkin_interval``; events go at once: a state accepted or refused, the state expiring,
an image's result changing, the link to Ground Control coming back.

A failing sync never takes the registry down: every loop catches, logs, backs off with
jitter and carries on.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from appliance import notify
from appliance.fleetdb import EVENT, HEARTBEAT, FleetDB, FleetDBError, OutboxStats
from appliance.fleetmetrics import FleetMetrics
from appliance.gcclient import GroundControlClient, GroundControlError, GroundControlUnreachable
from appliance.identity import Identity, UpstreamCredential
from groundcontrol.contract import (
    CheckIn,
    ContractError,
    ExpiredError,
    ImageStatus,
    SignatureError,
    StateDocument,
    TrustedState,
    sign_checkin,
)
from registry_proxy.waits import wait_event

log = logging.getLogger("satellite.fleet")

BATCH = 200  # check-ins per POST
MAX_ERRORS = 10  # recent errors carried in a check-in
CREDENTIALS_MIN_INTERVAL = 10.0


class StateConsumer(Protocol):
    """What the daemon does with a verified state and with fresh credentials."""

    async def apply_state(self, doc: StateDocument) -> None: ...

    def apply_credentials(self, credentials: Sequence[UpstreamCredential]) -> None: ...

    async def image_statuses(self, doc: StateDocument) -> list[ImageStatus]: ...

    async def cache_usage(self) -> tuple[int, int]: ...


@dataclass
class Intervals:
    """Seconds; the signed config sets them unless the local config did."""

    state: float = 60.0
    checkin: float = 60.0
    credentials: float = 900.0
    long_poll: float = 55.0
    retry_min: float = 1.0
    retry_max: float = 60.0


@dataclass
class Refusal:
    at: float
    reason: str
    message: str
    source: str


@dataclass
class Link:
    """What the satellite knows of its link to Ground Control."""

    reachable: bool | None = None  # None: not tried yet
    last_contact: float | None = None
    down_since: float | None = None
    last_error: str | None = None
    long_poll: bool | None = None


@dataclass
class SyncResult:
    outcome: str  # "accepted", "current", "refused", "unreachable", "error"
    version: int
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "version": self.version, "message": self.message}


def jittered(seconds: float, rng: random.Random) -> float:
    return seconds * (0.8 + 0.4 * rng.random())


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


@dataclass
class FleetAgent:
    identity: Identity
    db: FleetDB
    trust: TrustedState
    client: GroundControlClient
    consumer: StateConsumer
    metrics: FleetMetrics
    intervals: Intervals = field(default_factory=Intervals)
    fallback: Callable[[int], Awaitable[tuple[list[bytes], bytes] | None]] | None = None
    clock: Callable[[], float] = time.time
    link: Link = field(default_factory=Link)
    last_refusal: Refusal | None = None
    source: str | None = None  # where the applied state came from
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._device_key = self.identity.device_key()
        self._lock = asyncio.Lock()  # one state decision at a time
        self._outbox_changed = asyncio.Event()
        self._wake_state = asyncio.Event()
        self._wake_creds = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._rng = random.Random()
        self._refused: set[bytes] = set()  # digests of refused envelopes: reported once
        self._expiry_reported = False
        self._stats: OutboxStats | None = None

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        self._stats = await self.db.outbox_stats()
        self.metrics.observe_state(self.trust, self.clock())
        self.metrics.observe_outbox(self._stats)
        self.metrics.last_contact = self.link
        self._report_status()
        self._expiry_reported = self.trust.state_expired(self._now())
        await self._report_offline_acceptance()
        loop = asyncio.get_running_loop()
        for loop_fn in (self._state_loop, self._heartbeat_loop, self._sender_loop):
            self._tasks.append(loop.create_task(self._guard(loop_fn)))
        self._tasks.append(loop.create_task(self._guard(self._credentials_loop)))

    async def _report_offline_acceptance(self) -> None:
        """A state accepted from a bundle while the daemon was stopped is reported as
        if accepted now: the same ``state_accepted`` event, source ``bundle``."""
        version = await self.db.unreported_state()
        if not version:
            return
        if version == self.trust.version:
            await self.event({"type": "state_accepted", "version": version, "source": "bundle"})
        await self.db.reported_state(version)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def _guard(self, loop_fn: Callable[[], Awaitable[None]]) -> None:
        """Keep a loop alive through any bug: log, pause, start it again."""
        while True:
            try:
                await loop_fn()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("fleet loop %s failed; restarting it", loop_fn.__name__)
                await asyncio.sleep(self.intervals.retry_max)

    def _report_status(self) -> None:
        """The service manager's STATUS= line (systemd Type=notify; nothing otherwise)."""
        stats = self._stats
        notify.current().set_status(
            state_version=self.trust.version,
            outbox_depth=stats.depth if stats else None,
            state_expired="yes" if self.trust.state_expired(self._now()) else None,
        )

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    def _note_error(self, message: str) -> None:
        self.errors = [*self.errors[-(MAX_ERRORS - 1) :], message[:500]]

    # -- the link ---------------------------------------------------------------------

    async def _reached(self) -> None:
        now = self.clock()
        down_since = self.link.down_since
        self.link.reachable = True
        self.link.last_contact = now
        self.link.down_since = None
        self.link.last_error = None
        if down_since is not None:
            seconds = round(now - down_since, 3)
            log.info("Ground Control reachable again after %.1f s", seconds)
            await self.event({"type": "link_restored", "down_seconds": seconds})

    def _unreached(self, exc: Exception) -> None:
        if self.link.reachable is not False:
            log.warning("Ground Control unreachable: %s", exc)
        self.link.reachable = False
        self.link.last_error = str(exc)[:500]
        if self.link.down_since is None:
            self.link.down_since = self.clock()

    def _backoff(self, attempt: int) -> float:
        delay = min(self.intervals.retry_max, self.intervals.retry_min * 2**attempt)
        return jittered(delay, self._rng)

    async def _sleep(self, seconds: float, wake: asyncio.Event | None = None) -> None:
        if wake is None:
            await asyncio.sleep(seconds)
            return
        await wait_event(wake, seconds)
        wake.clear()

    # -- state ------------------------------------------------------------------------

    async def _state_loop(self) -> None:
        failures = 0
        while True:
            started = self.clock()
            wait = self.intervals.long_poll if self.link.long_poll is not False else 0
            try:
                answer = await self.client.state(self.identity.satellite, self.trust.version, wait)
            except GroundControlUnreachable as exc:
                self._unreached(exc)
                await self._try_fallback()
                failures += 1
                await self._sleep(self._backoff(failures), self._wake_state)
                continue
            except GroundControlError as exc:
                await self._reached()
                log.warning("state request refused: %s", exc)
                self._note_error(f"state: {exc}")
                failures += 1
                await self._sleep(self._backoff(failures), self._wake_state)
                continue
            failures = 0
            await self._reached()
            if wait and self.link.long_poll is None:
                log.info("Ground Control %s long-poll", "offers" if answer.long_poll else "lacks")
            self.link.long_poll = answer.long_poll if wait else self.link.long_poll
            result = None
            if answer.envelope is not None:
                result = await self.consider(answer.envelope, "groundcontrol")
            if (result is not None and result.outcome == "refused") or not answer.long_poll:
                await self._sleep(jittered(self.intervals.state, self._rng), self._wake_state)
            elif self.clock() - started < 0.5:
                await asyncio.sleep(0.5)  # a server that ignores wait cannot make us spin

    async def sync_now(self) -> SyncResult:
        """One immediate fetch (``satellite sync --now``), then its verdict."""
        try:
            answer = await self.client.state(self.identity.satellite, self.trust.version, 0)
        except GroundControlUnreachable as exc:
            self._unreached(exc)
            fallback = await self._try_fallback()
            if fallback is not None:
                return fallback
            return SyncResult("unreachable", self.trust.version, str(exc))
        except GroundControlError as exc:
            await self._reached()
            return SyncResult("error", self.trust.version, str(exc))
        await self._reached()
        if answer.envelope is None:
            return SyncResult("current", self.trust.version, "no newer state")
        return await self.consider(answer.envelope, "groundcontrol")

    async def _try_fallback(self) -> SyncResult | None:
        if self.fallback is None:
            return None
        try:
            found = await self.fallback(self.trust.version)
        except Exception as exc:
            log.info("state registry fallback failed: %s", exc)
            return None
        if found is None:
            return None
        roots, envelope = found
        return await self.consider_with_roots(roots, envelope, "state-registry")

    async def consider_with_roots(
        self, roots: Sequence[bytes], envelope: bytes, source: str
    ) -> SyncResult:
        """A state that came with its root chain (the state registry, a USB bundle):
        follow the roots it carries that are new here, then ``consider`` the state."""
        async with self._lock:
            newer = [r for r in roots if r not in self.trust.root_chain]
            if newer:
                await self._update_roots(newer)
        return await self.consider(envelope, source)

    async def consider(self, envelope: bytes, source: str) -> SyncResult:
        """Verify, persist, then act on one state envelope."""
        async with self._lock:
            if self.trust.is_current(envelope):
                return SyncResult("current", self.trust.version, "already applied")
            try:
                doc = await self._verify(envelope)
            except ContractError as exc:
                return await self._refuse(envelope, exc, source)
            try:
                await self.db.save_trust([], (doc.version, envelope), self.clock())
            except FleetDBError as exc:
                # not persisted, so not applied: forget it and try again later
                stored = await self.db.load_trust()
                self.trust = TrustedState.load(
                    self.identity.satellite,
                    stored.root_chain,
                    stored.state_envelope,
                    stored.highest_version,
                )
                log.error("state version %d not stored: %s", doc.version, exc)
                self._note_error(f"state {doc.version} not stored: {exc}")
                return SyncResult("error", self.trust.version, str(exc))
            self.source = source
            self._expiry_reported = False
            self.metrics.observe_state(self.trust, self.clock())
            self._report_status()
            log.info(
                "state version %d accepted from %s: %d image(s)",
                doc.version,
                source,
                len(doc.images),
            )
        try:
            await self.consumer.apply_state(doc)
        except Exception as exc:
            log.exception("applying state version %d failed", doc.version)
            self._note_error(f"applying state {doc.version}: {exc}")
        await self.event({"type": "state_accepted", "version": doc.version, "source": source})
        await self.check_images()
        return SyncResult("accepted", doc.version)

    async def check_images(self) -> None:
        """Record each image's status; a change is an event check-in at once."""
        doc = self.trust.state
        if doc is None:
            return
        statuses = await self.consumer.image_statuses(doc)
        now = self.clock()
        changed = []
        for image in statuses:
            if await self.db.set_image_result(
                image.repository, image.digest, image.status, image.error, now
            ):
                changed.append(image.to_dict())
        await self.db.forget_images([(i.repository, i.digest) for i in statuses])
        if changed:
            await self.event({"type": "image_status", "images": changed[:100]})

    async def _verify(self, envelope: bytes) -> StateDocument:
        """``update_state``; on an unknown key or an expired root, follow the root chain
        from Ground Control once and try again."""
        now = self._now()
        try:
            return self.trust.update_state(envelope, now)
        except (SignatureError, ExpiredError) as first:
            try:
                chain = await self._fetch_newer_roots()
            except GroundControlError as exc:
                log.info("root chain not refreshed: %s", exc)
                raise first from None
            if not chain:
                raise
            await self._update_roots(chain)
            return self.trust.update_state(envelope, now)

    async def _fetch_newer_roots(self) -> list[bytes]:
        versions = await self.client.root_versions()
        current = self.trust.root.version
        return [await self.client.root(v) for v in sorted(versions) if v > current]

    async def _update_roots(self, chain: list[bytes]) -> None:
        before = len(self.trust.root_chain)
        root = self.trust.update_roots(chain, self._now())
        accepted = self.trust.root_chain[before:]
        versions = range(root.version - len(accepted) + 1, root.version + 1)
        await self.db.save_trust(list(zip(versions, accepted, strict=True)), None, self.clock())
        log.info("trust root followed to version %d", root.version)
        await self.event({"type": "root_updated", "version": root.version})

    async def _refuse(self, envelope: bytes, exc: ContractError, source: str) -> SyncResult:
        reason = type(exc).__name__
        self.metrics.verification_failures.labels(reason).inc()
        self.last_refusal = Refusal(self.clock(), reason, str(exc)[:500], source)
        fingerprint = hashlib.sha256(envelope).digest()
        if fingerprint not in self._refused:
            if len(self._refused) > 1000:
                self._refused.clear()
            self._refused.add(fingerprint)
            log.warning("state from %s refused: %s: %s", source, reason, exc)
            await self.event(
                {
                    "type": "state_refused",
                    "reason": reason,
                    "message": str(exc)[:500],
                    "source": source,
                }
            )
        return SyncResult("refused", self.trust.version, f"{reason}: {exc}")

    # -- reports ----------------------------------------------------------------------

    async def _build(self, kind: str, events: Sequence[dict[str, Any]]) -> Callable[[int], bytes]:
        doc = self.trust.state
        images = await self.consumer.image_statuses(doc) if doc is not None else []
        used, budget = await self.consumer.cache_usage()
        stats = self._stats
        now = self._now()
        offline = 0.0
        if self.link.down_since is not None:
            offline = max(0.0, self.clock() - self.link.down_since)

        def sign(seq: int) -> bytes:
            checkin = CheckIn(
                satellite=self.identity.satellite,
                seq=seq,
                sent_at=now,
                state_version=doc.version if doc is not None else 0,
                images=tuple(images),
                cache_bytes_used=used,
                cache_bytes_max=budget,
                errors=tuple(self.errors),
                offline_seconds=offline,
                state_expired=self.trust.state_expired(now),
                events=tuple(events),
                outbox_depth=stats.depth if stats else 0,
                dropped=stats.dropped if stats else 0,
            )
            return sign_checkin(checkin, self._device_key).to_json()

        return sign

    async def _enqueue(self, kind: str, events: Sequence[dict[str, Any]]) -> int | None:
        try:
            sign = await self._build(kind, events)
            seq = await self.db.enqueue(kind, sign, self.clock())
        except FleetDBError as exc:
            log.error("check-in not queued: %s", exc)
            self._note_error(f"check-in not queued: {exc}")
            return None
        await self._refresh_stats()
        self._outbox_changed.set()
        return seq

    async def event(self, event: dict[str, Any]) -> int | None:
        """Queue an event check-in at once (it is sent as soon as the link allows)."""
        event = {**event, "at": _iso(self.clock())}
        return await self._enqueue(EVENT, [event])

    async def heartbeat(self) -> int | None:
        return await self._enqueue(HEARTBEAT, [])

    async def _refresh_stats(self) -> None:
        self._stats = await self.db.outbox_stats()
        self.metrics.observe_outbox(self._stats)
        self._report_status()

    async def _heartbeat_loop(self) -> None:
        while True:
            now = self._now()
            if self.trust.state_expired(now) and not self._expiry_reported:
                self._expiry_reported = True
                state = self.trust.state
                assert state is not None
                log.error(
                    "state version %d expired at %s; still serving it",
                    state.version,
                    state.expires.isoformat(),
                )
                await self.event({"type": "state_expired", "version": state.version})
            self.metrics.observe_state(self.trust, self.clock())
            await self.check_images()
            await self.heartbeat()
            await asyncio.sleep(jittered(self.intervals.checkin, self._rng))

    async def _sender_loop(self) -> None:
        failures = 0
        while True:
            batch = await self.db.pending(BATCH)
            if not batch:
                await self._sleep(self.intervals.checkin, self._outbox_changed)
                continue
            try:
                answer = await self.client.post_checkins(
                    self.identity.satellite, [envelope for _, envelope in batch]
                )
            except GroundControlUnreachable as exc:
                self._unreached(exc)
                failures += 1
                await self._sleep(self._backoff(failures), self._wake_state)
                continue
            except GroundControlError as exc:
                await self._reached()
                log.warning("check-ins refused: %s", exc)
                self._note_error(f"check-ins: {exc}")
                failures += 1
                await asyncio.sleep(self._backoff(failures))
                continue
            await self._reached()
            failures = 0
            sent = {seq for seq, _ in batch}
            acked = [int(s) for s in answer["acked"] if isinstance(s, int) and s in sent]
            # a rejected report will be rejected again: drop it, say so, keep the rest going
            rejected = answer.get("rejected") or []
            dropped = []
            for item in rejected:
                index = item.get("index") if isinstance(item, dict) else None
                if isinstance(index, int) and 0 <= index < len(batch):
                    dropped.append(batch[index][0])
                    log.error("check-in %d rejected: %s", batch[index][0], item)
            await self.db.ack(len(batch), acked + dropped)
            self.metrics.checkins_sent.inc(len(batch))
            self.metrics.checkins_acked.inc(len(acked))
            await self._refresh_stats()

    async def _credentials_loop(self) -> None:
        while True:
            await self.refresh_credentials()
            await asyncio.sleep(CREDENTIALS_MIN_INTERVAL)  # 401s cannot make it spin
            await self._sleep(jittered(self.intervals.credentials, self._rng), self._wake_creds)

    def credentials_refused(self, upstream: str) -> None:
        """An upstream answered 401/403: the credentials may have been rotated."""
        log.info("upstream %s refused our credentials; asking Ground Control", upstream)
        self._wake_creds.set()

    async def refresh_credentials(self) -> bool:
        try:
            raw = await self.client.upstream_credentials(self.identity.satellite)
            credentials = UpstreamCredential.parse_list(raw)
        except GroundControlUnreachable as exc:
            self._unreached(exc)
            return False
        except (GroundControlError, ValueError) as exc:
            log.warning("upstream credentials not refreshed: %s", exc)
            return False
        await self._reached()
        if credentials != self.identity.upstream_credentials():
            self.identity.save_upstream_credentials(credentials)
            log.info("upstream credentials updated for %d registr(ies)", len(credentials))
        self.consumer.apply_credentials(credentials)
        return True

    # -- status -----------------------------------------------------------------------

    async def status(self) -> dict[str, Any]:
        stats = await self.db.outbox_stats()
        return {
            **await offline_status(self.identity, self.db, self.trust, self.clock()),
            "running": True,
            "groundcontrol": {
                "url": self.identity.groundcontrol_url,
                "reachable": self.link.reachable,
                "last_contact": _iso(self.link.last_contact),
                "unreachable_since": _iso(self.link.down_since),
                "last_error": self.link.last_error,
                "long_poll": self.link.long_poll,
            },
            "state_source": self.source,
            "last_refusal": None
            if self.last_refusal is None
            else {
                "at": _iso(self.last_refusal.at),
                "reason": self.last_refusal.reason,
                "message": self.last_refusal.message,
                "source": self.last_refusal.source,
            },
            "outbox": outbox_dict(stats),
            "errors": list(self.errors),
        }


def outbox_dict(stats: OutboxStats) -> dict[str, Any]:
    return {
        "depth": stats.depth,
        "bytes": stats.bytes,
        "oldest": _iso(stats.oldest),
        "next_seq": stats.next_seq,
        "sent": stats.sent,
        "acked": stats.acked,
        "dropped_heartbeats": stats.dropped_heartbeats,
        "dropped_events": stats.dropped_events,
    }


async def offline_status(
    identity: Identity, db: FleetDB, trust: TrustedState, now: float
) -> dict[str, Any]:
    """What the data dir alone says (``satellite status`` without a running daemon)."""
    stored = await db.load_trust()
    doc = trust.state
    moment = datetime.fromtimestamp(now, UTC)
    results = await db.image_results()
    counts: dict[str, int] = {}
    for result in results:
        counts[result.status] = counts.get(result.status, 0) + 1
    return {
        "satellite": identity.satellite,
        "running": False,
        "keyid": identity.keyid,
        "registered_at": _iso(identity.registered_at),
        "groundcontrol": {"url": identity.groundcontrol_url},
        "trust": {
            "root_version": trust.root.version,
            "root_expires": trust.root.expires.isoformat().replace("+00:00", "Z"),
            "highest_state_version": trust.version,
        },
        "state": None
        if doc is None
        else {
            "version": doc.version,
            "issued_at": doc.issued_at.isoformat().replace("+00:00", "Z"),
            "expires": doc.expires.isoformat().replace("+00:00", "Z"),
            "expired": trust.state_expired(moment),
            "accepted_at": _iso(stored.accepted_at),
            "images": len(doc.images),
        },
        "images": {
            "by_status": counts,
            "list": [
                {
                    "repository": r.repository,
                    "digest": r.digest,
                    "status": r.status,
                    "error": r.error,
                }
                for r in results
            ],
        },
        "outbox": outbox_dict(await db.outbox_stats()),
    }
