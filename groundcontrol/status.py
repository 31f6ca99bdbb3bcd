"""Satellite status, derived purely from what was stored and the time now."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from groundcontrol.models import Satellite

Connectivity = Literal["pending", "revoked", "online", "stale", "offline"]
# the one-word summaries, most urgent first
SUMMARIES = ("revoked", "pending", "offline", "failing", "stale", "behind", "online")


@dataclass(frozen=True)
class SatelliteStatus:
    connectivity: Connectivity
    behind: bool  # applied < published
    failing_images: tuple[str, ...]  # "repository@digest: error"
    missing_images: int
    state_expired: bool
    summary: str  # one word for lists: the most urgent of the above

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.summary,
            "connectivity": self.connectivity,
            "behind": self.behind,
            "failing_images": list(self.failing_images),
            "missing_images": self.missing_images,
            "state_expired": self.state_expired,
        }


def failing_count(report: object) -> int:
    """How many images a check-in report says failed: what the fleet list filters and
    counts on in SQL (``satellites.failing_images``), the same test as below."""
    images = report.get("images") if isinstance(report, dict) else None
    if not isinstance(images, list):
        return 0
    return sum(1 for i in images if isinstance(i, dict) and i.get("status") == "failed")


def derive_status(
    sat: Satellite, now: float, stale_after: int, offline_after: int
) -> SatelliteStatus:
    """online/stale/offline from the last contact; behind, failing, expired from the last report.

    ``summary`` orders by urgency: revoked, pending (never registered), offline, failing,
    stale, behind, online.
    """
    report = sat.last_report or {}
    images = report.get("images") or []
    failing = tuple(
        f"{i.get('repository')}@{i.get('digest')}" + (f": {i['error']}" if i.get("error") else "")
        for i in images
        if isinstance(i, dict) and i.get("status") == "failed"
    )
    missing = sum(1 for i in images if isinstance(i, dict) and i.get("status") == "missing")
    expired = bool(report.get("state_expired", False))
    connectivity: Connectivity
    if sat.revoked_at is not None:
        connectivity = "revoked"
    elif sat.registered_at is None:
        connectivity = "pending"
    elif sat.last_seen is None or now - sat.last_seen > offline_after:
        connectivity = "offline"
    elif now - sat.last_seen > stale_after:
        connectivity = "stale"
    else:
        connectivity = "online"
    behind = sat.registered_at is not None and (sat.applied_version or 0) < sat.published_version
    summary: str
    if connectivity in ("revoked", "pending", "offline"):
        summary = connectivity
    elif failing:
        summary = "failing"
    elif connectivity == "stale":
        summary = "stale"
    elif behind:
        summary = "behind"
    else:
        summary = "online"
    return SatelliteStatus(connectivity, behind, failing, missing, expired, summary)


# --- contact history (the dashboard's connectivity strip) -------------------------------

Run = tuple[int, int, str]  # (first, last) signing time of check-ins in contact, and kind


def report_sent_at(report: Mapping[str, Any], fallback: int) -> int:
    """When a stored report says it was signed (``sent_at``), else ``fallback``."""
    try:
        text = str(report["sent_at"]).replace("Z", "+00:00")
        return int(datetime.fromisoformat(text).timestamp())
    except (KeyError, ValueError):
        return fallback


def contact_kind(sent_at: float, received_at: float, late_after: float) -> str:
    """``online``, or ``late`` for a report that reached Ground Control more than
    ``late_after`` after it was signed (an outbox drained late, a USB bundle): the site
    was alive but cut off."""
    return "late" if received_at - sent_at > late_after else "online"


def contact_runs(points: list[tuple[int, str]], within: int) -> list[Run]:
    """Check-ins as (signed at, kind) → runs of one kind whose neighbours are at most
    ``within`` apart (a batch of check-ins is usually one run)."""
    runs: list[Run] = []
    for at, kind in sorted(points):
        if runs and runs[-1][2] == kind and at - runs[-1][1] <= within:
            runs[-1] = (runs[-1][0], max(runs[-1][1], at), kind)
        else:
            runs.append((at, at, kind))
    return runs
