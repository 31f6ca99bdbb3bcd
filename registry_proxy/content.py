"""What the registry's read handlers need of a repository's content, as one interface.

``Content`` is implemented by the local store (``ContentStore``) and by the pull-through
``Proxy``, which wraps the store: a target with an upstream is answered through the
proxy (the store first for content, the upstream first for tags), any other from the
store. The handlers hold one ``Content`` and never choose between the two, as
distribution's proxy wraps its storage behind the same repository interface.

Every answer says where it came from: ``CacheStatus`` for a pull-through target, None
for a local repository (nothing was cached, nothing forwarded).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, TypeAlias

from registry_proxy.digest import Digest
from registry_proxy.fill import FillReader
from registry_proxy.manifest import Descriptor
from registry_proxy.metadata import ManifestRow
from registry_proxy.routing import Target
from registry_proxy.store import OpenBlob


class CacheStatus(StrEnum):
    """Where a pull-through answer came from."""

    HIT = "hit"  # the store, current as far as the upstream said (or content by digest)
    MISS = "miss"  # fetched from the upstream
    STALE = "stale"  # the store's last known mapping, unconfirmed: upstream slow or down


@dataclass(frozen=True)
class FillSource:
    """A blob being filled from upstream: its reader, its total size."""

    reader: FillReader
    size: int

    def close(self) -> None:
        self.reader.close()


# a blob to answer with: a file in the store, or a fill under way
BlobSource: TypeAlias = OpenBlob | FillSource


class Content(Protocol):
    """Manifests, blobs, tags and referrers of the repository a request names."""

    async def manifest_answer(
        self, target: Target, reference: str | Digest
    ) -> tuple[ManifestRow, CacheStatus | None]:
        """The manifest a tag or digest names (MANIFEST_UNKNOWN when there is none)."""
        ...

    async def manifest_bytes(self, row: ManifestRow) -> bytes:
        """The bytes of a manifest ``manifest_answer`` gave."""
        ...

    async def blob_answer(
        self, target: Target, digest: Digest
    ) -> tuple[BlobSource, CacheStatus | None]:
        """The blob, open; the caller closes it (BLOB_UNKNOWN when there is none)."""
        ...

    async def tag_list(self, target: Target, n: int | None, last: str | None) -> list[str]:
        """A page of the repository's tags (NAME_UNKNOWN for an unknown repository)."""
        ...

    async def referrer_list(
        self, target: Target, subject: Digest, artifact_type: str | None
    ) -> list[Descriptor]:
        """The manifests whose subject is ``subject``, filtered by artifact type."""
        ...
