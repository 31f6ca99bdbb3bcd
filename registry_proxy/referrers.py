"""Finding the artifacts that refer to an image: signatures, SBOMs, attestations.

One lookup, used by replication (through the proxy, online) and by Ground Control's
bundle export (through the registry client, for an air-gapped site), so that a
signature check works offline on both kinds of site. A registry's referrers API
(``GET /v2/<name>/referrers/<digest>``) lists them; where a registry has none, the tags
of the OCI referrers tag schema (``sha256-<hex>``: an index of the referrers) and of
cosign (``sha256-<hex>.sig``, ``.att``, ``.sbom``) name them.

The callers supply the three reads (the listing, a tag's digest, a manifest by digest);
each must return verified content.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from registry_proxy.digest import Digest
from registry_proxy.manifest import OCI_INDEX, Manifest, parse_manifest
from registry_proxy.upstream import UpstreamClient, UpstreamNotFound

Listing = Callable[[], Awaitable[bytes | None]]  # the referrers API's index; None: no API
Tagged = Callable[[str], Awaitable[Digest | None]]  # the digest a tag names; None: no tag
ReadManifest = Callable[[Digest], Awaitable[Manifest]]


@dataclass(frozen=True)
class Referrer:
    """One manifest that refers to an image, and the tag that names it (None when the
    referrers API listed it, or the tag schema's index did)."""

    digest: Digest
    tag: str | None = None


def referrer_tags(digest: Digest) -> tuple[str, ...]:
    """The tags that name artifacts referring to ``digest`` where a registry has no
    referrers API: the OCI referrers tag schema's first, then cosign's (the schema's
    truncation: at most 32 characters of algorithm and 64 of hex, to stay a valid tag)."""
    base = f"{digest.algorithm[:32]}-{digest.encoded[:64]}"
    return (base, f"{base}.sig", f"{base}.att", f"{base}.sbom")


def is_referrer_tag(tag: str, subjects: set[Digest] | frozenset[Digest]) -> bool:
    """Whether ``tag`` is one of the referrer tags of one of ``subjects``."""
    return any(tag in referrer_tags(subject) for subject in subjects)


async def find_referrers(
    digest: Digest, listing: Listing, tagged: Tagged, manifest: ReadManifest
) -> list[Referrer]:
    """The manifests that refer to ``digest``: those the referrers API lists, or, where
    there is none, those the referrer tags name (the schema's index with its entries)."""
    body = await listing()
    if body is not None:
        return [Referrer(d.digest) for d in parse_manifest(body, OCI_INDEX).manifests]
    found: list[Referrer] = []
    tags = referrer_tags(digest)
    for tag in tags:
        target = await tagged(tag)
        if target is None:
            continue
        found.append(Referrer(target, tag))
        if tag == tags[0]:
            index = await manifest(target)
            if index.is_index:  # the schema's index: its entries are the referrers
                found.extend(Referrer(d.digest) for d in index.manifests)
    return found


async def registry_referrers(
    client: UpstreamClient, repository: str, digest: Digest, manifest: ReadManifest
) -> list[Referrer]:
    """``find_referrers`` of ``repository`` in a registry, through the registry client."""

    async def tagged(tag: str) -> Digest | None:
        try:
            return (await client.head_manifest(repository, tag)).digest
        except UpstreamNotFound:
            return None

    return await find_referrers(
        digest, lambda: client.get_referrers(repository, digest), tagged, manifest
    )
