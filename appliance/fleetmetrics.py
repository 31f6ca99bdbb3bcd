"""Prometheus metrics of following Ground Control, on the registry's /metrics."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge

if TYPE_CHECKING:
    from appliance.fleet import Link
    from appliance.fleetdb import OutboxStats
    from groundcontrol.contract import TrustedState


class FleetMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.last_contact: Link | None = None
        self.state_version = Gauge(
            "satellite_state_version",
            "Version of the signed state applied (0: none)",
            multiprocess_mode="livemostrecent",
            registry=r,
        )
        self.state_expires = Gauge(
            "satellite_state_expires_timestamp_seconds",
            "When the applied state expires (Unix time; 0: no state)",
            multiprocess_mode="livemostrecent",
            registry=r,
        )
        self.state_expired = Gauge(
            "satellite_state_expired",
            "1 while the applied state has expired (it is still served)",
            multiprocess_mode="livemostrecent",
            registry=r,
        )
        self.root_version = Gauge(
            "satellite_trust_root_version",
            "Version of the trusted root",
            multiprocess_mode="livemostrecent",
            registry=r,
        )
        self.seconds_since_contact = Gauge(
            "satellite_groundcontrol_last_contact_age_seconds",
            "Seconds since Ground Control last answered (-1: never in this run)",
            multiprocess_mode="livemostrecent",
            registry=r,
        )
        self.groundcontrol_reachable = Gauge(
            "satellite_groundcontrol_reachable",
            "1 when the last exchange with Ground Control got an answer",
            multiprocess_mode="livemostrecent",
            registry=r,
        )
        # with several serving processes `refresh` writes these, else each scrape reads them
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        if not self.multiprocess:
            self.seconds_since_contact.set_function(self._contact_age)
            self.groundcontrol_reachable.set_function(self._reachable)
        self.outbox_depth = Gauge(
            "satellite_outbox_depth",
            "Check-ins queued, not yet acknowledged",
            multiprocess_mode="livemostrecent",
            registry=r,
        )
        self.outbox_bytes = Gauge(
            "satellite_outbox_bytes",
            "Bytes of check-ins queued",
            multiprocess_mode="livemostrecent",
            registry=r,
        )
        self.checkins_sent = Counter(
            "satellite_checkins_sent", "Check-ins sent to Ground Control", registry=r
        )
        self.checkins_acked = Counter(
            "satellite_checkins_acked", "Check-ins acknowledged by Ground Control", registry=r
        )
        self.checkins_dropped = Gauge(
            "satellite_checkins_dropped",
            "Check-ins dropped to bound the outbox (heartbeats first), since registration",
            ["kind"],
            multiprocess_mode="livemostrecent",
            registry=r,
        )
        self.verification_failures = Counter(
            "satellite_state_verification_failures",
            "States refused, by reason",
            ["reason"],
            registry=r,
        )

    def refresh(self) -> None:
        """With several serving processes the scrape may reach one without the agent: the
        agent's process writes the values that change by themselves every second."""
        self.seconds_since_contact.set(self._contact_age())
        self.groundcontrol_reachable.set(self._reachable())

    def _reachable(self) -> float:
        return 1.0 if self.last_contact and self.last_contact.reachable else 0.0

    def _contact_age(self) -> float:
        link = self.last_contact
        if link is None or link.last_contact is None:
            return -1.0
        return max(0.0, time.time() - link.last_contact)

    def observe_state(self, trust: TrustedState, now: float) -> None:
        from datetime import UTC, datetime

        self.root_version.set(trust.root.version)
        doc = trust.state
        self.state_version.set(doc.version if doc else 0)
        self.state_expires.set(doc.expires.timestamp() if doc else 0)
        expired = trust.state_expired(datetime.fromtimestamp(now, UTC))
        self.state_expired.set(1 if expired else 0)

    def observe_outbox(self, stats: OutboxStats) -> None:
        self.outbox_depth.set(stats.depth)
        self.outbox_bytes.set(stats.bytes)
        self.checkins_dropped.labels("heartbeat").set(stats.dropped_heartbeats)
        self.checkins_dropped.labels("event").set(stats.dropped_events)
