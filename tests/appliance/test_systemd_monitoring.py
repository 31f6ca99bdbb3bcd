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
    import re

    from appliance.fleetmetrics import FleetMetrics
    from registry_proxy.metrics import Metrics

    rules = (PROMETHEUS / "satellite-alerts.yml").read_text()
    used = set(re.findall(r"satellite_[a-z_]+", rules))
    metrics = Metrics()
    FleetMetrics(metrics.registry)  # what a registered satellite adds
    metrics.upstream_online.labels("up").set(1)
    exported = set(re.findall(r"^(satellite_[a-z_]+)", metrics.render().decode(), re.M))
    assert used >= {"satellite_state_expired", "satellite_outbox_depth"}
    assert used <= exported, used - exported
