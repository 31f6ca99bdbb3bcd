"""Ground Control configuration: a TOML file, environment overrides, defaults that work.

Every option is ``[section] key``; the environment variable ``GROUNDCONTROL_SECTION_KEY``
overrides it (``GROUNDCONTROL_SERVER_LISTEN``), and command-line flags override both.
A bad value is refused at start with the offending key named.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

DEFAULT_DATA_DIR = "/var/lib/groundcontrol"
DEFAULT_LISTEN = "0.0.0.0:8080"


class ConfigError(ValueError):
    """A configuration value is invalid; the message starts with the key."""


_DURATION = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
_SIZE = re.compile(r"^\s*(\d+)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_duration(value: object) -> int:
    """Seconds from ``90``, ``"90s"``, ``"15m"``, ``"7d"``."""
    if isinstance(value, bool):
        raise ValueError("expected a duration")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("must not be negative")
        return value
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return int(int(m.group(1)) * _DURATION_UNITS[m.group(2)])
    raise ValueError(f"expected a duration like 90s, 15m, 7d, got {value!r}")


def parse_size(value: object) -> int:
    """Bytes from ``1024``, ``"512MiB"``, ``"50GiB"``."""
    if isinstance(value, bool):
        raise ValueError("expected a size")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("must not be negative")
        return value
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m:
            unit = (m.group(2) or "b").lower()
            return int(m.group(1)) * _SIZE_UNITS[unit]
    raise ValueError(f"expected a size like 512MiB or 50GiB, got {value!r}")


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8080`` for IPv6) into host and port."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


_REPOSITORY_PREFIX = re.compile(
    r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$"
)
_REGISTRY_URL = re.compile(r"^https?://[A-Za-z0-9.-]+(?::[0-9]{1,5})?/?$")


def parse_registry_url(value: str) -> str:
    """``http(s)://host[:port]``, no path; empty turns the feature off."""
    if value and not _REGISTRY_URL.match(value):
        raise ValueError(f"expected http(s)://HOST[:PORT] without a path, got {value!r}")
    return value.rstrip("/")


def parse_repository_prefix(value: str) -> str:
    """A repository path such as ``satellite-state`` or ``fleet/satellite-state``."""
    if not _REPOSITORY_PREFIX.match(value) or len(value) > 200:
        raise ValueError(f"expected a repository path like satellite-state, got {value!r}")
    return value


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"expected an integer, got {value!r}")
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"expected an integer, got {value!r}") from None


def _at_most(value: int, limit: int) -> int:
    if not 0 <= value <= limit:
        raise ValueError(f"must be between 0 and {limit}")
    return value


@dataclass(frozen=True)
class Config:
    listen: str = DEFAULT_LISTEN
    data_dir: Path = Path(DEFAULT_DATA_DIR)
    database: str = ""  # empty: sqlite:///<data_dir>/gc.db
    # the central registry the images are resolved against at publish time
    registry_url: str = ""
    registry_username: str = ""
    registry_password: str = ""
    registry_timeout: int = 10
    # signed state
    state_expires: int = 7 * 86400
    state_refresh_before: int = 2 * 86400
    states_kept: int = 20
    # long-poll: the longest a state request is held (?wait=), and how many at once
    long_poll_max: int = 60
    long_poll_waiters: int = 10_000
    # status derivation
    stale_after: int = 10 * 60
    offline_after: int = 60 * 60
    # check-ins
    checkins_kept: int = 1000
    checkin_batch_max: int = 500
    # registration
    join_token_ttl: int = 86400
    join_token_max_failures: int = 5
    register_rate_limit: int = 30  # attempts per source address per minute
    # per-satellite config defaults
    state_interval: int = 60
    checkin_interval: int = 60
    cache_max_bytes: int = 50 * 2**30
    bandwidth_bytes_per_second: int = 0
    # signed state also pushed as OCI artifacts to a registry (optional; off when no url)
    state_registry_url: str = ""
    state_registry_repository: str = "satellite-state"
    state_registry_retry_interval: int = 60
    # Harbor robot accounts (optional)
    harbor_url: str = ""
    harbor_username: str = ""
    harbor_password: str = ""
    harbor_robot_ttl_days: int = 30

    @property
    def database_url(self) -> str:
        return self.database or f"sqlite:///{self.data_dir / 'gc.db'}"

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    def with_overrides(self, **kwargs: Any) -> Config:
        return replace(self, **{k: v for k, v in kwargs.items() if v is not None})


# (section, key) -> (dataclass field, parser)
_OPTIONS: dict[tuple[str, str], tuple[str, Callable[[object], Any]]] = {
    ("server", "listen"): ("listen", lambda v: (parse_listen(_str(v)), _str(v))[1]),
    ("server", "data_dir"): ("data_dir", lambda v: Path(_str(v))),
    ("database", "url"): ("database", _str),
    ("registry", "url"): ("registry_url", lambda v: _str(v).rstrip("/")),
    ("registry", "username"): ("registry_username", _str),
    ("registry", "password"): ("registry_password", _str),
    ("registry", "timeout"): ("registry_timeout", parse_duration),
    ("state", "expires"): ("state_expires", parse_duration),
    ("state", "refresh_before"): ("state_refresh_before", parse_duration),
    ("state", "kept"): ("states_kept", _int),
    ("state", "long_poll_max"): ("long_poll_max", lambda v: _at_most(parse_duration(v), 3600)),
    ("state", "long_poll_waiters"): ("long_poll_waiters", lambda v: _at_most(_int(v), 1_000_000)),
    ("status", "stale_after"): ("stale_after", parse_duration),
    ("status", "offline_after"): ("offline_after", parse_duration),
    ("checkins", "kept"): ("checkins_kept", _int),
    ("checkins", "batch_max"): ("checkin_batch_max", _int),
    ("join", "token_ttl"): ("join_token_ttl", parse_duration),
    ("join", "max_failures"): ("join_token_max_failures", _int),
    ("join", "rate_limit"): ("register_rate_limit", _int),
    ("defaults", "state_interval"): ("state_interval", parse_duration),
    ("defaults", "checkin_interval"): ("checkin_interval", parse_duration),
    ("defaults", "cache_max_bytes"): ("cache_max_bytes", parse_size),
    ("defaults", "bandwidth_bytes_per_second"): ("bandwidth_bytes_per_second", parse_size),
    ("state_registry", "url"): ("state_registry_url", lambda v: parse_registry_url(_str(v))),
    ("state_registry", "repository"): (
        "state_registry_repository",
        lambda v: parse_repository_prefix(_str(v)),
    ),
    ("state_registry", "retry_interval"): ("state_registry_retry_interval", parse_duration),
    ("harbor", "url"): ("harbor_url", lambda v: _str(v).rstrip("/")),
    ("harbor", "username"): ("harbor_username", _str),
    ("harbor", "password"): ("harbor_password", _str),
    ("harbor", "robot_ttl_days"): ("harbor_robot_ttl_days", _int),
}


def load_config(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Read the TOML file (if any), then the environment; refuse unknown or bad keys."""
    env = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(path.read_text())
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    values: dict[str, Any] = {}
    for section, table in raw.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{section}: expected a table")
        for key, value in table.items():
            _apply(values, section, key, value)
    for (section, key), _spec in _OPTIONS.items():
        name = f"GROUNDCONTROL_{section.upper()}_{key.upper()}"
        if name in env:
            _apply(values, section, key, env[name], source=name)
    config = Config(**values)
    if config.offline_after < config.stale_after:
        raise ConfigError("status.offline_after: must not be shorter than status.stale_after")
    if config.state_refresh_before >= config.state_expires:
        raise ConfigError("state.refresh_before: must be shorter than state.expires")
    return config


def _apply(values: dict[str, Any], section: str, key: str, value: object, source: str = "") -> None:
    spec = _OPTIONS.get((section, key))
    label = f"{section}.{key}"
    if spec is None:
        raise ConfigError(f"{label}: unknown option")
    attr, parse = spec
    try:
        values[attr] = parse(value)
    except ValueError as exc:
        where = f" (from {source})" if source else ""
        raise ConfigError(f"{label}{where}: {exc}") from None
