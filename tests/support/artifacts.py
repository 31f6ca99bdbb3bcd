"""Artifacts that refer to an image, pushed to a test registry over its HTTP API: a
cosign-style signature (``sha256-<hex>.sig``), an SBOM listed in the OCI referrers tag
schema's index (``sha256-<hex>``), and an SBOM pushed by digest alone (found only through
a registry's referrers API)."""

from __future__ import annotations

import json
from typing import Any

import httpx

from registry_proxy.digest import Digest
from tests.support.images import ImageRef, sha256_bytes
from tests.support.upstream import UpstreamRegistry, push_blob


def referrer_tag_names(digest: str) -> tuple[str, str]:
    """The referrers tag schema's tag and cosign's signature tag for ``digest``."""
    d = Digest.parse(digest)
    return f"{d.algorithm}-{d.encoded}", f"{d.algorithm}-{d.encoded}.sig"


OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
EMPTY = "application/vnd.oci.empty.v1+json"


sha256_digest = sha256_bytes


def push_descriptor(c: httpx.Client, repo: str, data: bytes) -> dict[str, Any]:
    return {"digest": push_blob(c, repo, data), "size": len(data)}


def put_manifest(c: httpx.Client, repo: str, ref: str, doc: dict[str, Any]) -> dict[str, Any]:
    body = json.dumps(doc).encode()
    media_type = doc["mediaType"]
    r = c.put(f"/v2/{repo}/manifests/{ref}", content=body, headers={"Content-Type": media_type})
    assert r.status_code == 201, r.text
    return {"mediaType": media_type, "digest": sha256_digest(body), "size": len(body)}


def attach(upstream: UpstreamRegistry, repo: str, image: ImageRef) -> dict[str, str]:
    """A cosign-style signature and an SBOM (by the referrers tag schema) for ``image``."""
    subject = {"mediaType": image.media_type, "digest": image.digest, "size": image.size}
    sig_tag, schema_tag = (
        referrer_tag_names(image.digest)[1],
        referrer_tag_names(image.digest)[0],
    )
    with httpx.Client(base_url=upstream.url, timeout=60) as c:
        empty = push_descriptor(c, repo, b"{}")
        payload = json.dumps({"critical": {"image": {"docker-manifest-digest": image.digest}}})
        layer = push_descriptor(c, repo, payload.encode())
        signature = put_manifest(
            c,
            repo,
            sig_tag,
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **empty},
                "layers": [
                    {
                        "mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
                        **layer,
                        "annotations": {"dev.cosignproject.cosign/signature": "MEUCIQ=="},
                    }
                ],
            },
        )
        sbom_layer = push_descriptor(c, repo, b'{"spdxVersion": "SPDX-2.3", "name": "app"}')
        sbom = put_manifest(
            c,
            repo,
            "sbom-of-app",
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "artifactType": "application/spdx+json",
                "config": {"mediaType": EMPTY, **empty},
                "layers": [{"mediaType": "application/spdx+json", **sbom_layer}],
                "subject": subject,
            },
        )
        put_manifest(
            c,
            repo,
            schema_tag,
            {
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": [{**sbom, "artifactType": "application/spdx+json"}],
            },
        )
    return {
        "signature": signature["digest"],
        "signature_layer": layer["digest"],
        "sbom": sbom["digest"],
        "sbom_layer": sbom_layer["digest"],
        "empty": empty["digest"],
    }


def sbom_by_digest(
    c: httpx.Client, repo: str, image: ImageRef, text: bytes, *, tag: str | None = None
) -> dict[str, str]:
    """An SBOM artifact whose subject is ``image``, pushed by digest (no tag names it),
    or with ``tag`` under that tag."""
    subject = {"mediaType": image.media_type, "digest": image.digest, "size": image.size}
    empty = push_descriptor(c, repo, b"{}")
    layer = push_descriptor(c, repo, text)
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/spdx+json",
        "config": {"mediaType": EMPTY, **empty},
        "layers": [{"mediaType": "application/spdx+json", **layer}],
        "subject": subject,
    }
    digest = sha256_digest(json.dumps(doc).encode())
    put_manifest(c, repo, tag or digest, doc)
    return {"manifest": digest, "layer": layer["digest"]}
