"""Which children of an index a site keeps (pure): the listed platforms, a variant-less
spec matching every variant, attestations of kept children, and a listed platform the
index lacks refused."""

from __future__ import annotations

import hashlib
import json

import pytest

from registry_proxy.manifest import OCI_INDEX, parse_manifest
from registry_proxy.platforms import PlatformMissing, plan_children, platform_matches

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _digest(seed: str) -> str:
    return "sha256:" + hashlib.sha256(seed.encode()).hexdigest()


def _index() -> bytes:
    children = [
        {"platform": {"os": "linux", "architecture": "amd64"}},
        {"platform": {"os": "linux", "architecture": "arm", "variant": "v7"}},
        {"platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
    ]
    manifests = [
        {"mediaType": OCI_MANIFEST, "digest": _digest(str(n)), "size": 100, **child}
        for n, child in enumerate(children)
    ]
    for n in (0, 2):  # attestations of amd64 and arm64
        manifests.append(
            {
                "mediaType": OCI_MANIFEST,
                "digest": _digest(f"att{n}"),
                "size": 50,
                "platform": {"os": "unknown", "architecture": "unknown"},
                "annotations": {
                    "vnd.docker.reference.type": "attestation-manifest",
                    "vnd.docker.reference.digest": _digest(str(n)),
                },
            }
        )
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}).encode()


def test_platform_specs_match_os_arch_and_optionally_the_variant() -> None:
    arm7 = {"os": "linux", "architecture": "arm", "variant": "v7"}
    assert platform_matches("linux/arm", arm7) and platform_matches("linux/arm/v7", arm7)
    assert not platform_matches("linux/arm/v6", arm7)
    assert not platform_matches("windows/arm", arm7) and not platform_matches("linux/arm", None)


def test_the_listed_platforms_and_their_attestations_are_kept_in_index_order() -> None:
    index = parse_manifest(_index(), OCI_INDEX)
    kept = [str(d.digest) for d in plan_children(index, ["linux/arm64", "linux/amd64"])]
    assert kept == [_digest("0"), _digest("2"), _digest("att0"), _digest("att2")]
    assert [str(d.digest) for d in plan_children(index, ["linux/arm"])] == [_digest("1")]
    assert plan_children(index, []) == index.manifests  # nothing listed: all of it


def test_a_platform_the_index_lacks_is_refused() -> None:
    index = parse_manifest(_index(), OCI_INDEX)
    with pytest.raises(PlatformMissing, match="linux/s390x"):
        plan_children(index, ["linux/amd64", "linux/s390x"])
