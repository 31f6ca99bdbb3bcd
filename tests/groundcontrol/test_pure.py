"""Pure parts: config parsing, input validation, status derivation."""

from __future__ import annotations

from pathlib import Path

import pytest

from groundcontrol.config import Config, load_config, parse_duration
from groundcontrol.db.sqlite import sqlite_path
from groundcontrol.errors import BadRequest
from groundcontrol.models import (
    Satellite,
    effective_config,
    parse_config_overrides,
    parse_images,
    parse_reference,
)
from groundcontrol.status import derive_status
from registry_proxy.units import ConfigError, parse_size


def test_units() -> None:
    assert parse_duration(90) == 90
    assert parse_duration("15m") == 900
    assert parse_duration("7d") == 7 * 86400
    assert parse_size("512MiB") == 512 * 2**20
    assert parse_size("1GB") == 10**9
    for bad in ("soon", "-1", True, 1.5):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_config_file_env_and_defaults(tmp_path: Path) -> None:
    path = tmp_path / "gc.toml"
    path.write_text('[server]\ndata_dir = "/srv/gc"\n[status]\nstale_after = "5m"\n')
    config = load_config(path, environ={"GROUNDCONTROL_SERVER_LISTEN": "127.0.0.1:9000"})
    assert config.listen == "127.0.0.1:9000"
    assert config.stale_after == 300
    assert config.database_url == "sqlite:////srv/gc/gc.db"
    # relative paths are anchored at the working directory, once, by the CLI
    relative = Config(data_dir=Path("gc-data"), database="sqlite:///db/gc.db")
    anchored = relative.anchored(Path("/work/here"))
    assert anchored.data_dir == Path("/work/here/gc-data")
    assert anchored.database_url == "sqlite:////work/here/db/gc.db"
    assert Config(data_dir=Path("gc-data")).anchored(Path("/w")).database_url == (
        "sqlite:////w/gc-data/gc.db"
    )
    assert sqlite_path("sqlite:///gc.db") == "gc.db"
    assert sqlite_path("sqlite:////srv/gc.db") == "/srv/gc.db"
    assert load_config(None, environ={}).listen == "0.0.0.0:8080"


@pytest.mark.parametrize(
    ("text", "env", "key"),
    [
        ("[server]\nport = 1\n", {}, "server.port"),
        ("[status]\nstale_after = 'x'\n", {}, "status.stale_after"),
        ("", {"GROUNDCONTROL_JOIN_TOKEN_TTL": "x"}, "GROUNDCONTROL_JOIN_TOKEN_TTL"),
        ("[status]\nstale_after = 100\noffline_after = 10\n", {}, "status.offline_after"),
        ("not toml [", {}, "not valid TOML"),
        ("[dashboard]\nsession_ttl = 0\n", {}, "dashboard.session_ttl"),
        ("[database]\nurl = 'sqlite://gc.db'\n", {}, "database.url"),
        ("", {"GROUNDCONTROL_DATABASE_URL": "/srv/gc.db"}, "GROUNDCONTROL_DATABASE_URL"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, text: str, env: dict[str, str], key: str) -> None:
    path = tmp_path / "gc.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(path, environ=env)


def test_references() -> None:
    assert parse_reference("library/nginx") == ("library/nginx", "latest", None)
    assert parse_reference("a/b:1.2") == ("a/b", "1.2", None)
    digest = "sha256:" + "0" * 64
    assert parse_reference(f"a@{digest}") == ("a", None, digest)
    for bad in ("A/b", "a:b:c/d", "a@sha256:xyz", "", "a/:x"):
        with pytest.raises(BadRequest):
            parse_reference(bad)
    with pytest.raises(BadRequest):
        parse_images(["a:1", "a:1"])


def test_config_overrides_and_effective_config() -> None:
    overrides = parse_config_overrides(
        {
            "state_interval": "2m",
            "cache_max_bytes": "1GiB",
            "upstreams": [{"name": "docker.io", "url": "https://r.example/", "default": True}],
        }
    )
    config = effective_config(load_config(None, environ={}), overrides)
    assert config.state_interval == 120
    assert config.cache_max_bytes == 2**30
    assert config.checkin_interval == 60
    assert config.upstreams[0].url == "https://r.example"
    for bad in ({"nope": 1}, {"state_interval": 0}, {"upstreams": [{"name": "x"}]}):
        with pytest.raises(BadRequest):
            parse_config_overrides(bad)


def sat(**kw: object) -> Satellite:
    base: dict[str, object] = {
        "name": "s",
        "groups": (),
        "labels": {},
        "config": {},
        "created_at": 0,
        "updated_at": 0,
        "registered_at": 10,
        "last_seen": 1000,
        "published_version": 3,
        "applied_version": 3,
    }
    base.update(kw)
    return Satellite(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("satellite", "now", "summary", "connectivity"),
    [
        (sat(), 1000, "online", "online"),
        (sat(), 1000 + 601, "stale", "stale"),
        (sat(), 1000 + 3601, "offline", "offline"),
        (sat(last_seen=None), 1000, "offline", "offline"),
        (sat(registered_at=None, last_seen=None), 1000, "pending", "pending"),
        (sat(revoked_at=5), 1000, "revoked", "revoked"),
        (sat(applied_version=2), 1000, "behind", "online"),
        (sat(applied_version=None), 1000, "behind", "online"),
        (
            sat(last_report={"images": [{"repository": "r", "digest": "d", "status": "failed"}]}),
            1000,
            "failing",
            "online",
        ),
    ],
)
def test_status(satellite: Satellite, now: float, summary: str, connectivity: str) -> None:
    status = derive_status(satellite, now, stale_after=600, offline_after=3600)
    assert (status.summary, status.connectivity) == (summary, connectivity)


def test_status_details() -> None:
    report = {
        "images": [
            {"repository": "r", "digest": "d", "status": "failed", "error": "boom"},
            {"repository": "m", "digest": "e", "status": "missing"},
        ],
        "state_expired": True,
    }
    status = derive_status(sat(last_report=report, applied_version=1), 1000, 600, 3600)
    assert status.failing_images == ("r@d: boom",)
    assert status.missing_images == 1 and status.state_expired and status.behind
