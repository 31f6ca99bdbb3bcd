"""The Prometheus scrape config and alert rules of docs/install.md, checked by Debian's
promtool: the syntax, and (promtool test rules) that each alert fires on the series that
should raise it and stays quiet on a healthy satellite."""

from __future__ import annotations

import subprocess

import pytest

from tests.support.satellite import REPO_ROOT
from tests.support.upstream import require_tool

PROMETHEUS = REPO_ROOT / "docs" / "prometheus"


@pytest.mark.parametrize(
    "args",
    [
        ("check", "rules", "satellite-alerts.yml"),
        ("test", "rules", "satellite-alerts.test.yml"),
        ("check", "config", "prometheus.yml"),
    ],
)
def test_promtool_accepts_the_rules_and_config(args: tuple[str, ...]) -> None:
    promtool = require_tool("promtool", "prometheus")
    done = subprocess.run(
        [promtool, *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr


def test_the_rules_use_metrics_the_satellite_exports() -> None:
    rules = (PROMETHEUS / "satellite-alerts.yml").read_text()
    for metric in ("satellite_upstream_online", "satellite_cache_bytes_used",
                   "satellite_cache_bytes_max"):  # fmt: skip
        assert metric in rules
        assert metric in (REPO_ROOT / "registry_proxy" / "metrics.py").read_text()
