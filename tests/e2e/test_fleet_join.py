"""A satellite joins its fleet: `satellite register` and `satellite run` against a real
`groundcontrol serve`, each a process on loopback."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import httpx

from tests.support.fleet import Fleet, run_satellite_cli, state_version, status, wait_until
from tests.support.net import free_port


def identity_files(data_dir: Path) -> dict[str, int]:
    fleet_dir = (data_dir / "fleet").resolve()
    return {p.name: p.stat().st_mode & 0o777 for p in fleet_dir.iterdir()}


def test_register_then_follow_a_group_change(fleet: Fleet) -> None:
    token = fleet.create_satellite("shop-1", "shops", {"checkin_interval": "1s"})
    sat = fleet.satellite("shop-1")
    out = fleet.register(sat, token)
    assert "registered as shop-1" in out
    modes = identity_files(sat.data_dir)
    assert modes["device.pem"] == modes["credential"] == modes["upstreams.json"] == 0o600
    assert modes["identity.json"] == 0o600
    assert (sat.data_dir / "fleet").resolve().stat().st_mode & 0o777 == 0o700
    # offline status reads the data dir alone
    before = status(sat)
    assert before["running"] is False and before["state"]["version"] == 1
    with sat:
        wait_until(lambda: status(sat)["running"], what="admin socket")
        assert oct(os.stat(sat.data_dir / "admin.sock").st_mode & 0o777) == "0o600"
        # a change publishes version 2; the open long-poll brings it within seconds
        fleet.api("PATCH", "/api/v1/satellites/shop-1", {"config": {"checkin_interval": "2s"}})
        wait_until(lambda: state_version(sat) == 2, timeout=10, what="version 2 followed")
        done = run_satellite_cli("sync", "--now", "--data-dir", str(sat.data_dir))
        assert done.stdout.startswith("current: state version 2"), done.stdout
        current = status(sat)
        assert current["state"]["version"] == 2
        assert current["config"]["checkin_interval"] == {"value": 2, "source": "signed"}
        assert current["groundcontrol"]["reachable"] is True
        assert current["groundcontrol"]["long_poll"] is True  # the answer said X-State-Wait
        # the acceptance is reported: Ground Control sees the applied version
        wait_until(
            lambda: fleet.api("GET", "/api/v1/satellites/shop-1")["applied_version"] == 2,
            what="applied version 2 at Ground Control",
        )
        events = [
            event["type"]
            for row in fleet.checkins("shop-1")
            for event in row["report"].get("events", [])
        ]
        assert "state_accepted" in events
        metrics = httpx.get(f"{sat.url}/metrics").text
        assert "satellite_state_version 2.0" in metrics
        assert "satellite_state_expired 0.0" in metrics
    # persisted before it was acted on: version 2 survives the restart, offline too
    assert state_version(sat) == 2


def test_register_failures_leave_no_identity(fleet: Fleet, tmp_path: Path) -> None:
    token = fleet.create_satellite("shop-2", "shops")
    data = tmp_path / "s2"

    def register(*args: str) -> subprocess.CompletedProcess[str]:
        return run_satellite_cli("register", "--data-dir", str(data), *args, check=False)

    # Ground Control down (nothing listens on that port)
    down = register("--ground-control", f"http://127.0.0.1:{free_port()}", "--token", token)
    assert down.returncode == 1 and "registration refused" in down.stderr
    assert len(down.stderr.strip().splitlines()) == 1, down.stderr
    # a wrong join token
    wrong = register("--ground-control", fleet.url, "--token", token[:-4] + "AAAA")
    assert wrong.returncode == 1 and "registration refused" in wrong.stderr
    # a root that does not carry the pinned keyid: refused, and the token is spent
    pinned = register("--ground-control", fleet.url, "--token", token, "--root-keyid", "ab" * 32)
    assert pinned.returncode == 1 and "pinned root key" in pinned.stderr
    assert not (data / "fleet").exists()
    spent = register("--ground-control", fleet.url, "--token", token)
    assert spent.returncode == 1 and "registration refused" in spent.stderr
    # the right pin is accepted
    keys = json.loads(fleet.cli("keys", "show", "--data-dir", str(fleet.data)))
    root_keyid = next(iter(keys["root_keys"]))
    good = register(
        "--ground-control",
        fleet.url,
        "--token",
        fleet.join_token("shop-2"),
        "--root-keyid",
        root_keyid,
    )
    assert good.returncode == 0, good.stderr
    first = (data / "fleet").resolve()
    # an existing identity is not overwritten without --force
    again = register("--ground-control", fleet.url, "--token", fleet.join_token("shop-2"))
    assert again.returncode == 1 and "--force" in again.stderr
    assert (data / "fleet").resolve() == first
    forced = register(
        "--ground-control", fleet.url, "--token", fleet.join_token("shop-2"), "--force"
    )
    assert forced.returncode == 0, forced.stderr
    assert (data / "fleet").resolve() != first and not first.exists()
    assert [p.name for p in (data / "fleet.d").iterdir()] == [(data / "fleet").resolve().name]


def test_checkins_survive_a_ground_control_outage_exactly_once(fleet: Fleet) -> None:
    token = fleet.create_satellite("shop-3", "shops", {"checkin_interval": "1s"})
    sat = fleet.satellite("shop-3")
    fleet.register(sat, token)
    with sat:
        wait_until(lambda: len(fleet.checkins("shop-3")) >= 2, what="first check-ins")
        fleet.stop()
        # heartbeats pile up in the outbox while Ground Control is down
        wait_until(lambda: status(sat)["outbox"]["depth"] >= 4, what="a queued backlog")
        assert status(sat)["groundcontrol"]["reachable"] is False
        fleet.start()
        wait_until(lambda: status(sat)["outbox"]["depth"] == 0, what="the outbox drained")
        seqs = fleet.seqs("shop-3")
        assert seqs == list(range(1, len(seqs) + 1)), seqs
        restored = [
            event
            for row in fleet.checkins("shop-3")
            for event in row["report"].get("events", [])
            if event["type"] == "link_restored"
        ]
        assert restored and restored[0]["down_seconds"] > 0
        offline = [row["report"]["offline_seconds"] for row in fleet.checkins("shop-3")]
        assert max(offline) > 0


def test_kill_9_while_checkins_are_queued_and_sent(fleet: Fleet) -> None:
    token = fleet.create_satellite("shop-4", "shops", {"checkin_interval": "1s"})
    sat = fleet.satellite("shop-4")
    fleet.register(sat, token)
    sat.start()
    try:
        for round_ in range(5):
            if round_ % 2:
                fleet.stop()  # some rounds die with a backlog, some while sending
            target = status(sat)["outbox"]["next_seq"] + 2
            wait_until(lambda t=target: status(sat)["outbox"]["next_seq"] >= t, what="check-ins")
            sat.kill9()
            if not fleet.gc.running:
                fleet.start()
            sat.start()
        wait_until(lambda: status(sat)["outbox"]["depth"] == 0, what="the outbox drained")
    finally:
        sat.stop()
    outbox = status(sat)["outbox"]  # read from the data dir of the stopped satellite
    seqs = fleet.seqs("shop-4")
    # every seq ever numbered arrived once, or still waits in the outbox; none is missing
    assert seqs == list(range(1, len(seqs) + 1)), seqs
    assert len(seqs) + outbox["depth"] == outbox["next_seq"] - 1, (seqs, outbox)
    assert outbox["dropped_heartbeats"] == outbox["dropped_events"] == 0
    assert run_satellite_cli("verify", "--data-dir", str(sat.data_dir)).returncode == 0


def test_sigterm_stops_the_agent_and_the_admin_socket(fleet: Fleet) -> None:
    token = fleet.create_satellite("shop-5", "shops")
    sat = fleet.satellite("shop-5")
    fleet.register(sat, token)
    sat.start()
    wait_until(lambda: status(sat)["running"], what="admin socket")
    assert sat.stop() == 0  # SIGTERM: the agent's loops end, the servers drain
    # the socket of the stopped daemon is left behind or removed, never answered
    assert status(sat)["running"] is False
