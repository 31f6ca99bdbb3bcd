"""Ground Control unreachable, the state registry up: the satellite takes its state from
the state artifact, verified exactly like an answer from the API."""

from __future__ import annotations

from pathlib import Path

from tests.support.fleet import Fleet, run_satellite_cli, state_version, status, wait_until
from tests.support.staterelay import StateRelay
from tests.support.upstream import UpstreamRegistry


def test_the_state_arrives_through_the_state_registry(tmp_path: Path) -> None:
    central = UpstreamRegistry(tmp_path / "central").start()
    fleet = Fleet(
        tmp_path,
        config=f'[registry]\nurl = "{central.url}"\n[state_registry]\nurl = "{central.url}"\n',
    ).start()
    try:
        fleet.create_group("shops")
        token = fleet.create_satellite("shop-f", "shops", {"checkin_interval": "1s"})
        sat = fleet.satellite("shop-f", push=False)
        relay = StateRelay(fleet.url).__enter__()
        try:
            run_satellite_cli(
                "register", "--ground-control", relay.url, "--token", token,
                "--data-dir", str(sat.data_dir),
            )  # fmt: skip
            with sat:
                wait_until(lambda: status(sat)["running"], what="daemon")
                first = state_version(sat)
                # Ground Control is cut off from the satellite (the relay goes away) and
                # publishes a new version, which it also pushes to the state registry
                relay.__exit__(None, None, None)
                fleet.api("POST", "/api/v1/satellites/shop-f/publish")
                wait_until(
                    lambda: (
                        (fleet.api("GET", "/api/v1/status")["state_registry"] or {}).get("pending")
                        == 0
                    ),
                    what="the artifact pushed",
                )
                wait_until(
                    lambda: state_version(sat) > first, timeout=60, what="the fallback state"
                )
                current = status(sat)
                assert current["state_source"] == "state-registry"
                assert current["groundcontrol"]["reachable"] is False
                assert current["last_refusal"] is None
        finally:
            relay.__exit__(None, None, None)
    finally:
        fleet.stop()
        central.stop()
