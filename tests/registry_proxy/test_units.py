"""One parser per kind of configuration value, and both programs reading values alike."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.config import load as load_satellite_config
from groundcontrol.config import load_config as load_groundcontrol_config
from registry_proxy.units import (
    INT64_MAX,
    ConfigError,
    parse_duration,
    parse_listen,
    parse_size,
)

NOT_ASCII_DIGITS = ["²", "٣", "\uff11"]  # the last: fullwidth one


def test_sizes() -> None:
    assert parse_size(123) == 123
    assert parse_size("50GiB") == 50 * 2**30
    assert parse_size("1.5GiB") == 3 * 2**29
    assert parse_size("1.5 MB") == 1_500_000
    assert parse_size("512mib") == 512 * 2**20
    assert parse_size(str(INT64_MAX)) == INT64_MAX
    for bad in [
        *NOT_ASCII_DIGITS,
        "",
        "-1",
        -1,
        True,
        1.5,
        "1KiB\n",
        "1 KiBs",
        "9" * 5000,
        str(INT64_MAX + 1),
        "99999999TiB",
    ]:
        with pytest.raises(ValueError):
            parse_size(bad)


def test_durations() -> None:
    assert parse_duration(90) == 90.0
    assert parse_duration(" 90s ") == 90.0
    assert parse_duration("250ms") == 0.25
    assert parse_duration("15m") == 900.0
    assert parse_duration("7d") == 7 * 86400.0
    with pytest.raises(ValueError):
        parse_duration("2d", maximum=86400)
    for bad in [*NOT_ASCII_DIGITS, "", "-1s", -1, True, "1s\n", "1w", float("nan")]:
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_listen_addresses() -> None:
    assert parse_listen("127.0.0.1:8585") == ("127.0.0.1", 8585)
    assert parse_listen("[::1]:0") == ("::1", 0)
    for bad in [":80", "host", "host:65536", "host:٣", "host:80\n", "host:" + "9" * 400, 80]:
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_listen(bad)


def test_both_programs_read_a_size_alike_and_refuse_alike(tmp_path: Path) -> None:
    satellite = tmp_path / "satellite.toml"
    groundcontrol = tmp_path / "groundcontrol.toml"
    satellite.write_text('[storage]\nmax_bytes = "1.5GiB"\n')
    groundcontrol.write_text('[defaults]\ncache_max_bytes = "1.5GiB"\n')
    assert load_satellite_config(satellite, {}).max_bytes == 3 * 2**29
    assert load_groundcontrol_config(groundcontrol, {}).cache_max_bytes == 3 * 2**29
    satellite.write_text('[storage]\nmax_bytes = "1.5 GiBs"\n')
    groundcontrol.write_text('[defaults]\ncache_max_bytes = "1.5 GiBs"\n')
    with pytest.raises(ConfigError, match=r"storage\.max_bytes"):
        load_satellite_config(satellite, {})
    with pytest.raises(ConfigError, match=r"defaults\.cache_max_bytes"):
        load_groundcontrol_config(groundcontrol, {})
