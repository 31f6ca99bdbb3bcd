"""Publishing signed desired state: who is affected, what they get, one version each.

The core is pure: :func:`desired_images` merges a satellite's groups into one image list,
:func:`content_hash` fingerprints what a state says (images and config, not version or
times), :func:`build_state` assembles the document. :class:`Publisher` does the I/O:
read the affected satellites, resolve every reference they need once against the central
registry, then in one transaction bump each satellite's version, sign and store. A
satellite whose content did not change gets no new version unless ``force`` (re-signing
before expiry, or an operator asking to re-resolve moved tags).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from groundcontrol.config import Config
from groundcontrol.contract import ImageDescriptor, StateDocument, canonical_json, sign_state
from groundcontrol.db import Row
from groundcontrol.errors import Conflict, GroundControlError
from groundcontrol.keys import Signer, to_datetime
from groundcontrol.models import Group, ImageRef, Satellite, effective_config
from groundcontrol.resolver import Resolver
from groundcontrol.store import Queries, Store

MAX_ATTEMPTS = 4
log = logging.getLogger("groundcontrol")
T = TypeVar("T")


def desired_images(groups: Iterable[Group]) -> list[ImageRef]:
    """The union of the groups' images; one entry per reference, platforms merged.

    An empty platform list means "all platforms", so it absorbs any explicit list.
    """
    merged: dict[tuple[str, str | None, str | None], set[str] | None] = {}
    for group in groups:
        for img in group.images:
            key = (img.repository, img.tag, img.digest)
            if key not in merged:
                merged[key] = set(img.platforms) if img.platforms else None
                continue
            have = merged[key]
            merged[key] = None if have is None or not img.platforms else have | set(img.platforms)
    return [
        ImageRef(repo, tag, digest, tuple(sorted(platforms or ())))
        for (repo, tag, digest), platforms in sorted(
            merged.items(), key=lambda kv: (kv[0][0], kv[0][1] or "", kv[0][2] or "")
        )
    ]


def content_hash(images: Sequence[ImageDescriptor], config: Mapping[str, Any]) -> str:
    body = canonical_json({"images": [i.to_dict() for i in images], "config": dict(config)})
    return hashlib.sha256(body).hexdigest()


def build_state(
    satellite: str,
    version: int,
    now: float,
    lifetime: int,
    images: Sequence[ImageDescriptor],
    config: Mapping[str, Any],
) -> StateDocument:
    issued = to_datetime(int(now))
    return StateDocument(
        satellite=satellite,
        version=version,
        issued_at=issued,
        expires=issued + timedelta(seconds=lifetime),
        images=tuple(images),
        config=dict(config),
    )


RefKey = tuple[str, str | None, str | None]


def ref_key(ref: ImageRef) -> RefKey:
    return (ref.repository, ref.tag, ref.digest)


def descriptors_for(
    refs: Sequence[ImageRef], resolved: Mapping[RefKey, ImageDescriptor]
) -> list[ImageDescriptor]:
    """The resolved descriptors with each reference's own platforms to keep."""
    out = []
    for ref in refs:
        base = resolved[ref_key(ref)]
        out.append(
            ImageDescriptor(
                repository=base.repository,
                tag=base.tag,
                digest=base.digest,
                media_type=base.media_type,
                size=base.size,
                platforms=ref.platforms,
            )
        )
    return out


@dataclass(frozen=True)
class Published:
    satellite: str
    version: int


class StaleResolution(Exception):
    """The transaction needs references that were not resolved before it began."""

    def __init__(self, missing: Sequence[ImageRef]) -> None:
        super().__init__(", ".join(r.reference for r in missing))
        self.missing = list(missing)


Mutation = Callable[[Queries], Awaitable[tuple[T, Sequence[str]]]]


class Publisher:
    """Runs a fleet change and the state publication it causes as one transaction.

    Resolution talks to the registry and must not happen inside a transaction, so
    :meth:`run` is optimistic: it runs the change, finds which references the affected
    satellites need, and if some are unresolved rolls back, resolves them, and runs the
    change again (bounded). A reference that cannot be resolved aborts the change.
    """

    def __init__(
        self,
        store: Store,
        signer: Signer,
        resolver: Resolver,
        config: Config,
        *,
        on_published: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.signer = signer
        self.resolver = resolver
        self.config = config
        # called after a transaction that published something has committed; must not
        # block or raise (it schedules the registry push of groundcontrol.artifacts)
        self.on_published = on_published

    async def run(
        self, mutate: Mutation[T], now: float, *, force: bool = False
    ) -> tuple[T, list[Published]]:
        resolved: dict[RefKey, ImageDescriptor] = {}
        for _ in range(MAX_ATTEMPTS):
            try:
                async with self.store.transaction() as q:
                    result, names = await mutate(q)
                    published = await self.publish(q, names, now, resolved, force=force)
                if published and self.on_published is not None:
                    self.on_published()
                return result, published
            except StaleResolution as stale:
                for ref in stale.missing:
                    resolved[ref_key(ref)] = await self.resolver.resolve(ref)
        raise Conflict("the fleet changed while publishing; try again", code="publish_conflict")

    async def publish_now(
        self, names: Sequence[str], now: float, *, force: bool = False
    ) -> list[Published]:
        async def nothing(q: Queries) -> tuple[None, Sequence[str]]:
            return None, names

        _, published = await self.run(nothing, now, force=force)
        return published

    async def state_for_read(self, name: str, now: float) -> tuple[Satellite, Row | None]:
        """The satellite and its latest state, re-signed with a new version first when
        that state nears expiry (``state.refresh_before``). When re-signing fails (the
        registry or the keys unavailable) a state that has not expired yet is still
        answered; one that has, or none at all, raises."""
        async with self.store.transaction() as q:
            sat = await q.satellite(name)
            latest = await q.latest_state(name)
        if sat.revoked_at is None and (
            latest is None or latest["expires_at"] - now < self.config.state_refresh_before
        ):
            try:
                await self.publish_now([name], now, force=True)
            except GroundControlError as exc:
                if latest is None or latest["expires_at"] <= now:
                    raise
                # the early refresh exists for outages like this one: the state still holds
                log.warning("state of %s not re-signed yet: %s", name, exc.message)
                return sat, latest
            async with self.store.transaction() as q:
                latest = await q.latest_state(name)
        return sat, latest

    async def publish(
        self,
        q: Queries,
        names: Sequence[str],
        now: float,
        resolved: Mapping[RefKey, ImageDescriptor],
        *,
        force: bool = False,
    ) -> list[Published]:
        """Sign and store new states for ``names`` whose content changed (or all: force)."""
        satellites = await q.satellites(sorted(set(names)))
        wanted = tuple(sorted({g for s in satellites for g in s.groups}))
        groups = {g.name: g for g in await q.groups(wanted)}
        plans = [
            (s, desired_images(groups[g] for g in s.groups if g in groups)) for s in satellites
        ]
        missing = {ref_key(r): r for _, refs in plans for r in refs if ref_key(r) not in resolved}
        if missing:
            raise StaleResolution(list(missing.values()))
        if not plans:
            return []
        _root, keys = await self.signer.state_keys(q)
        published = []
        for sat, refs in plans:
            if sat.revoked_at is not None:
                continue  # a revoked satellite gets nothing further
            images = descriptors_for(refs, resolved)
            config = effective_config(self.config, sat.config).to_dict()
            digest = content_hash(images, config)
            if not force:
                latest = await q.latest_state(sat.name)
                if latest is not None and latest["content_hash"] == digest:
                    continue
            version = await q.next_state_version(sat.name)
            doc = build_state(sat.name, version, now, self.config.state_expires, images, config)
            envelope = sign_state(doc, keys).to_json().decode()
            await q.insert_state(
                sat.name,
                version,
                envelope,
                digest,
                int(now),
                int(now) + self.config.state_expires,
                self.config.states_kept,
            )
            published.append(Published(sat.name, version))
        return published
