"""Pull-through against a real upstream (Debian's docker-registry), with real clients."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx

from tests.conftest import SatelliteFactory, UpstreamFactory
from tests.support.images import GeneratedLayout, read_blob
from tests.support.satellite import SatelliteProcess, UpstreamTable
from tests.support.skopeo import Skopeo, SkopeoError
from tests.support.upstream import UpstreamRegistry

UP = "upstream.test"  # the upstream's name in the satellite's config
ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)


def _seed_upstream(skopeo: Skopeo, layout: GeneratedLayout, upstream: UpstreamRegistry) -> None:
    skopeo.copy(layout.oci("app:v1"), f"docker://{upstream.host}/library/app:v1")
    skopeo.copy(
        layout.oci("multi:v1"), f"docker://{upstream.host}/library/multi:v1", all_images=True
    )


def _proxy(factory: SatelliteFactory, url: str, **kwargs: object) -> SatelliteProcess:
    return factory(push=False, upstreams=[UpstreamTable(UP, url, default=True)], **kwargs)


def _blob_digests(layout_dir: Path) -> set[str]:
    return {f"sha256:{p.name}" for p in (layout_dir / "blobs" / "sha256").iterdir()}


def test_skopeo_pulls_through_default_and_host_prefix_routes(
    skopeo: Skopeo,
    image_layout: GeneratedLayout,
    upstream_registry: UpstreamRegistry,
    satellite_factory: SatelliteFactory,
    tmp_path: Path,
) -> None:
    _seed_upstream(skopeo, image_layout, upstream_registry)
    sat = _proxy(satellite_factory, upstream_registry.url)
    for i, ref in enumerate([f"{sat.host}/library/app:v1", f"{sat.host}/{UP}/library/app:v1"]):
        out = tmp_path / f"out{i}"
        skopeo.copy(f"docker://{ref}", f"oci:{out}:app:v1")
        assert skopeo.inspect_raw(f"docker://{ref}") == image_layout.app.manifest_bytes()
        assert _blob_digests(out) == set(image_layout.app.all_digests)
        for digest in image_layout.app.all_digests:
            alg, hexpart = digest.split(":")
            data = (out / "blobs" / alg / hexpart).read_bytes()
            assert hashlib.sha256(data).hexdigest() == hexpart
    # the index, with every platform
    out = tmp_path / "multi"
    skopeo.copy(f"docker://{sat.host}/library/multi:v1", f"oci:{out}:multi:v1", all_images=True)
    assert skopeo.inspect_raw(f"docker://{sat.host}/library/multi:v1") == (
        image_layout.multi.manifest_bytes()
    )
    # both routes share one cache: everything is stored once, under the upstream's name
    catalog = httpx.get(f"{sat.url}/v2/_catalog").json()["repositories"]
    assert catalog == [f"{UP}/library/app", f"{UP}/library/multi"]
    r = httpx.get(f"{sat.url}/v2/library/app/manifests/v1", headers={"accept": ACCEPT})
    assert r.headers["oci-namespace"] == UP


def test_ns_parameter_routes_like_containerd(
    skopeo: Skopeo,
    image_layout: GeneratedLayout,
    upstream_registry: UpstreamRegistry,
    satellite_factory: SatelliteFactory,
) -> None:
    _seed_upstream(skopeo, image_layout, upstream_registry)
    # no default upstream: without ?ns= the repository is local (and unknown)
    sat = satellite_factory(push=False, upstreams=[UpstreamTable(UP, upstream_registry.url)])
    r = httpx.get(f"{sat.url}/v2/library/app/manifests/v1", headers={"accept": ACCEPT})
    assert r.status_code == 404
    r = httpx.get(f"{sat.url}/v2/library/app/manifests/v1?ns={UP}", headers={"accept": ACCEPT})
    assert r.status_code == 200
    assert r.content == image_layout.app.manifest_bytes()
    assert r.headers["oci-namespace"] == UP
    layer = image_layout.app.layer_digests[0]
    r = httpx.get(f"{sat.url}/v2/library/app/blobs/{layer}?ns={UP}")
    assert r.status_code == 200
    assert r.content == read_blob(image_layout.path, layer)


def test_private_upstream_with_basic_auth(
    skopeo: Skopeo,
    image_layout: GeneratedLayout,
    upstream_registry_factory: UpstreamFactory,
    satellite_factory: SatelliteFactory,
    tmp_path: Path,
) -> None:
    private = upstream_registry_factory(auth=("robot", "s3cret"))
    skopeo.copy(
        image_layout.oci("app:v1"),
        f"docker://{private.host}/team/app:v1",
        dest_creds=("robot", "s3cret"),
    )
    anonymous = _proxy(satellite_factory, private.url)
    try:
        skopeo.copy(f"docker://{anonymous.host}/team/app:v1", f"oci:{tmp_path / 'x'}:app:v1")
        raise AssertionError("pull without credentials succeeded")
    except SkopeoError:
        pass
    authed = satellite_factory(
        push=False,
        upstreams=[
            UpstreamTable(
                UP, private.url, default=True, extra={"username": "robot", "password": "s3cret"}
            )
        ],
    )
    skopeo.copy(f"docker://{authed.host}/team/app:v1", f"oci:{tmp_path / 'y'}:app:v1")
    assert skopeo.inspect_raw(f"docker://{authed.host}/team/app:v1") == (
        image_layout.app.manifest_bytes()
    )


def test_cached_content_pulls_with_upstream_stopped(
    skopeo: Skopeo,
    image_layout: GeneratedLayout,
    upstream_registry: UpstreamRegistry,
    satellite_factory: SatelliteFactory,
    tmp_path: Path,
) -> None:
    _seed_upstream(skopeo, image_layout, upstream_registry)
    sat = _proxy(satellite_factory, upstream_registry.url)
    skopeo.copy(f"docker://{sat.host}/library/app:v1", f"oci:{tmp_path / 'warm'}:app:v1")
    upstream_registry.stop()
    for i in range(3):
        out = tmp_path / f"offline{i}"
        skopeo.copy(f"docker://{sat.host}/library/app:v1", f"oci:{out}:app:v1")
        assert _blob_digests(out) == set(image_layout.app.all_digests)
        ref = f"docker://{sat.host}/library/app@{image_layout.app.digest}"
        assert skopeo.inspect_raw(ref) == image_layout.app.manifest_bytes()
    # what was never cached is refused quickly and clearly
    r = httpx.get(f"{sat.url}/v2/library/multi/manifests/v1", headers={"accept": ACCEPT})
    assert r.status_code == 503
    assert "unreachable" in r.json()["errors"][0]["message"]
    metrics = httpx.get(f"{sat.url}/metrics").text
    assert f'satellite_upstream_online{{upstream="{UP}"}} 0.0' in metrics
    ready = httpx.get(f"{sat.url}/readyz").json()
    assert ready["upstreams_online"] == {UP: False}
    # the upstream comes back: the breaker's probe notices, new content flows again
    upstream_registry.start()
    for _ in range(100):
        r = httpx.get(f"{sat.url}/v2/library/multi/manifests/v1", headers={"accept": ACCEPT})
        if r.status_code == 200:
            break
        import time

        time.sleep(0.2)
    assert r.status_code == 200
    assert json.loads(r.content)["mediaType"] == "application/vnd.oci.image.index.v1+json"
