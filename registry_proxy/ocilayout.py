"""The OCI image layout (image-spec ``image-layout.md``) as bundles use it.

    <dir>/oci-layout          {"imageLayoutVersion": "1.0.0"}
    <dir>/index.json          one descriptor per image, named by the
                              ``org.opencontainers.image.ref.name`` annotation
    <dir>/blobs/<alg>/<hex>   every blob and manifest, named by its digest

Standard tools read it (``skopeo copy oci:DIR:REF docker://…``). Every path is built
from a parsed Digest, never from a name found in the layout, and ``walk`` reads each
manifest through a caller's function that must return verified bytes.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from registry_proxy.digest import Digest
from registry_proxy.manifest import Descriptor, parse_manifest
from registry_proxy.platforms import plan_children

LAYOUT_FILE: Final = "oci-layout"
INDEX_FILE: Final = "index.json"
LAYOUT_VERSION: Final = b'{"imageLayoutVersion":"1.0.0"}'
REF_NAME: Final = "org.opencontainers.image.ref.name"
INDEX_MEDIA_TYPE: Final = "application/vnd.oci.image.index.v1+json"


def blob_path(root: Path, digest: Digest) -> Path:
    return root / "blobs" / digest.algorithm / digest.encoded


def ref_name(repository: str, tag: str | None, digest: str) -> str:
    """The name a tool gives after ``oci:DIR:``: ``repository:tag``, or for an image
    without a tag ``repository@digest``."""
    return f"{repository}:{tag}" if tag else f"{repository}@{digest}"


@dataclass(frozen=True)
class Node:
    """One piece of an image: a manifest (or index) or a blob it references."""

    repository: str
    digest: Digest
    media_type: str
    size: int
    is_manifest: bool


def index_document(images: list[tuple[str, str, str, int]]) -> bytes:
    """``index.json`` for (ref name, digest, media type, size) entries."""
    manifests = [
        {
            "mediaType": media_type,
            "digest": digest,
            "size": size,
            "annotations": {REF_NAME: name},
        }
        for name, digest, media_type, size in images
    ]
    document: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": manifests,
    }
    return json.dumps(document, indent=1, sort_keys=True).encode() + b"\n"


def read_index(data: bytes) -> list[tuple[str, Descriptor]]:
    """The named entries of an ``index.json``: (ref name, descriptor); an entry without
    a name is left out."""
    index = parse_manifest(data, INDEX_MEDIA_TYPE)
    return [
        (d.annotations[REF_NAME], d)
        for d in index.manifests
        if d.annotations and isinstance(d.annotations.get(REF_NAME), str)
    ]


FetchManifest = Callable[[str, Digest], Awaitable[bytes]]


async def walk(
    repository: str,
    digest: Digest,
    media_type: str,
    size: int,
    fetch: FetchManifest,
    platforms: tuple[str, ...] = (),
) -> AsyncIterator[Node]:
    """Every node of one image, children before their parents (blobs, then the
    manifests that name them, the index last), so that a reader importing in this order
    never holds a manifest whose content is missing. ``fetch`` returns the manifest's
    bytes verified against the digest. Of an index, the children ``plan_children`` keeps
    for ``platforms`` (all when none are listed), as replication keeps them; an index
    within an index is kept whole."""
    body = await fetch(repository, digest)
    manifest = parse_manifest(body, media_type)
    seen: set[Digest] = set()
    children = plan_children(manifest, platforms) if manifest.is_index else manifest.manifests
    for child in children:
        if child.digest in seen:
            continue
        seen.add(child.digest)
        async for node in walk(repository, child.digest, child.media_type, child.size, fetch):
            yield node
    for blob in manifest.blob_references():
        if blob.digest in seen:
            continue
        seen.add(blob.digest)
        yield Node(repository, blob.digest, blob.media_type, blob.size, False)
    yield Node(repository, digest, media_type, size, True)
