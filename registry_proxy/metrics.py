"""Prometheus metrics of the registry and its pull-through cache.

Each app gets its own CollectorRegistry, so that several apps in one process (tests)
never collide on the global one.

Served by several processes (appliance/workers.py, PROMETHEUS_MULTIPROC_DIR set before
the metrics are made), the counters and histograms are summed over every process, live
or gone, and each gauge says how its processes' values combine (``multiprocess_mode``).
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.cache_hits = Counter(
            "satellite_cache_hits", "Requests answered from the local store", ["kind"], registry=r
        )
        self.cache_misses = Counter(
            "satellite_cache_misses", "Requests that needed the upstream", ["kind"], registry=r
        )
        self.upstream_bytes = Counter(
            "satellite_upstream_bytes",
            "Blob bytes received from upstreams",
            ["upstream"],
            registry=r,
        )
        self.client_bytes = Counter(
            "satellite_client_bytes", "Blob bytes sent to clients", registry=r
        )
        self.stale_answers = Counter(
            "satellite_stale_answers",
            "Tag pulls answered from the cached mapping without the upstream's confirmation "
            "(reason: slow, the upstream had not answered within registry.stale_after; "
            "unreachable, it failed or its breaker was open)",
            ["upstream", "reason"],
            registry=r,
        )
        self.upstream_errors = Counter(
            "satellite_upstream_errors",
            "Failed upstream requests",
            ["upstream", "kind"],
            registry=r,
        )
        self.digest_mismatches = Counter(
            "satellite_digest_mismatches",
            "Upstream content whose digest or size did not match (never cached or served)",
            ["upstream"],
            registry=r,
        )
        self.coalesced = Counter(
            "satellite_coalesced_waiters",
            "Requests that joined a cache fill already under way instead of asking upstream",
            registry=r,
        )
        self.resumes = Counter(
            "satellite_upstream_resumes",
            "Interrupted upstream transfers resumed with Range",
            ["upstream"],
            registry=r,
        )
        self.upstream_online = Gauge(
            "satellite_upstream_online",
            "1 while the upstream is reachable (breaker closed)",
            ["upstream"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.cache_bytes = Gauge(
            "satellite_cache_bytes_used",
            "Bytes of content in the local store",
            multiprocess_mode="mostrecent",
            registry=r,
        )
        self.cache_max = Gauge(
            "satellite_cache_bytes_max",
            "The configured cache budget (0: none)",
            multiprocess_mode="mostrecent",
            registry=r,
        )
        self.evictions = Counter(
            "satellite_evictions", "Blobs evicted to stay within the cache budget", registry=r
        )
        self.bandwidth_cap = Gauge(
            "satellite_bandwidth_cap_bytes_per_second",
            "The cap on upstream traffic (0: none)",
            multiprocess_mode="mostrecent",
            registry=r,
        )
        self.replicated_bytes = Counter(
            "satellite_replicated_bytes",
            "Blob bytes replication fetched from upstreams",
            registry=r,
        )
        self.replication_images = Gauge(
            "satellite_replication_images",
            "Images of the state by replication status",
            ["status"],
            multiprocess_mode="livemostrecent",
            registry=r,
        )
        self.replication_seconds = Histogram(
            "satellite_replication_pass_seconds",
            "Duration of replication passes",
            buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 1800, 7200),
            registry=r,
        )

    def render(self) -> bytes:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            every = CollectorRegistry()
            MultiProcessCollector(every)  # type: ignore[no-untyped-call]
            return generate_latest(every)
        return generate_latest(self.registry)
