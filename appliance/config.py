"""The satellite's configuration: TOML file, then environment overrides, then flags.

Every option has a default that works on one machine. Unknown keys and bad values are
refused at start with the offending key named (``ConfigError``).

Environment overrides are ``SATELLITE_<SECTION>_<KEY>`` for the scalar keys, e.g.
``SATELLITE_SERVER_LISTEN=127.0.0.1:5000`` or ``SATELLITE_REGISTRY_PUSH=true``.
"""

from __future__ import annotations

import contextlib
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from registry_proxy import names, units
from registry_proxy.accesslog import Format as AccessLogFormat
from registry_proxy.units import ConfigError, parse_duration

DEFAULT_LISTEN = "0.0.0.0:8585"
DEFAULT_DATA_DIR = Path("/var/lib/satellite")
DEFAULT_MAX_BYTES = 50 * 1024**3


@dataclass(frozen=True)
class UpstreamConfig:
    name: str
    url: str
    default: bool = False
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None


@dataclass(frozen=True)
class Config:
    listen: str = DEFAULT_LISTEN
    zero_copy: bool = True
    workers: int = 0  # serving processes; 0: one per core
    data_dir: Path = DEFAULT_DATA_DIR
    max_bytes: int = DEFAULT_MAX_BYTES
    push: bool = False
    tag_timeout: float = 3.0
    stale_after: float = 0.25
    # request bodies: a rate floor over each window (not a fixed total, which would cut
    # a large layer pushed over a slow link), and an optional overall limit (0: none)
    body_min_rate: int = 1024
    body_rate_window: float = 30.0
    body_timeout: float = 0.0
    upstreams: tuple[UpstreamConfig, ...] = ()
    groundcontrol_url: str | None = None
    groundcontrol_ca_file: str | None = None
    state_interval: float | None = None  # None: the signed config's (or 60 s)
    checkin_interval: float | None = None
    long_poll: bool = True
    log_level: str = "info"
    log_access: bool = True
    log_format: AccessLogFormat = "plain"
    # keys set by the file, the environment or a flag: these win over the signed config
    explicit: frozenset[str] = frozenset()

    @property
    def worker_count(self) -> int:
        """Serving processes: ``workers``, or one per core the process may use."""
        if self.workers:
            return self.workers
        return max(1, len(os.sched_getaffinity(0)))

    @property
    def host_port(self) -> tuple[str, int]:
        return parse_listen(self.listen, "server.listen")


def parse_size(value: object, key: str) -> int:
    try:
        return units.parse_size(value)
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc}") from None


def _ca_file(value: object, key: str) -> Path | None:
    """A CA bundle path that must exist now: found missing at the first upstream TLS
    handshake it would be a traceback naming neither the file nor the key."""
    if not value:
        return None
    path = Path(_str(value, key))
    if not path.is_file():
        raise ConfigError(f"{key}: {path} is not a readable file")
    return path


def parse_seconds(value: object, key: str, *, zero: bool = False) -> float:
    """Seconds as a TOML number or a string of one (environment overrides)."""
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value)
    if (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value > 0 or (zero and value == 0))
    ):
        return float(value)
    expected = "seconds >= 0" if zero else "seconds > 0"
    raise ConfigError(f"{key}: expected {expected}, got {value!r}")


def parse_bool(value: object, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{key}: expected true or false, got {value!r}")


def parse_listen(value: object, key: str) -> tuple[str, int]:
    try:
        return units.parse_listen(value)
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc}") from None


def _str(value: object, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key}: expected a non-empty string, got {value!r}")
    return value


def _table(doc: Mapping[str, Any], key: str, allowed: set[str]) -> Mapping[str, Any]:
    section = doc.get(key, {})
    if not isinstance(section, dict):
        raise ConfigError(f"{key}: expected a table")
    for name in section:
        if name not in allowed:
            raise ConfigError(f"{key}.{name}: unknown key (known: {', '.join(sorted(allowed))})")
    return section


def _upstream_name(value: object, key: str) -> str:
    """The registry host an upstream stands for, as ``?ns=`` and image names carry it."""
    if not names.is_registry_host(value):
        raise ConfigError(f"{key}: expected a registry host such as docker.io, got {value!r}")
    return value


def _upstream_url(value: object, key: str) -> str:
    if not names.is_registry_url(value):
        raise ConfigError(f"{key}: expected http(s)://HOST[:PORT] without a path, got {value!r}")
    return value.rstrip("/")


def _upstreams(raw: object) -> tuple[UpstreamConfig, ...]:
    if not isinstance(raw, list):
        raise ConfigError("upstream: expected [[upstream]] tables")
    allowed = {"name", "url", "default", "username", "password", "ca_file"}
    result: list[UpstreamConfig] = []
    for i, entry in enumerate(raw):
        key = f"upstream[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{key}: expected a table")
        for name in entry:
            if name not in allowed:
                raise ConfigError(f"{key}.{name}: unknown key")
        result.append(
            UpstreamConfig(
                name=_upstream_name(entry.get("name"), f"{key}.name"),
                url=_upstream_url(entry.get("url"), f"{key}.url"),
                default=parse_bool(entry.get("default", False), f"{key}.default"),
                username=entry.get("username"),
                password=entry.get("password"),
                ca_file=_ca_file(entry.get("ca_file"), f"{key}.ca_file"),
            )
        )
    names = [u.name for u in result]
    if len(set(names)) != len(names):
        raise ConfigError("upstream: names must be unique")
    if sum(u.default for u in result) > 1:
        raise ConfigError("upstream: at most one upstream may be the default")
    return tuple(result)


def from_mapping(doc: Mapping[str, Any]) -> Config:
    known = {"server", "storage", "registry", "upstream", "groundcontrol", "log"}
    for name in doc:
        if name not in known:
            raise ConfigError(f"{name}: unknown section (known: {', '.join(sorted(known))})")
    server = _table(
        doc,
        "server",
        {"listen", "zero_copy", "workers", "body_min_rate", "body_rate_window", "body_timeout"},
    )
    storage = _table(doc, "storage", {"path", "max_bytes"})
    registry = _table(doc, "registry", {"push", "tag_timeout", "stale_after"})
    gc = _table(
        doc, "groundcontrol", {"url", "ca_file", "state_interval", "checkin_interval", "long_poll"}
    )
    log = _table(doc, "log", {"level", "access", "format"})
    config = Config()
    if "listen" in server:
        parse_listen(server["listen"], "server.listen")
        config = replace(config, listen=server["listen"])
    if "workers" in server:
        config = replace(config, workers=_workers(server["workers"]))
    if "zero_copy" in server:
        config = replace(config, zero_copy=parse_bool(server["zero_copy"], "server.zero_copy"))
    if "path" in storage:
        config = replace(config, data_dir=Path(_str(storage["path"], "storage.path")))
    if "max_bytes" in storage:
        config = replace(config, max_bytes=parse_size(storage["max_bytes"], "storage.max_bytes"))
    if "push" in registry:
        config = replace(config, push=parse_bool(registry["push"], "registry.push"))
    if "tag_timeout" in registry:
        tag_timeout = parse_seconds(registry["tag_timeout"], "registry.tag_timeout")
        config = replace(config, tag_timeout=tag_timeout)
    if "stale_after" in registry:
        stale_after = parse_seconds(registry["stale_after"], "registry.stale_after", zero=True)
        config = replace(config, stale_after=stale_after)
    if "body_min_rate" in server:
        rate = parse_size(server["body_min_rate"], "server.body_min_rate")
        config = replace(config, body_min_rate=rate)
    if "body_rate_window" in server:
        window = parse_seconds(server["body_rate_window"], "server.body_rate_window")
        config = replace(config, body_rate_window=window)
    if "body_timeout" in server:
        body_timeout = parse_seconds(server["body_timeout"], "server.body_timeout", zero=True)
        config = replace(config, body_timeout=body_timeout)
    if "url" in gc:
        url = _str(gc["url"], "groundcontrol.url")
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"groundcontrol.url: expected an http(s) URL, got {url!r}")
        config = replace(config, groundcontrol_url=url.rstrip("/"))
    if "ca_file" in gc:
        ca_file = _ca_file(gc["ca_file"], "groundcontrol.ca_file")
        config = replace(config, groundcontrol_ca_file=str(ca_file) if ca_file else None)
    if "state_interval" in gc:
        seconds = _interval(gc["state_interval"], "groundcontrol.state_interval")
        config = replace(config, state_interval=seconds)
    if "checkin_interval" in gc:
        seconds = _interval(gc["checkin_interval"], "groundcontrol.checkin_interval")
        config = replace(config, checkin_interval=seconds)
    if "long_poll" in gc:
        config = replace(config, long_poll=parse_bool(gc["long_poll"], "groundcontrol.long_poll"))
    if "level" in log:
        level = _str(log["level"], "log.level").lower()
        if level not in ("debug", "info", "warning", "error"):
            raise ConfigError(f"log.level: expected debug, info, warning or error, got {level!r}")
        config = replace(config, log_level=level)
    if "access" in log:
        config = replace(config, log_access=parse_bool(log["access"], "log.access"))
    if "format" in log:
        fmt = _str(log["format"], "log.format").lower()
        if fmt not in ("plain", "json"):
            raise ConfigError(f"log.format: expected plain or json, got {fmt!r}")
        config = replace(config, log_format="json" if fmt == "json" else "plain")
    if "upstream" in doc:
        config = replace(config, upstreams=_upstreams(doc["upstream"]))
    explicit = {
        f"{section}.{key}"
        for section, table in doc.items()
        if isinstance(table, dict)
        for key in table
    }
    return replace(config, explicit=frozenset(explicit))


def _workers(value: object) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())  # from the environment
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 64:
        raise ConfigError(f"server.workers: expected 0 (one per core) to 64, got {value!r}")
    return value


def _interval(value: object, key: str) -> float:
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc}") from None
    if not 1 <= seconds <= 7 * 86400:
        raise ConfigError(f"{key}: must be between 1s and 7d, got {value!r}")
    return seconds


_ENV_KEYS = {
    "SATELLITE_SERVER_LISTEN": ("server", "listen"),
    "SATELLITE_SERVER_ZERO_COPY": ("server", "zero_copy"),
    "SATELLITE_SERVER_WORKERS": ("server", "workers"),
    "SATELLITE_SERVER_BODY_MIN_RATE": ("server", "body_min_rate"),
    "SATELLITE_SERVER_BODY_RATE_WINDOW": ("server", "body_rate_window"),
    "SATELLITE_SERVER_BODY_TIMEOUT": ("server", "body_timeout"),
    "SATELLITE_STORAGE_PATH": ("storage", "path"),
    "SATELLITE_STORAGE_MAX_BYTES": ("storage", "max_bytes"),
    "SATELLITE_REGISTRY_PUSH": ("registry", "push"),
    "SATELLITE_REGISTRY_TAG_TIMEOUT": ("registry", "tag_timeout"),
    "SATELLITE_REGISTRY_STALE_AFTER": ("registry", "stale_after"),
    "SATELLITE_GROUNDCONTROL_URL": ("groundcontrol", "url"),
    "SATELLITE_GROUNDCONTROL_STATE_INTERVAL": ("groundcontrol", "state_interval"),
    "SATELLITE_GROUNDCONTROL_CHECKIN_INTERVAL": ("groundcontrol", "checkin_interval"),
    "SATELLITE_LOG_LEVEL": ("log", "level"),
    "SATELLITE_LOG_ACCESS": ("log", "access"),
    "SATELLITE_LOG_FORMAT": ("log", "format"),
}


def load(path: Path | None, environ: Mapping[str, str] | None = None) -> Config:
    """Reads the file (if any), applies SATELLITE_* environment overrides, validates."""
    doc: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                doc = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    env = os.environ if environ is None else environ
    for var, (section, key) in _ENV_KEYS.items():
        if var in env:
            doc.setdefault(section, {})
            if not isinstance(doc[section], dict):
                raise ConfigError(f"{section}: expected a table")
            doc[section][key] = env[var]
    return from_mapping(doc)


def parse_upstream_flag(value: str) -> UpstreamConfig:
    name, sep, url = value.partition("=")
    if not sep:
        raise ConfigError(f"--upstream: expected NAME=URL, got {value!r}")
    return UpstreamConfig(
        name=_upstream_name(name, "--upstream"), url=_upstream_url(url, "--upstream")
    )
