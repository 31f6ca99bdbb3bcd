"""Repository names and references, validated with distribution-spec's grammar."""

from __future__ import annotations

import re

from registry_proxy.digest import Digest, is_digest
from registry_proxy.errors import RegistryError

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_NAME = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG = re.compile(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$")
MAX_NAME_LENGTH = 255


def validate_name(name: str) -> str:
    if len(name) > MAX_NAME_LENGTH or not _NAME.match(name):
        raise RegistryError("NAME_INVALID", f"invalid repository name {name[:300]!r}")
    return name


def validate_tag(tag: str) -> str:
    if not _TAG.match(tag):
        raise RegistryError("MANIFEST_INVALID", f"invalid tag {tag[:200]!r}", status=400)
    return tag


def parse_reference(reference: str) -> str | Digest:
    """A manifest reference: a Digest, or a tag (validated) as a plain string."""
    if is_digest(reference):
        return Digest.parse(reference)
    return validate_tag(reference)
