"""The satellite's upstream names and URLs: registry_proxy.names' grammar, checked whole."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from appliance.config import load, parse_listen, parse_upstream_flag
from registry_proxy.units import ConfigError

AROUND = ["{}\n", "{}\r", "{}\r\n", "{} ", " {}", "\n{}"]


def write_upstream(tmp_path: Path, name: str, url: str) -> Path:
    path = tmp_path / "c.toml"
    # TOML basic strings with escapes, so that the control characters reach the parser
    escaped = [v.replace("\r", "\\r").replace("\n", "\\n") for v in (name, url)]
    path.write_text(f'[[upstream]]\nname = "{escaped[0]}"\nurl = "{escaped[1]}"\n')
    return path


@pytest.mark.parametrize(
    ("name", "url"),
    [
        ("docker.io", "https://registry-1.docker.io/"),
        ("registry.local:5000", "http://127.0.0.1:5000"),
        ("[::1]:5000", "http://[::1]:5000"),
    ],
)
def test_registry_hosts_and_urls_are_accepted(tmp_path: Path, name: str, url: str) -> None:
    config = load(write_upstream(tmp_path, name, url), environ={})
    assert (config.upstreams[0].name, config.upstreams[0].url) == (name, url.rstrip("/"))
    flag = parse_upstream_flag(f"{name}={url}")
    assert (flag.name, flag.url) == (name, url.rstrip("/"))


@pytest.mark.parametrize("around", AROUND)
def test_anything_around_a_name_or_url_is_refused(tmp_path: Path, around: str) -> None:
    name, url = "docker.io", "https://registry-1.docker.io"
    for bad_name, bad_url, key in [
        (around.format(name), url, "upstream[0].name"),
        (name, around.format(url), "upstream[0].url"),
    ]:
        with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
            load(write_upstream(tmp_path, bad_name, bad_url), environ={})
        with pytest.raises(ConfigError, match="--upstream"):
            parse_upstream_flag(f"{bad_name}={bad_url}")


@pytest.mark.parametrize(
    ("name", "url", "key"),
    [
        ("docker.io/library", "https://r.example", "name"),
        ("-docker.io", "https://r.example", "name"),
        ("Docker Hub", "https://r.example", "name"),
        ("r.example", "https://r.example/v2", "url"),
        ("r.example", "https://user:secret@r.example", "url"),
        ("r.example", "ftp://r.example", "url"),
    ],
)
def test_what_is_not_a_registry_host_or_url_is_refused(
    tmp_path: Path, name: str, url: str, key: str
) -> None:
    with pytest.raises(ConfigError, match=rf"upstream\[0\]\.{key}"):
        load(write_upstream(tmp_path, name, url), environ={})


def test_the_cli_refuses_an_upstream_flag_with_a_newline(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "appliance.cli",
            "run",
            "--data-dir",
            str(tmp_path),
            "--upstream",
            "docker.io\n=https://registry-1.docker.io",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "--upstream: expected a registry host" in result.stderr


def test_a_listen_port_in_other_digits_is_a_config_error() -> None:
    for bad in ("0.0.0.0:²", "0.0.0.0:٣٣", "0.0.0.0:" + "9" * 400, "0.0.0.0:80\n"):
        with pytest.raises(ConfigError, match=r"server\.listen"):
            parse_listen(bad, "server.listen")
    assert parse_listen("[::1]:8585", "server.listen") == ("::1", 8585)
