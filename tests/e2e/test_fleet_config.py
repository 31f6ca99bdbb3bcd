"""The signed config applies at runtime: an upstream that Ground Control names is served
through with the credentials Ground Control hands out, and rotated credentials are
fetched again after the upstream refuses the old ones, without a restart."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.fleet import Fleet, run_satellite_cli, status, wait_until
from tests.support.images import GeneratedLayout
from tests.support.satellite import SatelliteProcess
from tests.support.skopeo import Skopeo, SkopeoError
from tests.support.upstream import UpstreamRegistry


def pulls(skopeo: Skopeo, ref: str) -> bool:
    try:
        skopeo.inspect_raw(ref)
    except SkopeoError:
        return False
    return True


@contextlib.contextmanager
def central_registry(
    fleet: Fleet, tmp_path: Path, image_layout: GeneratedLayout, skopeo: Skopeo
) -> Iterator[UpstreamRegistry]:
    """A registry behind a password holding library/app:v1 and :v2, whose credential
    Ground Control hands out."""
    central = UpstreamRegistry(tmp_path / "central", auth=("robot", "first")).start()
    try:
        for tag in ("v1", "v2"):
            skopeo.copy(
                image_layout.oci("app:v1"),
                f"docker://{central.host}/library/app:{tag}",
                dest_creds=("robot", "first"),
            )
        set_credential(fleet, central, "first")
        yield central
    finally:
        central.stop()


def set_credential(fleet: Fleet, central: UpstreamRegistry, password: str) -> None:
    fleet.api(
        "PUT",
        f"/api/v1/upstream-credentials/{central.host}",
        {"username": "robot", "password": password},
    )


def rotate_password(fleet: Fleet, central: UpstreamRegistry) -> None:
    """The registry's password changes, and Ground Control's credential with it."""
    central.stop()
    central.auth = ("robot", "second")
    central.start()
    set_credential(fleet, central, "second")


@pytest.mark.parametrize("workers", [1, 2], ids=["1-worker", "2-workers"])
def test_signed_upstream_and_rotated_credentials(
    fleet: Fleet, tmp_path: Path, image_layout: GeneratedLayout, skopeo: Skopeo, workers: int
) -> None:
    """With two serving processes the agent runs in one; the other applies the signed
    upstream and the credentials it stored, so that pulls through either work."""
    with central_registry(fleet, tmp_path, image_layout, skopeo) as central:
        upstreams = [{"name": central.host, "url": central.url, "default": True}]
        token = fleet.create_satellite("shop-c", "shops", {"upstreams": upstreams})
        sat = fleet.satellite("shop-c", push=False, workers=workers)
        fleet.register(sat, token)
        with sat:
            current = wait_until(lambda: status(sat), what="status")
            names = [u["name"] for u in current["config"]["upstreams"]["value"]]
            assert names == [central.host]
            assert current["config"]["upstreams"]["value"][0]["source"] == "signed"
            # served through the signed upstream with Ground Control's credential, by
            # every process (each skopeo run comes on connections of its own)
            wait_until(
                lambda: all(pulls(skopeo, f"docker://{sat.host}/library/app:v1") for _ in range(6)),
                timeout=30,
                interval=0.5,
                what="pulls through the signed upstream",
            )
            rotate_password(fleet, central)
            # the first pull after the rotation is refused upstream (401), which makes the
            # satellite fetch its credentials again; a later pull goes through
            wait_until(
                lambda: pulls(skopeo, f"docker://{sat.host}/library/app:v2"),
                timeout=60,
                interval=1.0,
                what="a pull with the rotated credential",
            )
            stored = (sat.data_dir / "fleet" / "upstreams.json").read_text()
            assert "second" in stored
            assert oct((sat.data_dir / "fleet" / "upstreams.json").stat().st_mode & 0o777) == (
                "0o600"
            )
        log = sat.log_path.read_text()
        assert "refused our credentials" in log


def test_a_local_budget_wins_over_the_signed_one(fleet: Fleet) -> None:
    token = fleet.create_satellite("shop-d", "shops", {"cache_max_bytes": "1GiB"})
    sat = fleet.satellite(
        "shop-d", extra_config='[storage]\nmax_bytes = "2GiB"\n[groundcontrol]\nlong_poll = false'
    )
    fleet.register(sat, token)
    with sat:
        config = wait_until(lambda: status(sat)["config"], what="status")
        assert config["cache_max_bytes"] == {"value": 2 * 2**30, "source": "local"}
        assert config["checkin_interval"]["source"] == "signed"
        assert status(sat)["groundcontrol"]["long_poll"] is False
    out = run_satellite_cli("status", "--data-dir", str(sat.data_dir)).stdout
    assert "state:          version 1" in out


MANIFESTS = {
    "Accept": ", ".join(
        [
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.oci.image.index.v1+json",
            "application/vnd.docker.distribution.manifest.v2+json",
            "application/vnd.docker.distribution.manifest.list.v2+json",
        ]
    )
}


def _served_by(sat: SatelliteProcess, client: httpx.Client, path: str) -> list[int]:
    """The pids of the serving processes whose cache answered this GET of `path`."""
    before = sat.counter_by_pid("satellite_cache_hits")
    assert client.get(path).status_code == 200
    after = sat.counter_by_pid("satellite_cache_hits")
    return [pid for pid, count in after.items() if count != before.get(pid, 0.0)]


def test_a_refusal_seen_by_a_worker_without_the_agent_refreshes_the_credentials(
    fleet: Fleet, tmp_path: Path, image_layout: GeneratedLayout, skopeo: Skopeo
) -> None:
    """Only the primary process runs the fleet agent: an upstream's 401 that another
    serving process sees must still make the agent fetch the rotated credentials."""
    with central_registry(fleet, tmp_path, image_layout, skopeo) as central:
        upstreams = [{"name": central.host, "url": central.url, "default": True}]
        token = fleet.create_satellite("shop-e", "shops", {"upstreams": upstreams})
        sat = fleet.satellite("shop-e", push=False, workers=2)
        fleet.register(sat, token)
        with sat:
            # the agent's process is the only one with the check-in counters
            agent_pid = wait_until(
                lambda: list(sat.counter_by_pid("satellite_checkins_sent")), what="the agent"
            )
            assert len(agent_pid) == 1
            digest = wait_until(
                lambda: httpx.get(
                    f"{sat.url}/v2/library/app/manifests/v1", headers=MANIFESTS, timeout=30
                ).headers.get("docker-content-digest"),
                timeout=30,
                what="the first pull through the signed upstream",
            )
            # a keep-alive connection that the other process serves
            worker: httpx.Client | None = None
            for _ in range(40):
                client = httpx.Client(base_url=sat.url, headers=MANIFESTS, timeout=30)
                served = _served_by(sat, client, f"/v2/library/app/manifests/{digest}")
                assert len(served) == 1
                if served != agent_pid:
                    worker = client
                    break
                client.close()
            assert worker is not None, "every connection went to the agent's process"
            try:
                rotate_password(fleet, central)
                assert worker.get("/v2/library/app/manifests/v2").status_code != 200
                wait_until(
                    lambda: worker.get("/v2/library/app/manifests/v2").status_code == 200,
                    timeout=60,
                    interval=1.0,
                    what="a pull with the rotated credential through the other process",
                )
                # the refusals were the other process's alone: its signal woke the agent
                errors = sat.counter_by_pid("satellite_upstream_errors")
                assert errors.get(agent_pid[0], 0.0) == 0.0
                assert sum(errors.values()) >= 1
            finally:
                worker.close()
        assert "the agent's process asks again" in sat.log_path.read_text()
