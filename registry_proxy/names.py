"""The one grammar of what registries name: repositories, tags, digests, registry hosts.

distribution's reference grammar (``reference/regexp.go``), used by the registry, by
the satellite's config and by Ground Control's models and config. Every check is a
``fullmatch`` over ASCII-only classes: ``re.match`` with ``$`` lets a trailing newline
through (``"sat-a\\n"``), and ``\\w``/``\\d`` would let Unicode letters and digits in.
``groundcontrol.contract`` keeps a stdlib-only copy, which tests hold to this one.

The ``is_*`` predicates are for callers that word their own errors; ``validate_*`` raise
the registry protocol's errors.
"""

from __future__ import annotations

import re
from typing import TypeGuard

from registry_proxy.digest import Digest
from registry_proxy.digest import is_digest as _digest_shaped
from registry_proxy.errors import RegistryError

MAX_NAME_LENGTH = 255
"""Of a whole repository name, registry host included (distribution's limit)."""
MAX_HOST_LENGTH = 255

# path-component: alphanumeric (separator alphanumeric)*; separator: [._] | __ | -+
PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
NAME = rf"{PATH_COMPONENT}(?:/{PATH_COMPONENT})*"
TAG = r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}"
# domain-name: labels of letters, digits and inner hyphens; or an IPv6 literal in brackets
_DOMAIN_COMPONENT = r"(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])"
HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[A-Fa-f0-9:]+\])"
PORT = r"[0-9]{1,5}"
REGISTRY_HOST = rf"{HOST}(?::{PORT})?"

_NAME = re.compile(NAME)
_TAG = re.compile(TAG)
_REGISTRY_HOST = re.compile(REGISTRY_HOST)
_REGISTRY_URL = re.compile(rf"https?://{REGISTRY_HOST}/?")
# a stored name: a repository, optionally behind a registry host *with* a port (without
# one, "docker.io/library/x" is an ordinary three-component name)
_QUALIFIED_NAME = re.compile(rf"(?:{HOST}:{PORT}/)?{NAME}")


def is_name(value: object) -> TypeGuard[str]:
    """A repository name: ``library/nginx``, ``team/app-1``; at most 255 characters."""
    return (
        isinstance(value, str)
        and len(value) <= MAX_NAME_LENGTH
        and _NAME.fullmatch(value) is not None
    )


def is_qualified_name(value: object) -> TypeGuard[str]:
    """A repository name, optionally behind ``host:port/`` (``localhost:5000/team/app``)."""
    return (
        isinstance(value, str)
        and len(value) <= MAX_NAME_LENGTH
        and _QUALIFIED_NAME.fullmatch(value) is not None
    )


def is_tag(value: object) -> TypeGuard[str]:
    """A tag: a letter, digit or ``_``, then up to 127 of those, ``.`` and ``-``."""
    return isinstance(value, str) and _TAG.fullmatch(value) is not None


def is_digest(value: object) -> TypeGuard[str]:
    """A supported content digest: ``sha256:<64 hex>`` or ``sha512:<128 hex>``, lower case."""
    if not isinstance(value, str):
        return False
    try:
        Digest.parse(value)
    except RegistryError:
        return False
    return True


def is_registry_host(value: object) -> TypeGuard[str]:
    """A registry host as image references and ``?ns=`` carry it: ``ghcr.io``,
    ``localhost:5000``, ``[::1]:5000``."""
    return (
        isinstance(value, str)
        and len(value) <= MAX_HOST_LENGTH
        and _REGISTRY_HOST.fullmatch(value) is not None
    )


def is_registry_url(value: object) -> TypeGuard[str]:
    """A registry's base URL: ``http(s)://host[:port]``, no path, query or user info."""
    return (
        isinstance(value, str)
        and len(value) <= MAX_HOST_LENGTH + 9
        and _REGISTRY_URL.fullmatch(value) is not None
    )


def validate_name(name: str) -> str:
    if not is_name(name):
        raise RegistryError("NAME_INVALID", f"invalid repository name {name[:300]!r}")
    return name


def validate_tag(tag: str) -> str:
    if not is_tag(tag):
        raise RegistryError("MANIFEST_INVALID", f"invalid tag {tag[:200]!r}", status=400)
    return tag


def parse_reference(reference: str) -> str | Digest:
    """A manifest reference: a Digest, or a tag (validated) as a plain string."""
    if _digest_shaped(reference):
        return Digest.parse(reference)
    return validate_tag(reference)
