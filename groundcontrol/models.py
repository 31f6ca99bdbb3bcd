"""The fleet model and the validation of what operators send.

Pure: dataclasses and functions from untrusted JSON to validated values, raising
:class:`~groundcontrol.errors.BadRequest` with a stable code naming the field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from groundcontrol.config import Config, parse_duration
from groundcontrol.errors import BadRequest
from registry_proxy import names
from registry_proxy.units import parse_size

# Ground Control's own names (groups, satellites, label keys, platforms); what registries
# name (repositories, tags, digests, hosts) is registry_proxy.names' grammar. Every
# pattern is used with fullmatch: with re.match, "$" lets a trailing newline through.
NAME = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,61}[a-z0-9])?")
LABEL_KEY = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._/-]{0,61}[A-Za-z0-9])?")
# the contract's bound: at most 32 characters per part
PLATFORM = re.compile(r"[a-z0-9_]{1,32}/[a-z0-9_]{1,32}(?:/[a-z0-9_.]{1,32})?")
MAX_IMAGES = 1000
MAX_LABELS = 64


def check_name(value: object, what: str = "name") -> str:
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise BadRequest(
            f"{what} must be 1-63 characters of a-z, 0-9, '.', '_', '-', "
            "starting and ending with a letter or digit",
            code=f"invalid_{what}",
        )
    return value


@dataclass(frozen=True)
class ImageRef:
    """An image every member of a group must hold: ``repository:tag`` or ``@digest``."""

    repository: str
    tag: str | None
    digest: str | None
    platforms: tuple[str, ...] = ()

    @property
    def reference(self) -> str:
        return self.repository + (f"@{self.digest}" if self.digest else f":{self.tag}")

    def to_dict(self) -> dict[str, Any]:
        return {"reference": self.reference, "platforms": list(self.platforms)}


def parse_reference(ref: object) -> tuple[str, str | None, str | None]:
    """``library/nginx:1.25`` or ``library/nginx@sha256:…`` → (repository, tag, digest)."""
    if not isinstance(ref, str) or len(ref) > 512:
        raise BadRequest("reference must be a string", code="invalid_image")
    repo, digest, tag = ref, None, None
    if "@" in repo:
        repo, digest = repo.split("@", 1)
        if not names.is_digest(digest):
            raise BadRequest(f"{ref!r}: invalid digest", code="invalid_image")
    else:
        head, sep, last = repo.rpartition(":")
        if sep and "/" not in last:
            repo, tag = head, last
            if not names.is_tag(tag):
                raise BadRequest(f"{ref!r}: invalid tag", code="invalid_image")
        else:
            tag = "latest"
    if not names.is_name(repo):
        raise BadRequest(
            f"{ref!r}: repository must be lowercase path components (at most 255 characters)",
            code="invalid_image",
        )
    return repo, tag, digest


def parse_image(value: object) -> ImageRef:
    if isinstance(value, str):
        value = {"reference": value}
    if not isinstance(value, Mapping):
        raise BadRequest("each image must be a reference or an object", code="invalid_image")
    unknown = set(value) - {"reference", "platforms"}
    if unknown:
        raise BadRequest(f"unknown image field(s): {sorted(unknown)}", code="invalid_image")
    repo, tag, digest = parse_reference(value.get("reference"))
    platforms = value.get("platforms", [])
    if not isinstance(platforms, list) or not all(
        isinstance(p, str) and PLATFORM.fullmatch(p) for p in platforms
    ):
        raise BadRequest(
            "platforms must be a list like ['linux/amd64', 'linux/arm64/v8']",
            code="invalid_image",
        )
    return ImageRef(repo, tag, digest, tuple(sorted(set(platforms))))


def parse_images(value: object) -> tuple[ImageRef, ...]:
    if not isinstance(value, list):
        raise BadRequest("images must be a list", code="invalid_images")
    if len(value) > MAX_IMAGES:
        raise BadRequest(f"at most {MAX_IMAGES} images per group", code="invalid_images")
    images = [parse_image(v) for v in value]
    seen: set[str] = set()
    for img in images:
        if img.reference in seen:
            raise BadRequest(f"{img.reference} listed twice", code="invalid_images")
        seen.add(img.reference)
    return tuple(images)


def parse_labels(value: object) -> dict[str, str]:
    if not isinstance(value, Mapping) or len(value) > MAX_LABELS:
        raise BadRequest(
            f"labels must be an object of at most {MAX_LABELS} strings", code="invalid_labels"
        )
    out = {}
    for k, v in value.items():
        if not isinstance(k, str) or not LABEL_KEY.fullmatch(k):
            raise BadRequest(f"invalid label key {k!r}", code="invalid_labels")
        if not isinstance(v, str) or len(v) > 256:
            raise BadRequest(
                f"label {k!r} must be a string of at most 256 characters", code="invalid_labels"
            )
        out[k] = v
    return out


def check_registry_host(value: object) -> str:
    """The registry an upstream credential is for: ``ghcr.io``, ``registry.local:5000``."""
    if not names.is_registry_host(value):
        raise BadRequest("registry must be a host or host:port", code="invalid_registry")
    return value


def parse_group_names(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise BadRequest("groups must be a list of group names", code="invalid_groups")
    names = [check_name(v, "group") for v in value]
    return tuple(sorted(set(names)))


# --- per-satellite config -------------------------------------------------------------


@dataclass(frozen=True)
class SatelliteUpstream:
    name: str
    url: str
    default: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "url": self.url, "default": self.default}


@dataclass(frozen=True)
class StateRegistry:
    """Where a satellite finds its signed state as an OCI artifact when Ground Control is
    down: ``<url host>/<repository>/<satellite>:latest`` (see groundcontrol.artifacts)."""

    url: str
    repository: str

    def to_dict(self) -> dict[str, Any]:
        return {"url": self.url, "repository": self.repository}


@dataclass(frozen=True)
class SatelliteConfig:
    """What a satellite is told to do, carried in its signed state."""

    state_interval: int
    checkin_interval: int
    cache_max_bytes: int
    bandwidth_bytes_per_second: int  # 0: no cap
    upstreams: tuple[SatelliteUpstream, ...] = ()
    state_registry: StateRegistry | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "state_interval": self.state_interval,
            "checkin_interval": self.checkin_interval,
            "cache_max_bytes": self.cache_max_bytes,
            "bandwidth_bytes_per_second": self.bandwidth_bytes_per_second,
            "upstreams": [u.to_dict() for u in self.upstreams],
        }
        if self.state_registry is not None:
            out["state_registry"] = self.state_registry.to_dict()
        return out


CONFIG_KEYS = (
    "state_interval",
    "checkin_interval",
    "cache_max_bytes",
    "bandwidth_bytes_per_second",
    "upstreams",
)


def parse_config_overrides(value: object) -> dict[str, Any]:
    """Validate a partial config (the keys an operator sets); normalise units to ints."""
    if not isinstance(value, Mapping):
        raise BadRequest("config must be an object", code="invalid_config")
    out: dict[str, Any] = {}
    for key, raw in value.items():
        if key not in CONFIG_KEYS:
            raise BadRequest(f"config.{key}: unknown option", code="invalid_config")
        if raw is None:
            continue  # null resets to the default
        try:
            if key in ("state_interval", "checkin_interval"):
                seconds = parse_duration(raw)
                if not 1 <= seconds <= 7 * 86400:
                    raise ValueError("must be between 1s and 7d")
                out[key] = seconds
            elif key in ("cache_max_bytes", "bandwidth_bytes_per_second"):
                out[key] = parse_size(raw)
            else:
                out[key] = [u.to_dict() for u in _parse_upstreams(raw)]
        except ValueError as exc:
            raise BadRequest(f"config.{key}: {exc}", code="invalid_config") from None
    return out


def _parse_upstreams(raw: object) -> tuple[SatelliteUpstream, ...]:
    if not isinstance(raw, list):
        raise ValueError("expected a list of {name, url, default}")
    ups = []
    for item in raw:
        if not isinstance(item, Mapping) or set(item) - {"name", "url", "default"}:
            raise ValueError("each upstream is an object with name, url, default")
        name, url, default = item.get("name"), item.get("url"), item.get("default", False)
        if not names.is_registry_host(name):
            raise ValueError(f"invalid upstream name {name!r}: expected a registry host[:port]")
        if not names.is_registry_url(url):
            raise ValueError(f"upstream {name}: url must be http(s)://HOST[:PORT] without a path")
        if not isinstance(default, bool):
            raise ValueError(f"upstream {name}: default must be true or false")
        ups.append(SatelliteUpstream(name, url.rstrip("/"), default))
    if len({u.name for u in ups}) != len(ups):
        raise ValueError("upstream names must be unique")
    if sum(u.default for u in ups) > 1:
        raise ValueError("at most one default upstream")
    return tuple(ups)


def central_upstream(registry_url: str) -> SatelliteUpstream | None:
    """The central registry (``[registry] url``) as a satellite's default upstream, named
    by its ``host[:port]`` (the name its upstream credentials are kept under)."""
    if not registry_url:
        return None
    host = urlsplit(registry_url).netloc.lower()
    if not names.is_registry_host(host):
        return None  # not a host[:port] a satellite could name (an IPv6 literal, say)
    return SatelliteUpstream(host, registry_url.rstrip("/"), default=True)


def effective_config(defaults: Config, overrides: Mapping[str, Any]) -> SatelliteConfig:
    """The config a satellite gets: Ground Control's defaults under its overrides.

    Without an ``upstreams`` override the central registry is the one, default upstream;
    with ``[state_registry] url`` set, the satellite is told where its state artifact is.
    """
    if "upstreams" in overrides:
        upstreams = _parse_upstreams(overrides["upstreams"])
    else:
        central = central_upstream(defaults.registry_url)
        upstreams = (central,) if central is not None else ()
    state_registry = None
    if defaults.state_registry_url:
        state_registry = StateRegistry(
            defaults.state_registry_url, defaults.state_registry_repository
        )
    return SatelliteConfig(
        state_interval=int(overrides.get("state_interval", defaults.state_interval)),
        checkin_interval=int(overrides.get("checkin_interval", defaults.checkin_interval)),
        cache_max_bytes=int(overrides.get("cache_max_bytes", defaults.cache_max_bytes)),
        bandwidth_bytes_per_second=int(
            overrides.get("bandwidth_bytes_per_second", defaults.bandwidth_bytes_per_second)
        ),
        upstreams=upstreams,
        state_registry=state_registry,
    )


# --- stored entities ------------------------------------------------------------------


@dataclass(frozen=True)
class Group:
    name: str
    description: str
    images: tuple[ImageRef, ...]
    created_at: int
    updated_at: int


@dataclass(frozen=True)
class Satellite:
    name: str
    groups: tuple[str, ...]
    labels: dict[str, str]
    config: dict[str, Any]  # overrides only
    created_at: int
    updated_at: int
    public_key: str | None = None
    keyid: str | None = None
    registered_at: int | None = None
    revoked_at: int | None = None
    published_version: int = 0
    applied_version: int | None = None
    last_seen: int | None = None
    last_seq: int = 0
    last_report: dict[str, Any] | None = field(default=None)


def describe_change(before: Group, description: str, images: tuple[ImageRef, ...]) -> str:
    """One line for a group's history: which references came and went."""
    old = {i.reference: i for i in before.images}
    new = {i.reference: i for i in images}
    parts = [f"+{ref}" for ref in new if ref not in old]
    parts += [f"-{ref}" for ref in old if ref not in new]
    parts += [
        f"{ref} platforms {','.join(new[ref].platforms) or 'all'}"
        for ref in new
        if ref in old and new[ref].platforms != old[ref].platforms
    ]
    if description != before.description:
        parts.append("description changed")
    return ", ".join(parts) or "saved unchanged"
