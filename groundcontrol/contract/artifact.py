"""The state artifact: how a signed state travels through an OCI registry.

Ground Control pushes (groundcontrol/artifacts.py) and satellites read this layout, so
its names live in the contract. ``<repository>/<satellite>:v<version>`` and ``:latest``
hold a manifest of artifactType ``STATE_ARTIFACT_TYPE`` whose layers are the state's
DSSE envelope (title ``state.json``) and the root chain (``root-1.json`` …
``root-N.json``). Nothing here is trusted: the layers go through ``TrustedState`` like
envelopes from the API. ``parse_state_manifest`` only says which blobs to fetch.
"""

import re
from dataclasses import dataclass
from typing import Final

from groundcontrol.contract.encoding import _loads, _typename
from groundcontrol.contract.errors import MalformedDocument

STATE_ARTIFACT_TYPE: Final = "application/vnd.satellite.state.v1+json"
ROOT_ARTIFACT_TYPE: Final = "application/vnd.satellite.root.v1+json"
ENVELOPE_MEDIA_TYPE: Final = "application/vnd.dsse.envelope.v1+json"

ANNOTATION_TITLE: Final = "org.opencontainers.image.title"
ANNOTATION_CREATED: Final = "org.opencontainers.image.created"
ANNOTATION_SATELLITE: Final = "io.satellite.state.satellite"
ANNOTATION_STATE_VERSION: Final = "io.satellite.state.version"
ANNOTATION_ROOT_VERSION: Final = "io.satellite.root.version"

TRUST_REPOSITORY: Final = "trust/root"
LATEST_TAG: Final = "latest"
STATE_TITLE: Final = "state.json"
MANIFEST_MAX_BYTES: Final = 256 * 1024
MAX_LAYERS: Final = 1000

_ROOT_TITLE = re.compile(r"root-([1-9][0-9]{0,17})\.json")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def version_tag(version: int) -> str:
    return f"v{version}"


@dataclass(frozen=True)
class LayerRef:
    digest: str
    size: int


@dataclass(frozen=True)
class StateArtifact:
    state: LayerRef
    roots: dict[int, LayerRef]  # root version → layer


def parse_state_manifest(body: bytes) -> StateArtifact:
    """Which layer holds the state and which the roots; ``MalformedDocument`` otherwise."""
    if len(body) > MANIFEST_MAX_BYTES:
        raise MalformedDocument(f"state artifact manifest over {MANIFEST_MAX_BYTES} bytes")
    manifest = _loads(body, "state artifact manifest")
    if not isinstance(manifest, dict):
        raise MalformedDocument("state artifact manifest: not an object")
    if manifest.get("artifactType") != STATE_ARTIFACT_TYPE:
        raise MalformedDocument("state artifact manifest: wrong artifactType")
    layers = manifest.get("layers")
    if not isinstance(layers, list) or not 0 < len(layers) <= MAX_LAYERS:
        raise MalformedDocument("state artifact manifest: no layers")
    state: LayerRef | None = None
    roots: dict[int, LayerRef] = {}
    for i, layer in enumerate(layers):
        where = f"state artifact manifest: layers[{i}]"
        if not isinstance(layer, dict):
            raise MalformedDocument(f"{where}: expected an object, got {_typename(layer)}")
        digest, size = layer.get("digest"), layer.get("size")
        annotations = layer.get("annotations") or {}
        title = annotations.get(ANNOTATION_TITLE) if isinstance(annotations, dict) else None
        if not isinstance(digest, str) or _DIGEST.fullmatch(digest) is None:
            raise MalformedDocument(f"{where}: digest is not sha256:<64 hex>")
        if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size < 2**31:
            raise MalformedDocument(f"{where}: bad size")
        if layer.get("mediaType") != ENVELOPE_MEDIA_TYPE:
            continue
        ref = LayerRef(digest, size)
        if title == STATE_TITLE:
            state = ref
        elif isinstance(title, str) and (match := _ROOT_TITLE.fullmatch(title)):
            roots[int(match[1])] = ref
    if state is None:
        raise MalformedDocument("state artifact manifest: no state.json layer")
    return StateArtifact(state, roots)
