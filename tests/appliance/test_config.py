from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from appliance.config import DEFAULT_LISTEN, ConfigError, load, parse_size


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
