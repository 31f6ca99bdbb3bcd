from __future__ import annotations

from registry_proxy.breaker import CircuitBreaker, State
from registry_proxy.routing import Router, Target, UpstreamName

HUB = UpstreamName("docker.io", "https://registry-1.docker.io", default=True)
GHCR = UpstreamName("ghcr.io", "https://ghcr.io")


def test_route_by_ns_parameter() -> None:
    r = Router([HUB, GHCR])
    assert r.route("library/nginx", ns="docker.io") == Target(
        "library/nginx", "docker.io/library/nginx", "docker.io", "library/nginx"
    )
    assert r.route("owner/app", ns="ghcr.io").upstream == "ghcr.io"


def test_route_by_host_prefix_and_default_share_storage() -> None:
    r = Router([HUB, GHCR])
    prefixed = r.route("docker.io/library/nginx")
    default = r.route("library/nginx")
    containerd = r.route("library/nginx", ns="docker.io")
    assert prefixed.repo == default.repo == containerd.repo == "docker.io/library/nginx"
    assert r.route("ghcr.io/owner/app") == Target(
        "ghcr.io/owner/app", "ghcr.io/owner/app", "ghcr.io", "owner/app"
    )


def test_docker_hub_library_rule_only_for_docker_hub() -> None:
    r = Router([HUB, GHCR])
    assert r.route("nginx").upstream_repo == "library/nginx"
    assert r.route("docker.io/nginx").upstream_repo == "library/nginx"
    assert r.route("ghcr.io/app").upstream_repo == "app"


def test_unknown_ns_and_no_default_stay_local() -> None:
    r = Router([GHCR])
    assert r.route("team/app") == Target("team/app", "team/app")
    assert r.route("team/app", ns="quay.io") == Target("team/app", "team/app")
    assert Router([]).route("x") == Target("x", "x")


def test_breaker_opens_after_threshold_and_probes_half_open() -> None:
    now = [0.0]
    b = CircuitBreaker(failure_threshold=2, open_seconds=5, clock=lambda: now[0])
    assert b.allow_request()
    b.failure()
    assert b.state is State.CLOSED
    b.failure()
    assert b.state is State.OPEN
    assert not b.allow_request()
    now[0] = 4.9
    assert not b.needs_probe()
    now[0] = 5.0
    assert b.needs_probe()
    b.failure()  # the probe failed: open again, for twice as long
    assert b.state is State.OPEN
    now[0] = 14.9
    assert b.state is State.OPEN
    now[0] = 15.0
    assert b.state is State.HALF_OPEN
    b.success()
    assert b.state is State.CLOSED
    assert b.allow_request()


def test_breaker_success_resets_failure_count() -> None:
    b = CircuitBreaker(failure_threshold=2, clock=lambda: 0.0)
    b.failure()
    b.success()
    b.failure()
    assert b.state is State.CLOSED
