"""Content digests (``algorithm:encoded``) as the OCI image spec defines them.

Only ``sha256`` and ``sha512`` are supported; both are registered algorithms and the
only ones that appear in practice. Parsing is strict: an encoded part of the wrong
length or with upper-case hex is refused, so that a digest string maps to exactly one
path on disk.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from registry_proxy.errors import RegistryError

# digest grammar of the image spec; registered algorithms further constrain `encoded`
_GRAMMAR = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
HEX_LENGTHS = {"sha256": 64, "sha512": 128}
_LOWER_HEX = re.compile(r"[a-f0-9]+")


@dataclass(frozen=True, order=True)
class Digest:
    algorithm: str
    encoded: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.encoded}"

    @classmethod
    def parse(cls, value: str) -> Digest:
        """Parses and validates; raises DIGEST_INVALID for bad or unsupported digests."""
        if not _GRAMMAR.fullmatch(value):
            raise RegistryError("DIGEST_INVALID", f"invalid digest {value[:200]!r}")
        algorithm, encoded = value.split(":", 1)
        length = HEX_LENGTHS.get(algorithm)
        if length is None:
            raise RegistryError(
                "DIGEST_INVALID",
                f"digest algorithm {algorithm[:32]!r} is not supported (sha256, sha512 are)",
            )
        if len(encoded) != length or not _LOWER_HEX.fullmatch(encoded):
            raise RegistryError("DIGEST_INVALID", f"invalid {algorithm} digest {value[:200]!r}")
        return cls(algorithm, encoded)

    @classmethod
    def of(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())

    @classmethod
    def of_hasher(cls, hasher: hashlib._Hash) -> Digest:
        """The digest of what a hasher (``hashlib.sha256()``, ``Digest.hasher``) has seen."""
        return cls(hasher.name, hasher.hexdigest())

    @classmethod
    def of_file(cls, path: Path, algorithm: str = "sha256") -> tuple[Digest, int]:
        """The digest and size of a file, read in chunks (``hashlib.file_digest``)."""
        with open(path, "rb", buffering=0) as f:
            hasher = hashlib.file_digest(f, algorithm)
            return cls(algorithm, hasher.hexdigest()), f.tell()

    def hasher(self) -> hashlib._Hash:
        return hashlib.new(self.algorithm)


def mismatch(expected: Digest, actual: Digest, what: str = "content") -> RegistryError:
    """The error for bytes whose digest is not the one they were announced under."""
    return RegistryError(
        "DIGEST_INVALID",
        f"{what} digest {actual} does not match {expected}",
        {"expected": str(expected), "actual": str(actual)},
    )


def is_digest(value: str) -> bool:
    """True when `value` has the shape of a digest (as opposed to a tag)."""
    return ":" in value
