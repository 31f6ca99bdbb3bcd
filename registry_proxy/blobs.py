"""Verified blob files: the only way bytes become visible under ``blobs/``.

A blob is published only after the size and digest of the bytes actually on disk were
checked, the file fsynced, hard-linked to its content address and the directory
fsynced. A crash at any instant therefore leaves either no file or a complete,
verified one under its digest's name. All functions here block; the async layer runs
them in a worker thread.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from registry_proxy.digest import Digest, mismatch
from registry_proxy.durable import publish
from registry_proxy.layout import Layout

READ_CHUNK = 1024 * 1024


class BlobStore:
    def __init__(self, layout: Layout) -> None:
        self.layout = layout

    def path(self, digest: Digest) -> Path:
        return self.layout.blob(digest)

    def size(self, digest: Digest) -> int | None:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            return None

    def open(self, digest: Digest) -> int | None:
        """An fd on the blob, or None. An open fd keeps serving even if the blob is evicted."""
        try:
            return os.open(self.path(digest), os.O_RDONLY)
        except FileNotFoundError:
            return None

    def commit(
        self,
        src: Path,
        expected: Digest,
        computed: tuple[Digest, int] | None = None,
    ) -> int:
        """Verifies `src` against `expected` and publishes it.

        `computed` is the (digest, size) that a writer hashed while writing; without it the
        file is hashed here. `src` is consumed either way. Returns the blob's size.
        """
        try:
            digest, size = (
                computed if computed is not None else Digest.of_file(src, expected.algorithm)
            )
            if digest != expected:
                raise mismatch(expected, digest)
            fd = os.open(src, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except BaseException:
            src.unlink(missing_ok=True)
            raise
        publish(src, self.path(expected))
        return size

    def write_bytes(self, data: bytes, expected: Digest) -> int:
        """Publishes small content (manifests) after verifying it."""
        actual = Digest.of(data, expected.algorithm)
        if actual != expected:
            raise mismatch(expected, actual)
        if self.size(expected) == len(data):
            return len(data)
        self.layout.uploads.mkdir(parents=True, exist_ok=True)
        tmp = self.layout.uploads / f"commit-{secrets.token_hex(8)}"
        with open(tmp, "wb") as f:
            f.write(data)
        return self.commit(tmp, expected, (actual, len(data)))

    def read_bytes(self, digest: Digest) -> bytes | None:
        try:
            return self.path(digest).read_bytes()
        except FileNotFoundError:
            return None

    def delete(self, digest: Digest) -> None:
        self.path(digest).unlink(missing_ok=True)

    def verify_all(self) -> list[Digest]:
        """Rehashes every visible blob; returns those whose bytes do not match their name."""
        bad: list[Digest] = []
        for digest, path in self.layout.iter_blobs():
            actual, _ = Digest.of_file(path, digest.algorithm)
            if actual != digest:
                bad.append(digest)
        return bad
