"""Tag pulls when the upstream link goes dark (packets dropped, not refused): a cached
tag answers from its last known mapping once the upstream has not answered within
`registry.stale_after`, while the lookup goes on in the background (stale while
revalidate). A real satellite, a real docker-registry, a FaultRelay that blackholes."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import SatelliteFactory
from tests.support.faultrelay import Fault, FaultRelay, blackhole, stall
from tests.support.images import GeneratedLayout
from tests.support.net import LOOPBACK
from tests.support.satellite import UpstreamTable
from tests.support.skopeo import Skopeo
from tests.support.upstream import UpstreamRegistry

ACCEPT = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json"
STALE = "satellite; hit; detail=stale"


@pytest.fixture
def relay(upstream_registry: UpstreamRegistry) -> Iterator[FaultRelay]:
    with FaultRelay(LOOPBACK, upstream_registry.port) as relay:
        yield relay


def test_a_cached_tag_answers_while_the_upstream_is_dark(
    upstream_registry: UpstreamRegistry,
    relay: FaultRelay,
    satellite_factory: SatelliteFactory,
    skopeo: Skopeo,
    image_layout: GeneratedLayout,
) -> None:
    skopeo.copy(image_layout.oci("app:v1"), f"docker://{upstream_registry.host}/library/app:v1")
    # a tag timeout far beyond the client's: without stale-while-revalidate every pull
    # below would wait for it and the client would give up
    sat = satellite_factory(
        push=False,
        registry={"tag_timeout": 600, "stale_after": "0.25"},
        upstreams=[UpstreamTable("up", relay.url, default=True)],
    )
    url = f"{sat.url}/v2/library/app/manifests/v1"
    first = httpx.get(url, headers={"accept": ACCEPT}, timeout=30)
    assert first.status_code == 200
    assert first.headers["cache-status"] == "satellite; fwd=uri-miss"
    again = httpx.get(url, headers={"accept": ACCEPT}, timeout=30)
    assert again.headers["cache-status"] == "satellite; hit"

    relay.reset_counters()
    relay.add_fault(Fault("/v2/", blackhole()))
    with httpx.Client(timeout=20) as client:
        for _ in range(3):
            r = client.get(url, headers={"accept": ACCEPT})
            assert r.status_code == 200
            assert r.content == image_layout.app.manifest_bytes()
            assert r.headers["cache-status"] == STALE
    assert sat.metric("satellite_stale_answers_total", reason="slow") == 3
    # the three pulls shared one lookup, still waiting on the dark link
    assert relay.count("/manifests/v1", method="HEAD") == 1
    # a tag never cached has nothing to answer with: it waits for the upstream
    with pytest.raises(httpx.TimeoutException):
        httpx.get(f"{sat.url}/v2/library/app/manifests/v2", headers={"accept": ACCEPT}, timeout=2)


def test_an_upstream_answer_within_the_budget_wins(
    upstream_registry: UpstreamRegistry,
    relay: FaultRelay,
    satellite_factory: SatelliteFactory,
    skopeo: Skopeo,
    image_layout: GeneratedLayout,
) -> None:
    """Online behaviour is unchanged: a slow upstream that answers within the budget is
    waited for, and a moved tag is followed."""
    skopeo.copy(image_layout.oci("app:v1"), f"docker://{upstream_registry.host}/library/app:v1")
    sat = satellite_factory(
        push=False,
        registry={"tag_timeout": 60, "stale_after": 30},
        upstreams=[UpstreamTable("up", relay.url, default=True)],
    )
    url = f"{sat.url}/v2/library/app/manifests/v1"
    assert httpx.get(url, headers={"accept": ACCEPT}, timeout=30).status_code == 200
    # the tag moves upstream (to an index) and the link turns slow
    skopeo.copy(
        image_layout.oci("multi:v1"),
        f"docker://{upstream_registry.host}/library/app:v1",
        "--all",
        "--preserve-digests",
    )
    relay.add_fault(Fault("/manifests/v1", stall(1.0), method="HEAD", times=1))
    r = httpx.get(url, headers={"accept": ACCEPT}, timeout=30)
    assert r.status_code == 200
    assert r.headers["cache-status"] == "satellite; fwd=uri-miss"
    assert r.headers["docker-content-digest"] == image_layout.multi.digest
    assert sat.metric("satellite_stale_answers_total") == 0
