"""What the dashboard shows, as data: one function per page, each returning the JSON
that ``/api/v1/dashboard/...`` serves and that the HTML pages render, so a scraper and
an operator read the same numbers.

The fleet page asks the database for counts, per-group rollout progress and one page of
satellites (filtered, sorted and paged in SQL: :meth:`groundcontrol.store.Queries.fleet_page`);
nothing here reads every satellite. The connectivity strip is a pure function of the
check-ins kept for a satellite (:func:`connectivity`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.responses import Response

from groundcontrol.api.base import V1, Ctx, Endpoint, iso, ok
from groundcontrol.api.satellites import satellite_json
from groundcontrol.config import parse_int
from groundcontrol.contract import Envelope, StateDocument
from groundcontrol.errors import BadRequest
from groundcontrol.services import Services
from groundcontrol.status import SUMMARIES, contact_kind, report_sent_at
from groundcontrol.store import FLEET_SORTS, FleetQuery, StatusClock

PAGE_SIZE = 50
AUDIT_PAGE_SIZE = 100
MAX_PAGE = 100_000
MAX_SEARCH = 100
# the connectivity strip's windows (``?window=``); the first is the default
STRIP_WINDOWS = {"7d": 7 * 86400, "24h": 86400, "1h": 3600}
HISTORY_LIMIT = 50
# a group member's place in the rollout of what was last published to it
PROGRESS = ("current", "behind", "failing", "offline", "pending", "revoked")
CACHE_WARNING = 0.9  # share of the cache budget from which the page warns


def _status_clock(services: Services, now: float) -> StatusClock:
    config = services.config
    return StatusClock.at(now, config.stale_after, config.offline_after)


# --- the fleet ---------------------------------------------------------------------------


def page_number(params: Mapping[str, str]) -> int:
    try:
        return parse_int(params.get("page") or "1", 1, MAX_PAGE)
    except ValueError:
        raise BadRequest(f"page must be between 1 and {MAX_PAGE}", code="invalid_page") from None


def fleet_query(params: Mapping[str, str]) -> tuple[FleetQuery, int]:
    """``?q=&status=&group=&sort=&page=`` → (query, page number); refuses what it cannot
    honour with a 400 naming the parameter."""
    search = params.get("q", "").strip()
    if len(search) > MAX_SEARCH:
        raise BadRequest(f"q must be at most {MAX_SEARCH} characters", code="invalid_q")
    status = params.get("status") or None
    if status is not None and status not in SUMMARIES:
        raise BadRequest(f"status must be one of {', '.join(SUMMARIES)}", code="invalid_status")
    group = params.get("group") or None
    sort = params.get("sort") or "name"
    descending = sort.startswith("-")
    if sort.removeprefix("-") not in FLEET_SORTS:
        raise BadRequest(
            f"sort must be one of {', '.join(FLEET_SORTS)} (a leading - reverses)",
            code="invalid_sort",
        )
    page = page_number(params)
    query = FleetQuery(
        search=search,
        status=status,
        group=group,
        sort=sort.removeprefix("-"),
        descending=descending,
        offset=(page - 1) * PAGE_SIZE,
        limit=PAGE_SIZE,
    )
    return query, page


def rollout_json(rows: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    """Rows of (group_name, progress, n) → {group: {progress: n, ..., "members": total}}."""
    out: dict[str, dict[str, int]] = {}
    for r in rows:
        counts = out.setdefault(r["group_name"], dict.fromkeys(PROGRESS, 0))
        counts[r["progress"]] += int(r["n"])
    for counts in out.values():
        counts["members"] = sum(counts[p] for p in PROGRESS)
    return out


async def fleet_view(services: Services, params: Mapping[str, str], now: float) -> dict[str, Any]:
    query, page = fleet_query(params)
    clock = _status_clock(services, now)
    async with services.store.transaction() as q:
        counts = await q.fleet_counts(clock)
        matched, rows = await q.fleet_page(query, clock)
        rollouts = rollout_json(await q.group_rollouts(clock))
        last_changes = await q.group_last_changes()
        group_names = await q.group_names()
    groups = [
        {
            "name": name,
            "last_change": iso(last_changes.get(name)),
            "rollout": rollouts.get(name, {**dict.fromkeys(PROGRESS, 0), "members": 0}),
        }
        for name in group_names
    ]
    return {
        "generated_at": iso(now),
        "counts": {status: counts.get(status, 0) for status in SUMMARIES},
        "total": sum(counts.values()),
        "groups": groups,
        "query": {
            "q": query.search,
            "status": query.status,
            "group": query.group,
            "sort": ("-" if query.descending else "") + query.sort,
        },
        "matched": matched,
        "page": page,
        "pages": max(1, math.ceil(matched / PAGE_SIZE)),
        "page_size": PAGE_SIZE,
        "satellites": [
            {
                "name": r["name"],
                "status": r["status"],
                "groups": r["groups"],
                "labels": r["labels"],
                "last_seen": iso(r["last_seen"]),
                "published_version": r["published_version"],
                "applied_version": r["applied_version"],
                "failing_images": r["failing_images"],
            }
            for r in rows
        ],
    }


# --- a group -----------------------------------------------------------------------------


async def group_view(
    services: Services, name: str, now: float, params: Mapping[str, str]
) -> dict[str, Any]:
    """The group, its rollout and history, and one page of its members (``?page=``)."""
    clock = _status_clock(services, now)
    page = page_number(params)
    async with services.store.transaction() as q:
        group = await q.group(name)
        members = await q.group_member_rows(name, clock, PAGE_SIZE, (page - 1) * PAGE_SIZE)
        rollout = rollout_json(await q.group_rollouts(clock, name)).get(
            name, {**dict.fromkeys(PROGRESS, 0), "members": 0}
        )
        history = await q.group_history(name, HISTORY_LIMIT)
    return {
        "generated_at": iso(now),
        "name": group.name,
        "description": group.description,
        "images": [
            {
                "reference": i.reference,
                "repository": i.repository,
                "tag": i.tag,
                "digest": i.digest,
                "platforms": list(i.platforms),
            }
            for i in group.images
        ],
        "rollout": rollout,
        "page": page,
        "pages": max(1, math.ceil(rollout["members"] / PAGE_SIZE)),
        "members": [
            {
                "name": m["name"],
                "status": m["status"],
                "published_version": m["published_version"],
                "applied_version": m["applied_version"],
                "last_seen": iso(m["last_seen"]),
            }
            for m in members
        ],
        "history": [
            {
                "at": iso(h["at"]),
                "change": h["change"],
                "images": [i["reference"] for i in json.loads(h["images"])],
                "published": h["published"],
                "versions": _version_range(h["min_version"], h["max_version"]),
            }
            for h in history
        ],
    }


def _version_range(low: int | None, high: int | None) -> str | None:
    if low is None or high is None:
        return None
    return str(low) if low == high else f"{low}-{high}"


# --- a satellite -------------------------------------------------------------------------


@dataclass(frozen=True)
class Contact:
    """A run of check-ins of one kind, by when the satellite signed them."""

    start: float
    end: float
    kind: str  # online, or late (they reached Ground Control long after)


@dataclass(frozen=True)
class Segment:
    start: float
    end: float
    kind: str  # online / late (alive, reports carried later) / offline / unknown

    def to_dict(self) -> dict[str, Any]:
        return {
            "start": iso(self.start),
            "end": iso(self.end),
            "seconds": round(self.end - self.start),
            "kind": self.kind,
        }


def connectivity(
    contacts: Sequence[Contact],
    start: float,
    end: float,
    *,
    offline_after: float,
    known_from: float | None,
) -> list[Segment]:
    """The window [start, end] as segments of the satellite's contact history.

    A run of check-ins keeps the satellite in contact from its first to ``offline_after``
    past its last (the rule the fleet status uses), or until the next run begins; what no
    run covers is offline, and what lies before ``known_from`` (its first contact, or its
    registration when it never made one) is unknown."""
    if known_from is None:
        return [Segment(start, end, "unknown")]
    painted = [Segment(start, known_from, "unknown"), Segment(known_from, end, "offline")]
    for contact in sorted(contacts, key=lambda c: (c.start, c.end)):
        top = Segment(contact.start, contact.end + offline_after, contact.kind)
        painted = _paint(painted, top)
    return _merge(_clip(s, start, end) for s in painted)


def _paint(segments: list[Segment], top: Segment) -> list[Segment]:
    """``segments`` (in order, not overlapping) with ``top`` laid over them."""
    out = []
    for s in segments:
        if s.end <= top.start or s.start >= top.end:
            out.append(s)
            continue
        if s.start < top.start:
            out.append(Segment(s.start, top.start, s.kind))
        if s.end > top.end:
            out.append(Segment(top.end, s.end, s.kind))
    out.append(top)
    return sorted(out, key=lambda s: s.start)


def _clip(segment: Segment, start: float, end: float) -> Segment:
    return Segment(max(segment.start, start), min(segment.end, end), segment.kind)


def _merge(segments: Iterable[Segment]) -> list[Segment]:
    out: list[Segment] = []
    for s in segments:
        if s.end <= s.start:
            continue
        if out and out[-1].kind == s.kind and out[-1].end >= s.start:
            out[-1] = Segment(out[-1].start, max(out[-1].end, s.end), s.kind)
        else:
            out.append(s)
    return out


def expiry_warning(
    expires_at: float | None, reported_expired: bool, now: float, warn_before: float
) -> str:
    """``expired``, ``soon`` (within ``warn_before``), ``ok``, or ``unknown``."""
    if reported_expired or (expires_at is not None and expires_at <= now):
        return "expired"
    if expires_at is None:
        return "unknown"
    return "soon" if expires_at - now < warn_before else "ok"


def strip_window(params: Mapping[str, str]) -> str:
    window = params.get("window") or next(iter(STRIP_WINDOWS))
    if window not in STRIP_WINDOWS:
        raise BadRequest(f"window must be one of {', '.join(STRIP_WINDOWS)}", code="invalid_window")
    return window


async def satellite_view(
    services: Services, name: str, now: float, params: Mapping[str, str]
) -> dict[str, Any]:
    config = services.config
    window = strip_window(params)
    since = int(now) - STRIP_WINDOWS[window]
    async with services.store.transaction() as q:
        sat = await q.satellite(name)
        latest = await q.latest_state(name)
        states = await q.states_published(name)
        contact_rows, first_contact = await q.contacts_since(name, since - config.offline_after)
        rows = await q.checkins_since(name, since)
        recent = await q.checkins(name, 20)
    base = satellite_json(services, sat, now)
    segments = connectivity(
        [Contact(r["start_at"], r["end_at"], r["kind"]) for r in contact_rows],
        since,
        now,
        offline_after=config.offline_after,
        known_from=first_contact if first_contact is not None else sat.registered_at,
    )
    # what the check-ins still kept say: when each version was first applied, how many
    # arrived late
    applied_at: dict[int, float] = {}
    late = 0
    for r in rows:
        sent = report_sent_at(json.loads(r["report"]), r["received_at"])
        version = int(r["state_version"])
        applied_at[version] = min(applied_at.get(version, sent), sent)
        late += contact_kind(sent, r["received_at"], config.stale_after) == "late"
    report = sat.last_report or {}
    expires = {int(s["version"]): int(s["expires_at"]) for s in states}
    applied_expires = expires.get(sat.applied_version or 0)
    used, budget = report.get("cache_bytes_used"), report.get("cache_bytes_max")
    share = used / budget if isinstance(used, int) and isinstance(budget, int) and budget else None
    return {
        **base,
        "generated_at": iso(now),
        "strip": {
            "window": window,
            "from": iso(since),
            "to": iso(now),
            "segments": [s.to_dict() for s in segments],
            "offline": [s.to_dict() for s in segments if s.kind == "offline"],
            "late_reports": late,
        },
        "versions": [
            {
                "version": s["version"],
                "published_at": iso(s["issued_at"]),
                "expires_at": iso(s["expires_at"]),
                "applied_at": iso(applied_at.get(int(s["version"]))),
            }
            for s in states
        ],
        "images": _images(latest, report),
        "cache": {
            "used": used,
            "max": budget,
            "share": None if share is None else round(share, 4),
            "warning": share is not None and share >= CACHE_WARNING,
        },
        "outbox": {"depth": report.get("outbox_depth", 0), "dropped": report.get("dropped", 0)},
        "state": {
            "applied_version": sat.applied_version,
            "applied_expires_at": iso(applied_expires),
            "latest_version": None if latest is None else latest["version"],
            "latest_expires_at": None if latest is None else iso(latest["expires_at"]),
            "warning": expiry_warning(
                applied_expires,
                bool(report.get("state_expired")),
                now,
                config.state_refresh_before,
            ),
        },
        "checkins": [
            {
                "seq": r["seq"],
                "received_at": iso(r["received_at"]),
                "state_version": r["state_version"],
                "errors": len(json.loads(r["report"]).get("errors", [])),
            }
            for r in recent
        ],
    }


def _images(latest: Mapping[str, Any] | None, report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The images of the latest state, each with what the last report says of it."""
    reported = {
        (i.get("repository"), i.get("digest")): i
        for i in report.get("images") or []
        if isinstance(i, dict)
    }
    if latest is None:
        return []
    data = latest["envelope"].encode()
    doc = StateDocument.from_dict(json.loads(Envelope.from_json(data, len(data)).payload))
    out = []
    for image in doc.images:
        seen = reported.get((image.repository, image.digest), {})
        out.append(
            {
                "repository": image.repository,
                "tag": image.tag,
                "digest": image.digest,
                "platforms": list(image.platforms),
                "status": seen.get("status", "unreported"),
                "error": seen.get("error"),
            }
        )
    return out


# --- the audit log ---------------------------------------------------------------------


async def audit_view(services: Services, params: Mapping[str, str]) -> dict[str, Any]:
    page = page_number(params)
    async with services.store.transaction() as q:
        total, rows = await q.audit_entries(AUDIT_PAGE_SIZE, (page - 1) * AUDIT_PAGE_SIZE)
    return {
        "total": total,
        "page": page,
        "pages": max(1, math.ceil(total / AUDIT_PAGE_SIZE)),
        "entries": [
            {
                "at": iso(r["at"]),
                "actor": r["actor"],
                "action": r["action"],
                "target": r["target"],
                "detail": r["detail"],
            }
            for r in rows
        ],
    }


# --- the JSON twins ----------------------------------------------------------------------


async def fleet_json(ctx: Ctx) -> Response:
    return ok(await fleet_view(ctx.services, ctx.request.query_params, ctx.now))


async def group_json(ctx: Ctx) -> Response:
    params = ctx.request.query_params
    return ok(await group_view(ctx.services, ctx.param("name"), ctx.now, params))


async def satellite_json_view(ctx: Ctx) -> Response:
    params = ctx.request.query_params
    return ok(await satellite_view(ctx.services, ctx.param("name"), ctx.now, params))


async def fleet_metrics(ctx: Ctx) -> Response:
    """The fleet page's numbers in Prometheus' text format: satellites by status, and
    group members by their place in the rollout (for a scrape job with a Bearer token)."""
    clock = _status_clock(ctx.services, ctx.now)
    async with ctx.services.store.transaction() as q:
        counts = await q.fleet_counts(clock)
        rollouts = rollout_json(await q.group_rollouts(clock))
    registry = CollectorRegistry()
    by_status = Gauge(
        "groundcontrol_satellites", "Satellites by status", ["status"], registry=registry
    )
    for status in SUMMARIES:
        by_status.labels(status).set(counts.get(status, 0))
    members = Gauge(
        "groundcontrol_group_members",
        "Group members by their place in the rollout of what was last published to them",
        ["group", "progress"],
        registry=registry,
    )
    for group, progress in sorted(rollouts.items()):
        for kind in PROGRESS:
            members.labels(group, kind).set(progress[kind])
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


async def audit_json(ctx: Ctx) -> Response:
    return ok(await audit_view(ctx.services, ctx.request.query_params))


API_ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        "GET",
        f"{V1}/dashboard",
        fleet_json,
        "operator",
        "The fleet page's data (?q=, status=, group=, sort=, page=)",
    ),
    Endpoint(
        "GET",
        f"{V1}/dashboard/groups/{{name}}",
        group_json,
        "operator",
        "A group page's data (?page= of its members)",
    ),
    Endpoint(
        "GET",
        f"{V1}/dashboard/satellites/{{name}}",
        satellite_json_view,
        "operator",
        "A satellite page's data (?window=7d, 24h or 1h for the connectivity strip)",
    ),
    Endpoint(
        "GET",
        f"{V1}/dashboard/metrics",
        fleet_metrics,
        "operator",
        "The fleet page's counts in Prometheus' text format",
    ),
    Endpoint("GET", f"{V1}/audit", audit_json, "operator", "The audit log (?page=)"),
)
