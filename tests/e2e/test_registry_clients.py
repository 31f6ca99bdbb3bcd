"""Real registry clients (skopeo, oras) against the real satellite subprocess.

The skopeo round trips also run against Debian's docker-registry, which proves the
fixtures and the generated images on a reference implementation.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import httpx
import pytest
from oras.client import OrasClient
from oras.oci import NewLayer, Subject

from tests.conftest import SatelliteFactory
from tests.support.images import (
    MEDIA_OCI_EMPTY,
    MEDIA_OCI_INDEX,
    MEDIA_OCI_MANIFEST,
    GeneratedLayout,
    ImageRef,
    blob_path,
    canonical_json,
    find_ref,
    sha256_bytes,
    sha256_file,
)
from tests.support.satellite import SatelliteProcess
from tests.support.skopeo import Skopeo
from tests.support.upstream import UpstreamRegistry

NOTES_TYPE = "application/vnd.satellite.test.notes.v1"
SBOM_CONFIG_TYPE = "application/vnd.satellite.test.sbom.config.v1+json"
SIGNATURE_TYPE = "application/vnd.satellite.test.signature.v1"
TITLE = "org.opencontainers.image.title"


# --------------------------------------------------------------------------- helpers


@pytest.fixture(params=["satellite", "satellite-2-workers", "docker-registry"])
def registry_host(request: pytest.FixtureRequest) -> str:
    """host:port of the registry under test: the satellite (one serving process, or two
    sharing the store), or docker-registry as reference."""
    if request.param == "satellite":
        sat: SatelliteProcess = request.getfixturevalue("satellite")
        return sat.host
    if request.param == "satellite-2-workers":
        factory: SatelliteFactory = request.getfixturevalue("satellite_factory")
        return factory(workers=2).host
    upstream: UpstreamRegistry = request.getfixturevalue("upstream_registry")
    return upstream.host


def assert_copy_identical(src: ImageRef, out_layout: Path, tag: str) -> None:
    """`out_layout` lists `tag` at src's digest and holds every reachable blob byte for byte."""
    desc = find_ref(out_layout, tag)
    assert desc["digest"] == src.digest
    assert desc["mediaType"] == src.media_type
    assert desc["size"] == src.size
    for digest in src.all_digests:
        copied = blob_path(out_layout, digest)
        assert copied.is_file(), f"{digest} missing from the copy"
        assert sha256_file(copied) == digest
        assert copied.read_bytes() == src.blob_file(digest).read_bytes()


def oras_client(host: str) -> Any:
    """An oras-py client on plain HTTP whose requests fail at once instead of retrying.

    oras-py retries every failed request with sleeps of 3 s to 83 s; here a failure should
    show at once with its real status, so the undecorated `do_request` is used.
    """
    client = OrasClient(hostname=host, insecure=True)
    client.do_request = functools.partial(OrasClient.do_request.__wrapped__, client)
    return client


def push_app(skopeo: Skopeo, layout: GeneratedLayout, host: str, repo: str = "library/app") -> str:
    ref = f"docker://{host}/{repo}:v1"
    skopeo.copy(layout.oci("app:v1"), ref)
    return ref


# --------------------------------------------------------------------------- skopeo


def test_skopeo_round_trip_image(
    skopeo: Skopeo, image_layout: GeneratedLayout, registry_host: str, tmp_path: Path
) -> None:
    app = image_layout.app
    remote = push_app(skopeo, image_layout, registry_host)

    out = tmp_path / "out"
    skopeo.copy(remote, f"oci:{out}:app:v1")
    assert_copy_identical(app, out, "app:v1")

    assert skopeo.inspect_raw(remote) == app.manifest_bytes()
    assert skopeo.inspect_raw(f"docker://{registry_host}/library/app@{app.digest}") == (
        app.manifest_bytes()
    )
    info = skopeo.inspect(remote)
    assert info["Digest"] == app.digest
    assert info["Layers"] == list(app.layer_digests)
    assert (info["Os"], info["Architecture"]) == ("linux", "amd64")
    assert app.config_digest is not None
    config = skopeo.inspect_config(remote)
    assert sha256_bytes(config) == app.config_digest


def test_skopeo_round_trip_index(
    skopeo: Skopeo, image_layout: GeneratedLayout, registry_host: str, tmp_path: Path
) -> None:
    multi = image_layout.multi
    remote = f"docker://{registry_host}/library/multi:v1"
    skopeo.copy(image_layout.oci("multi:v1"), remote, all_images=True)

    out = tmp_path / "out"
    skopeo.copy(remote, f"oci:{out}:multi:v1", all_images=True)
    assert_copy_identical(multi, out, "multi:v1")
    index = multi.manifest_json()
    assert index["mediaType"] == MEDIA_OCI_INDEX
    assert {(d["platform"]["os"], d["platform"]["architecture"]) for d in index["manifests"]} == {
        ("linux", "amd64"),
        ("linux", "arm64"),
    }

    assert skopeo.inspect_raw(remote) == multi.manifest_bytes()
    for child in multi.manifests:
        by_digest = f"docker://{registry_host}/library/multi@{child.digest}"
        assert skopeo.inspect_raw(by_digest) == child.manifest_bytes()
    # plain inspect resolves the index to this machine's platform
    info = skopeo.inspect(remote)
    assert info["Os"] == "linux"
    assert info["Architecture"] in {"amd64", "arm64"}


def test_skopeo_copy_registry_to_itself(
    skopeo: Skopeo, image_layout: GeneratedLayout, satellite: SatelliteProcess, tmp_path: Path
) -> None:
    app = image_layout.app
    src = push_app(skopeo, image_layout, satellite.host)
    dst = f"docker://{satellite.host}/other/app:v1"
    # same registry, other repo: skopeo tries a cross-repo mount, else re-uploads
    skopeo.copy(src, dst)

    assert skopeo.inspect_raw(dst) == app.manifest_bytes()
    with httpx.Client(base_url=satellite.url, timeout=30, trust_env=False) as http:
        for digest in app.blob_digests:
            response = http.head(f"/v2/other/app/blobs/{digest}")
            assert response.status_code == 200, (digest, response.status_code)
            assert response.headers["Docker-Content-Digest"] == digest
            assert int(response.headers["Content-Length"]) == app.blob_file(digest).stat().st_size

    out = tmp_path / "out"
    skopeo.copy(dst, f"oci:{out}:app:v1")
    assert_copy_identical(app, out, "app:v1")


# --------------------------------------------------------------------------- oras


def test_oras_artifact_push_pull(registry_host: str, tmp_path: Path) -> None:
    client = oras_client(registry_host)
    target = f"{registry_host}/artifacts/notes:v1"
    container = client.get_container(target)

    payload = tmp_path / "notes.txt"
    payload.write_bytes(b"edge site notes\n" * 64)
    layer = NewLayer(str(payload), media_type="text/plain")
    layer["annotations"] = {TITLE: "notes.txt"}
    response = client.upload_blob(str(payload), container, layer)
    assert response.status_code == 201, response.text

    empty = tmp_path / "empty.json"
    empty.write_bytes(b"{}")
    config = {"mediaType": MEDIA_OCI_EMPTY, "digest": sha256_file(empty), "size": 2}
    response = client.upload_blob(str(empty), container, config)
    assert response.status_code == 201, response.text

    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_OCI_MANIFEST,
        "artifactType": NOTES_TYPE,
        "config": config,
        "layers": [layer],
        "annotations": {"org.satellite.test.kind": "notes"},
    }
    response = client.upload_manifest(manifest, container)
    assert response.status_code == 201, response.text
    sent = response.request.body
    assert isinstance(sent, bytes)
    assert response.headers["Docker-Content-Digest"] == sha256_bytes(sent)

    out = tmp_path / "pulled"
    files = client.pull(target=target, outdir=str(out))
    assert [Path(f).name for f in files] == ["notes.txt"]
    assert Path(files[0]).read_bytes() == payload.read_bytes()

    served = client.get_manifest(target)
    assert served["artifactType"] == NOTES_TYPE
    assert served["layers"][0]["digest"] == layer["digest"]
    with httpx.Client(base_url=f"http://{registry_host}", timeout=30, trust_env=False) as http:
        raw = http.get("/v2/artifacts/notes/manifests/v1", headers={"Accept": MEDIA_OCI_MANIFEST})
    assert raw.status_code == 200
    assert raw.content == sent
    assert raw.headers["Content-Type"] == MEDIA_OCI_MANIFEST


def test_referrers_oras_and_direct_push(
    skopeo: Skopeo, image_layout: GeneratedLayout, satellite: SatelliteProcess, tmp_path: Path
) -> None:
    app = image_layout.app
    push_app(skopeo, image_layout, satellite.host)
    subject = Subject(mediaType=MEDIA_OCI_MANIFEST, digest=app.digest, size=app.size)
    client = oras_client(satellite.host)

    # referrer A: oras push with a subject; artifact type = its config media type
    sbom = tmp_path / "sbom.json"
    sbom.write_bytes(b'{"spdxVersion":"SPDX-2.3","name":"app"}')
    response = client.push(
        target=f"{satellite.host}/library/app:sbom",
        files=[f"{sbom}:application/spdx+json"],
        manifest_config=f"{tmp_path / 'no-config'}:{SBOM_CONFIG_TYPE}",
        manifest_annotations={"org.satellite.test.kind": "sbom"},
        subject=subject,
        disable_path_validation=True,
        quiet=True,
    )
    assert response.status_code == 201, response.text
    assert response.headers.get("OCI-Subject") == app.digest
    sent = response.request.body
    assert isinstance(sent, bytes)
    sbom_digest = response.headers["Docker-Content-Digest"]
    assert sbom_digest == sha256_bytes(sent)

    # referrer B: blobs pushed with oras, manifest PUT by digest (untagged) with artifactType
    container = client.get_container(f"{satellite.host}/library/app")
    signature = tmp_path / "app.sig"
    signature.write_bytes(b"not really a signature, but bytes all the same")
    layer = NewLayer(str(signature), media_type="application/octet-stream")
    assert client.upload_blob(str(signature), container, layer).status_code in (200, 201)
    empty = tmp_path / "empty.json"
    empty.write_bytes(b"{}")
    config = {"mediaType": MEDIA_OCI_EMPTY, "digest": sha256_file(empty), "size": 2}
    assert client.upload_blob(str(empty), container, config).status_code in (200, 201)
    sig_manifest = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_OCI_MANIFEST,
            "artifactType": SIGNATURE_TYPE,
            "config": config,
            "layers": [layer],
            "subject": {"mediaType": MEDIA_OCI_MANIFEST, "digest": app.digest, "size": app.size},
            "annotations": {"org.satellite.test.kind": "signature"},
        }
    )
    sig_digest = sha256_bytes(sig_manifest)
    with httpx.Client(base_url=satellite.url, timeout=30, trust_env=False) as http:
        put = http.put(
            f"/v2/library/app/manifests/{sig_digest}",
            content=sig_manifest,
            headers={"Content-Type": MEDIA_OCI_MANIFEST},
        )
        assert put.status_code == 201, put.text
        assert put.headers.get("OCI-Subject") == app.digest
        assert put.headers["Docker-Content-Digest"] == sig_digest

        listing = http.get(f"/v2/library/app/referrers/{app.digest}")
        assert listing.status_code == 200, listing.text
        assert listing.headers["Content-Type"].split(";")[0] == MEDIA_OCI_INDEX
        index = listing.json()
        assert index["schemaVersion"] == 2
        assert index["mediaType"] == MEDIA_OCI_INDEX
        by_digest = {d["digest"]: d for d in index["manifests"]}
        assert set(by_digest) == {sbom_digest, sig_digest}
        # spec: artifactType from the manifest, else its config media type; annotations copied
        expected = {
            sbom_digest: (len(sent), SBOM_CONFIG_TYPE, {"org.satellite.test.kind": "sbom"}),
            sig_digest: (
                len(sig_manifest),
                SIGNATURE_TYPE,
                {"org.satellite.test.kind": "signature"},
            ),
        }
        for digest, (size, artifact_type, annotations) in expected.items():
            desc = by_digest[digest]
            assert desc["mediaType"] == MEDIA_OCI_MANIFEST
            assert desc["size"] == size
            assert desc["artifactType"] == artifact_type
            assert desc["annotations"] == annotations

        filtered = http.get(
            f"/v2/library/app/referrers/{app.digest}", params={"artifactType": SIGNATURE_TYPE}
        )
        assert filtered.status_code == 200, filtered.text
        assert filtered.headers.get("OCI-Filters-Applied") == "artifactType"
        assert [d["digest"] for d in filtered.json()["manifests"]] == [sig_digest]

        unfiltered_none = http.get(
            f"/v2/library/app/referrers/{app.digest}", params={"artifactType": "x/none"}
        )
        assert unfiltered_none.status_code == 200
        assert unfiltered_none.json()["manifests"] == []

        # the referrer manifests themselves are served as pushed
        got = http.get(
            f"/v2/library/app/manifests/{sig_digest}", headers={"Accept": MEDIA_OCI_MANIFEST}
        )
        assert got.status_code == 200
        assert got.content == sig_manifest


def test_referrers_of_unreferenced_digest_is_empty(
    skopeo: Skopeo, image_layout: GeneratedLayout, satellite: SatelliteProcess
) -> None:
    push_app(skopeo, image_layout, satellite.host)
    unknown = "sha256:" + "0" * 64
    with httpx.Client(base_url=satellite.url, timeout=30, trust_env=False) as http:
        for digest in (image_layout.app.digest, unknown):
            response = http.get(f"/v2/library/app/referrers/{digest}")
            assert response.status_code == 200, (digest, response.status_code, response.text)
            assert response.headers["Content-Type"].split(";")[0] == MEDIA_OCI_INDEX
            assert response.json()["manifests"] == []
