"""A real runtime through the satellite: containerd's `ctr images pull` with a hosts.toml
mirror sends `GET /v2/library/x/manifests/y?ns=docker.io`, as kubelet-driven pulls do."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx

from tests.conftest import SatelliteFactory
from tests.support.containerd import Containerd, mirror_hosts_dir
from tests.support.images import GeneratedLayout
from tests.support.satellite import UpstreamTable
from tests.support.skopeo import Skopeo
from tests.support.upstream import UpstreamRegistry


def test_ctr_pulls_through_the_satellite_and_again_offline(
    skopeo: Skopeo,
    image_layout: GeneratedLayout,
    upstream_registry: UpstreamRegistry,
    satellite_factory: SatelliteFactory,
    containerd_factory: Callable[[], Containerd],
    tmp_path: Path,
) -> None:
    skopeo.copy(image_layout.oci("app:v1"), f"docker://{upstream_registry.host}/library/app:v1")
    skopeo.copy(
        image_layout.oci("multi:v1"),
        f"docker://{upstream_registry.host}/library/multi:v1",
        all_images=True,
    )
    sat = satellite_factory(
        push=False, upstreams=[UpstreamTable("docker.io", upstream_registry.url)]
    )
    hosts = mirror_hosts_dir(tmp_path, sat.host)
    first = containerd_factory()
    first.pull("docker.io/library/app:v1", hosts)
    first.pull("docker.io/library/multi:v1", hosts)
    assert first.image_digest("docker.io/library/app:v1") == image_layout.app.digest
    assert first.image_digest("docker.io/library/multi:v1") == image_layout.multi.digest
    catalog = httpx.get(f"{sat.url}/v2/_catalog").json()["repositories"]
    assert "docker.io/library/app" in catalog
    # the link goes down; a second site runtime still pulls everything from the satellite
    upstream_registry.stop()
    second = containerd_factory()
    second.pull("docker.io/library/app:v1", hosts)
    assert second.image_digest("docker.io/library/app:v1") == image_layout.app.digest
