from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from appliance.config import DEFAULT_LISTEN, load, parse_size
from registry_proxy.units import ConfigError


def test_defaults_work_without_a_file() -> None:
    config = load(None, environ={})
    assert config.listen == DEFAULT_LISTEN
    assert config.data_dir == Path("/var/lib/satellite")
    assert config.push is False
    assert config.host_port == ("0.0.0.0", 8585)


def test_file_then_environment(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[server]\nlisten = "127.0.0.1:9000"\n[storage]\npath = "/tmp/x"\nmax_bytes = "2GiB"\n'
        "[registry]\npush = true\n"
        '[[upstream]]\nname = "docker.io"\nurl = "https://registry-1.docker.io/"\ndefault = true\n'
    )
    config = load(path, environ={"SATELLITE_REGISTRY_PUSH": "false"})
    assert config.listen == "127.0.0.1:9000"
    assert config.max_bytes == 2 * 1024**3
    assert config.push is False  # environment wins
    assert config.upstreams[0].url == "https://registry-1.docker.io"
    assert config.upstreams[0].default


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[server]\nlisten = 'nope'\n", "server.listen"),
        ("[server]\nport = 1\n", "server.port"),
        ("[storage]\nmax_bytes = 'lots'\n", "storage.max_bytes"),
        ("[registry]\npush = 'maybe'\n", "registry.push"),
        ("[bogus]\n", "bogus"),
        ("[[upstream]]\nname = 'a'\nurl = 'ftp://x'\n", "upstream[0].url"),
        ("[[upstream]]\nurl = 'http://x'\n", "upstream[0].name"),
        ("[log]\nlevel = 'loud'\n", "log.level"),
        ("[log]\naccess = 'sometimes'\n", "log.access"),
        ("[log]\nformat = 'xml'\n", "log.format"),
        ("[registry]\nstale_after = -1\n", "registry.stale_after"),
        ("[registry]\ntag_timeout = 0\n", "registry.tag_timeout"),
        ("[server]\nbody_min_rate = 'fast'\n", "server.body_min_rate"),
        ("[server]\nbody_rate_window = 0\n", "server.body_rate_window"),
        ("[server]\nbody_timeout = 'nan'\n", "server.body_timeout"),
        (
            "[[upstream]]\nname = 'a'\nurl = 'https://x'\nca_file = '/nonexistent/ca.pem'\n",
            "upstream[0].ca_file",
        ),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        load(path, environ={})


def test_body_deadline_stale_after_and_access_log_keys(tmp_path: Path) -> None:
    defaults = load(None, environ={})
    assert (defaults.body_min_rate, defaults.body_rate_window, defaults.body_timeout) == (
        1024,
        30.0,
        0.0,
    )
    assert defaults.stale_after == 0.25
    assert (defaults.log_access, defaults.log_format) == (True, "plain")
    path = tmp_path / "c.toml"
    path.write_text(
        '[server]\nbody_min_rate = "4KiB"\nbody_rate_window = 10\nbody_timeout = 600\n'
        "[registry]\nstale_after = 0\n"
        '[log]\naccess = false\nformat = "json"\n'
    )
    config = load(path, environ={"SATELLITE_LOG_ACCESS": "true"})
    assert (config.body_min_rate, config.body_rate_window, config.body_timeout) == (
        4096,
        10.0,
        600.0,
    )
    assert config.stale_after == 0.0  # 0: a cached tag always waits for the upstream
    assert (config.log_access, config.log_format) == (True, "json")


def test_sizes() -> None:
    assert parse_size("50GiB", "k") == 50 * 1024**3
    assert parse_size("1.5 MB", "k") == 1_500_000
    assert parse_size(123, "k") == 123


def test_cli_refuses_bad_config_at_start(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[storage]\nmax_bytes = -3\n")
    result = subprocess.run(
        [sys.executable, "-m", "appliance.cli", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "storage.max_bytes" in result.stderr
