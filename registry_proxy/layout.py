"""The whole on-disk layout of a satellite's content store, in one place.

    <root>/metadata.db              SQLite (WAL): repositories, tags, manifests, links
    <root>/blobs/<alg>/<xx>/<hex>   verified content, named by its digest
    <root>/uploads/<uuid>/data      bytes of an upload in progress (never served)
    <root>/uploads/<uuid>/commit-*  a verified copy being moved into blobs/
    <root>/partial/<alg>-<hex>      the bytes received so far of a fill from upstream, kept
                                    across a cut link or a restart to resume with Range

Every path is built from a parsed Digest or a UUID, never from a repository name or any
other client string, so a request cannot name a path outside these directories.
"""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from registry_proxy.digest import Digest


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def database(self) -> Path:
        return self.root / "metadata.db"

    @property
    def blobs(self) -> Path:
        return self.root / "blobs"

    @property
    def uploads(self) -> Path:
        return self.root / "uploads"

    @property
    def partial(self) -> Path:
        return self.root / "partial"

    def partial_fill(self, digest: Digest) -> Path:
        return self.partial / f"{digest.algorithm}-{digest.encoded}"

    @property
    def locks(self) -> Path:
        return self.root / "locks"

    def fill_lock(self, digest: Digest) -> Path:
        """Held by the process fetching ``digest`` from upstream (registry_proxy/fill.py)."""
        return self.locks / f"{digest.algorithm}-{digest.encoded}.fill"

    def digest_lock(self, digest: Digest) -> Path:
        """Held by the process publishing or removing ``digest`` (registry_proxy/store.py)."""
        return self.locks / f"{digest.algorithm}-{digest.encoded}.publish"

    def fill_size(self, digest: Digest) -> Path:
        """The size the fetching process learnt from upstream, for the others to follow."""
        return self.partial / f"{digest.algorithm}-{digest.encoded}.size"

    @property
    def budget_lock(self) -> Path:
        return self.locks / "budget"

    @property
    def generation(self) -> Path:
        """Bumped by a serving process that changed tags or manifests (generation.py)."""
        return self.locks / "generation"

    def blob(self, digest: Digest) -> Path:
        return self.blobs / digest.algorithm / digest.encoded[:2] / digest.encoded

    def upload_dir(self, upload_id: str) -> Path:
        # round-trip through UUID: only a canonical UUID string names a directory
        return self.uploads / str(uuid.UUID(upload_id))

    def upload_data(self, upload_id: str) -> Path:
        return self.upload_dir(upload_id) / "data"

    def create(self) -> None:
        for directory in (self.root, self.blobs, self.uploads, self.partial, self.locks):
            directory.mkdir(parents=True, exist_ok=True)

    def remove_upload(self, upload_id: str) -> None:
        shutil.rmtree(self.upload_dir(upload_id), ignore_errors=True)

    def iter_blobs(self) -> list[tuple[Digest, Path]]:
        """Every visible blob file with the digest its name claims."""
        found: list[tuple[Digest, Path]] = []
        if not self.blobs.exists():
            return found
        for alg_dir in sorted(self.blobs.iterdir()):
            for shard in sorted(alg_dir.iterdir()):
                for path in sorted(shard.iterdir()):
                    if path.name.startswith("."):
                        continue
                    found.append((Digest(alg_dir.name, path.name), path))
        return found
