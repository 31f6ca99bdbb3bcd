"""Parsing and validating image manifests and indexes (OCI and Docker schema2). Pure."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from registry_proxy.digest import Digest
from registry_proxy.errors import RegistryError
from registry_proxy.numbers import INT64_MAX
from registry_proxy.strict_json import StrictJSONError, loads

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"

IMAGE_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
MANIFEST_TYPES = IMAGE_TYPES | INDEX_TYPES

# layers that registries are not expected to hold (they carry `urls` instead)
NON_DISTRIBUTABLE = frozenset(
    {
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    }
)

MAX_MANIFEST_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: Digest
    size: int
    artifact_type: str | None = None
    platform: dict[str, Any] | None = None
    annotations: dict[str, str] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": str(self.digest),
            "size": self.size,
        }
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        if self.platform:
            out["platform"] = self.platform
        if self.annotations:
            out["annotations"] = self.annotations
        return out


@dataclass(frozen=True)
class Manifest:
    """What the registry needs to know of a manifest; the exact bytes are kept elsewhere."""

    media_type: str
    config: Descriptor | None = None
    layers: tuple[Descriptor, ...] = ()
    manifests: tuple[Descriptor, ...] = ()
    subject: Descriptor | None = None
    artifact_type: str | None = None
    annotations: dict[str, str] = field(default_factory=dict)

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES

    def blob_references(self) -> tuple[Descriptor, ...]:
        """Config and layers that must exist in the repository before the manifest."""
        refs = ((self.config,) if self.config else ()) + self.layers
        return tuple(d for d in refs if d.media_type not in NON_DISTRIBUTABLE)


def _invalid(message: str) -> RegistryError:
    return RegistryError("MANIFEST_INVALID", message)


def _descriptor(value: Any, where: str) -> Descriptor:
    if not isinstance(value, dict):
        raise _invalid(f"{where} is not a descriptor object")
    media_type = value.get("mediaType")
    digest = value.get("digest")
    size = value.get("size")
    if not isinstance(media_type, str) or not media_type:
        raise _invalid(f"{where}.mediaType is missing")
    if not isinstance(digest, str):
        raise _invalid(f"{where}.digest is missing")
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= INT64_MAX:
        raise _invalid(f"{where}.size must be an integer from 0 to 2**63-1")
    try:
        parsed = Digest.parse(digest)
    except RegistryError as exc:
        raise _invalid(f"{where}.digest: {exc.message}") from None
    artifact_type = value.get("artifactType")
    platform = value.get("platform")
    annotations = value.get("annotations")
    return Descriptor(
        media_type,
        parsed,
        size,
        artifact_type if isinstance(artifact_type, str) else None,
        platform if isinstance(platform, dict) else None,
        annotations if isinstance(annotations, dict) else None,
    )


def _descriptors(value: Any, where: str) -> tuple[Descriptor, ...]:
    if not isinstance(value, list):
        raise _invalid(f"{where} must be a list")
    return tuple(_descriptor(item, f"{where}[{i}]") for i, item in enumerate(value))


def parse_manifest(body: bytes, content_type: str | None) -> Manifest:
    """Validates a manifest: strict JSON (see strict_json), a supported media type, and
    well-formed descriptors.

    The media type is the body's `mediaType`; a Content-Type (parameters ignored) must
    name the same type, as the distribution spec has clients send it. Without a
    `mediaType` the Content-Type says it, and without either the shape does (an OCI
    manifest may leave `mediaType` out). Any type other than the four manifest types
    (``text/plain``, Docker schema 1's ``...v1+prettyjws``) is refused.
    """
    if len(body) > MAX_MANIFEST_BYTES:
        raise RegistryError(
            "MANIFEST_INVALID",
            f"manifest is {len(body)} bytes; the limit is {MAX_MANIFEST_BYTES}",
            status=413,
        )
    try:
        doc = loads(body)
    except StrictJSONError as exc:
        raise _invalid(f"manifest is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise _invalid("manifest is not a JSON object")
    header_type = (content_type or "").split(";", 1)[0].strip().lower() or None
    body_type = doc.get("mediaType")
    if body_type is not None and not isinstance(body_type, str):
        raise _invalid("mediaType must be a string")
    if header_type is not None and header_type not in MANIFEST_TYPES:
        raise _invalid(f"Content-Type {header_type[:200]!r} is not a supported manifest type")
    if body_type and header_type and body_type != header_type:
        raise _invalid(f"Content-Type {header_type} does not match mediaType {body_type[:200]}")
    media_type = body_type or header_type
    if media_type is None:
        # an OCI manifest without mediaType is legal; tell image from index by shape
        media_type = OCI_INDEX if "manifests" in doc else OCI_MANIFEST
    if media_type not in MANIFEST_TYPES:
        raise _invalid(f"unsupported manifest media type {media_type[:200]!r}")
    if doc.get("schemaVersion") != 2:
        raise _invalid("schemaVersion must be 2")

    artifact_type = doc.get("artifactType")
    if artifact_type is not None and not isinstance(artifact_type, str):
        raise _invalid("artifactType must be a string")
    annotations = doc.get("annotations") or {}
    if not isinstance(annotations, dict) or not all(
        isinstance(value, str) for value in annotations.values()
    ):
        # kept and served again in referrers lists, where clients expect the image
        # spec's string-to-string map
        raise _invalid("annotations must be an object of strings")
    subject = _descriptor(doc["subject"], "subject") if doc.get("subject") is not None else None

    if media_type in IMAGE_TYPES:
        config = _descriptor(doc.get("config"), "config")
        layers = _descriptors(doc.get("layers", []), "layers")
        if artifact_type is None and config.media_type != OCI_EMPTY:
            # OCI: the artifact type of a manifest without artifactType is its config's
            artifact_type = config.media_type
        return Manifest(
            media_type,
            config=config,
            layers=layers,
            subject=subject,
            artifact_type=artifact_type,
            annotations=annotations,
        )
    manifests = _descriptors(doc.get("manifests", []), "manifests")
    return Manifest(
        media_type,
        manifests=manifests,
        subject=subject,
        artifact_type=artifact_type,
        annotations=annotations,
    )


def accepts(accept_header: str | None, media_type: str) -> bool:
    """Content negotiation as distribution does it: with no Accept (or a wildcard) any
    manifest is served; a client that lists manifest types gets only one of those."""
    if not accept_header:
        return True
    offered = {part.split(";", 1)[0].strip() for part in accept_header.split(",")}
    if media_type in offered or "*/*" in offered or "application/*" in offered:
        return True
    # a client that names no manifest type at all (e.g. only application/json) gets it
    return not (offered & MANIFEST_TYPES)
