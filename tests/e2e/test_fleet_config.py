"""The signed config applies at runtime: an upstream that Ground Control names is served
through with the credentials Ground Control hands out, and rotated credentials are
fetched again after the upstream refuses the old ones, without a restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.fleet import Fleet, run_satellite_cli, status, wait_until
from tests.support.images import GeneratedLayout
from tests.support.skopeo import Skopeo, SkopeoError
from tests.support.upstream import UpstreamRegistry


def pulls(skopeo: Skopeo, ref: str) -> bool:
    try:
        skopeo.inspect_raw(ref)
    except SkopeoError:
        return False
    return True


@pytest.mark.parametrize("workers", [1, 2], ids=["1-worker", "2-workers"])
def test_signed_upstream_and_rotated_credentials(
    fleet: Fleet, tmp_path: Path, image_layout: GeneratedLayout, skopeo: Skopeo, workers: int
) -> None:
    """With two serving processes the agent runs in one; the other applies the signed
    upstream and the credentials it stored, so that pulls through either work."""
    central = UpstreamRegistry(tmp_path / "central", auth=("robot", "first")).start()
    try:
        skopeo.copy(
            image_layout.oci("app:v1"),
            f"docker://{central.host}/library/app:v1",
            dest_creds=("robot", "first"),
        )
        skopeo.copy(
            image_layout.oci("app:v1"),
            f"docker://{central.host}/library/app:v2",
            dest_creds=("robot", "first"),
        )
        fleet.api(
            "PUT",
            f"/api/v1/upstream-credentials/{central.host}",
            {"username": "robot", "password": "first"},
        )
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
            # the registry's password is rotated, and Ground Control's with it
            central.stop()
            central.auth = ("robot", "second")
            central.start()
            fleet.api(
                "PUT",
                f"/api/v1/upstream-credentials/{central.host}",
                {"username": "robot", "password": "second"},
            )
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
    finally:
        central.stop()


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
