"""Which children of an index a site keeps: the platforms its signed state lists, and
the attestation manifests that refer to one of them. Pure; replication and USB bundles
both decide with it, so a bundle carries exactly what replication would fetch."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from registry_proxy.manifest import Descriptor, Manifest

ATTESTATION = "attestation-manifest"


class PlatformMissing(Exception):
    """A platform the state lists is not in the index."""


def platform_matches(spec: str, platform: dict[str, Any] | None) -> bool:
    """``os/arch[/variant]`` against an index entry's platform; a spec without a variant
    matches every variant of its architecture."""
    if not platform:
        return False
    parts = spec.split("/")
    if platform.get("os") != parts[0] or platform.get("architecture") != parts[1]:
        return False
    return len(parts) < 3 or platform.get("variant") == parts[2]


def plan_children(index: Manifest, platforms: Iterable[str]) -> tuple[Descriptor, ...]:
    """The children of an index to keep, in the index's order: the manifests of the listed
    platforms (all when none are listed) and the attestation manifests that refer to a
    kept one. Raises PlatformMissing for a listed platform the index does not have."""
    wanted = tuple(platforms)
    if not wanted:
        return index.manifests
    missing = [
        p for p in wanted if not any(platform_matches(p, d.platform) for d in index.manifests)
    ]
    if missing:
        raise PlatformMissing(f"platform {', '.join(missing)} is not in the index")
    kept = {
        d.digest for d in index.manifests if any(platform_matches(p, d.platform) for p in wanted)
    }
    attests = {
        d.digest
        for d in index.manifests
        if (d.annotations or {}).get("vnd.docker.reference.type") == ATTESTATION
        and (d.annotations or {}).get("vnd.docker.reference.digest") in {str(k) for k in kept}
    }
    return tuple(d for d in index.manifests if d.digest in kept | attests)
