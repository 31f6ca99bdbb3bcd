"""Satellite status, derived purely from what was stored and the time now."""

from __future__ import annotations

from dataclasses import dataclass
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
