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

from registry_proxy import names, units
from registry_proxy.units import INT64_MAX, ConfigError, parse_listen, parse_size

DEFAULT_DATA_DIR = "/var/lib/groundcontrol"
DEFAULT_LISTEN = "0.0.0.0:8080"


MAX_DURATION = 100 * 365 * 86400
"""Durations are added to timestamps that must stay valid dates and int64s."""
# ASCII digits only ("²" and "٣" are str.isdigit() too) and at most 19 of them: no
# int() of a megabyte of digits, no value past int64 before the range check
_INTEGER = re.compile(r"[0-9]{1,19}")


def parse_int(text: str, lo: int = 0, hi: int = INT64_MAX) -> int:
    """A decimal integer in ``[lo, hi]`` written in ASCII digits (no sign, no spaces).

    The one number parser for text from outside (query strings, path segments,
    configuration): ``int()`` alone takes ``"٣"``, ``" 3"`` and ``"1_000"``, and
    raises on ``"²"`` although ``"²".isdigit()``.
    """
    if _INTEGER.fullmatch(text) is None or not lo <= int(text) <= hi:
        raise ValueError(f"expected an integer between {lo} and {hi}, got {text[:40]!r}")
    return int(text)


def _in_range(value: int, hi: int, what: str) -> int:
    if not 0 <= value <= hi:
        raise ValueError(f"{what} must be between 0 and {hi}, got {value}")
    return value


def parse_duration(value: object) -> int:
    """Whole seconds from ``90``, ``"90s"``, ``"15m"``, ``"7d"``; at most 100 years."""
    if isinstance(value, float):
        raise ValueError(f"expected a duration like 90s, 15m, 7d, got {value!r}")
    return int(units.parse_duration(value, maximum=MAX_DURATION))


def parse_registry_url(value: str) -> str:
    """``http(s)://host[:port]``, no path; empty turns the feature off."""
    if value and not names.is_registry_url(value):
        raise ValueError(f"expected http(s)://HOST[:PORT] without a path, got {value!r}")
    return value.rstrip("/")


# room for "/<satellite name>" (at most 64 characters) in a repository name
MAX_REPOSITORY_PREFIX = names.MAX_NAME_LENGTH - 64


def parse_repository_prefix(value: str) -> str:
    """A repository path such as ``satellite-state`` or ``fleet/satellite-state``."""
    if not names.is_name(value) or len(value) > MAX_REPOSITORY_PREFIX:
        raise ValueError(
            f"expected a repository path like satellite-state of at most "
            f"{MAX_REPOSITORY_PREFIX} characters, got {value!r}"
        )
    return value


def parse_database_url(value: str) -> str:
    """``sqlite:///PATH`` (relative to the working directory; ``sqlite:////abs`` absolute)
    or ``postgresql://…``; empty means the SQLite file under the data directory."""
    if value and not (
        (value.startswith("sqlite:///") and value != "sqlite:///")
        or value.startswith(("postgresql://", "postgres://"))
    ):
        raise ValueError(f"expected sqlite:///PATH or postgresql://USER@HOST/DB, got {value!r}")
    return value


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def _positive(seconds: int) -> int:
    if seconds <= 0:
        raise ValueError("must be at least 1s")
    return seconds


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"expected an integer, got {value!r}")
    if isinstance(value, int):
        return _in_range(value, INT64_MAX, "an integer")
    return parse_int(value.strip(" "))


def _at_most(value: int, limit: int) -> int:
    if not 0 <= value <= limit:
        raise ValueError(f"must be between 0 and {limit}")
    return value


@dataclass(frozen=True)
class Config:
    listen: str = DEFAULT_LISTEN
    data_dir: Path = Path(DEFAULT_DATA_DIR)
    # request bodies: at least body_min_rate bytes/s over each body_rate_window seconds
    # (the first window is the grace), and the whole body within body_timeout (0: none)
    body_min_rate: int = 1024
    body_rate_window: int = 30
    body_timeout: int = 0
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
    # dashboard login
    dashboard_session_ttl: int = 12 * 3600

    @property
    def database_url(self) -> str:
        return self.database or f"sqlite:///{self.data_dir / 'gc.db'}"

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    def with_overrides(self, **kwargs: Any) -> Config:
        return replace(self, **{k: v for k, v in kwargs.items() if v is not None})

    def anchored(self, cwd: Path) -> Config:
        """Relative paths (the data directory, a ``sqlite:///relative`` database) made
        absolute against ``cwd``, once at start, so that logs name the real files."""
        data_dir = cwd / self.data_dir
        database = self.database
        if database.startswith("sqlite:///") and database != "sqlite:///:memory:":
            database = f"sqlite:///{cwd / database.removeprefix('sqlite:///')}"
        return replace(self, data_dir=data_dir, database=database)


# (section, key) -> (dataclass field, parser)
_OPTIONS: dict[tuple[str, str], tuple[str, Callable[[object], Any]]] = {
    ("server", "listen"): ("listen", lambda v: (parse_listen(_str(v)), _str(v))[1]),
    ("server", "data_dir"): ("data_dir", lambda v: Path(_str(v))),
    ("server", "body_min_rate"): ("body_min_rate", parse_size),
    ("server", "body_rate_window"): ("body_rate_window", lambda v: _positive(parse_duration(v))),
    ("server", "body_timeout"): ("body_timeout", parse_duration),
    ("database", "url"): ("database", lambda v: parse_database_url(_str(v))),
    ("registry", "url"): ("registry_url", lambda v: parse_registry_url(_str(v))),
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
    ("dashboard", "session_ttl"): ("dashboard_session_ttl", parse_duration),
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
    if config.dashboard_session_ttl <= 0:
        raise ConfigError("dashboard.session_ttl: must be positive")
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
