"""Replication against real parts: docker-registry as the central registry, Ground
Control and the satellite as processes, skopeo as the client.

A state of three images, two sharing layers and one an index of four platforms of which
the group keeps two: the satellite ends up with exactly the blobs those need, each
fetched once from the central registry (counted in its access log), and with the central
registry stopped every image pulls from the satellite by tag, and the index by its
original digest, byte for byte, and the image's signature and SBOM (found through the
tag schemas, since docker-registry has no referrers API) answer from the satellite
alone. One image whose blob the central registry lost fails
alone, is reported with its reason, and converges once the blob is back."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.artifacts import attach, referrer_tag_names
from tests.support.containerd import Containerd, mirror_hosts_dir
from tests.support.fleet import Fleet, run_satellite_cli, status, wait_until
from tests.support.images import ImageRef, build_image, build_index
from tests.support.skopeo import Skopeo, SkopeoError
from tests.support.upstream import UpstreamRegistry

PLATFORMS = (("linux", "amd64"), ("linux", "arm64"), ("linux", "ppc64le"), ("linux", "s390x"))
KEPT = ("linux/amd64", "linux/arm64")


def images_by_status(sat: Any) -> dict[str, dict[str, Any]]:
    return {i["repository"]: i for i in status(sat)["images"]["list"]}


def pinned(data_dir: Path) -> set[str]:
    """The digests the state pinned in the satellite's store (read-only, beside it)."""
    with sqlite3.connect(f"file:{data_dir / 'metadata.db'}?mode=ro", uri=True) as db:
        return {row[0] for row in db.execute("SELECT digest FROM pins WHERE owner = 'state'")}


def left_out_digests(index: ImageRef) -> list[str]:
    return [
        d
        for c in index.manifests
        if c.platform is not None and "/".join(c.platform) not in KEPT
        for d in c.all_digests
    ]


def all_present(sat: Any, count: int) -> bool:
    images = images_by_status(sat)
    return len(images) == count and all(i["status"] == "present" for i in images.values())


@pytest.fixture
def central(tmp_path: Path) -> Any:
    registry = UpstreamRegistry(tmp_path / "central").start()
    yield registry
    registry.stop()


def push(skopeo: Skopeo, layout: Path, ref: ImageRef, central: UpstreamRegistry, name: str) -> None:
    assert ref.tag is not None
    skopeo.copy(
        f"oci:{layout}:{ref.tag}",
        f"docker://{central.host}/library/{name}",
        *(["--preserve-digests"] if ref.is_index else []),
        all_images=ref.is_index,
    )


def test_a_state_is_replicated_once_and_served_offline(
    tmp_path: Path,
    central: UpstreamRegistry,
    skopeo: Skopeo,
    containerd_factory: Callable[[], Containerd],
) -> None:
    layout = tmp_path / "layout"
    app = build_image(layout, "app:v1", layers=3, layer_size=48 * 1024, seed="shared")
    tool = build_image(layout, "tool:v1", layers=2, layer_size=48 * 1024, seed="shared")
    multi = build_index(layout, "multi:v1", PLATFORMS, layers=2, layer_size=16 * 1024, seed="m")
    assert set(tool.blob_digests[1:]) <= set(app.blob_digests)  # layers shared
    for ref, name in ((app, "app:v1"), (tool, "tool:v1"), (multi, "multi:v1")):
        push(skopeo, layout, ref, central, name)
    signed = attach(central, "library/app", app)  # a signature and an SBOM refer to app
    artifact_blobs = [signed[k] for k in ("signature_layer", "sbom_layer", "empty")]
    central_blobs = {
        d: httpx.get(f"{central.url}/v2/library/app/blobs/{d}", timeout=10).content
        for d in artifact_blobs
    }

    fleet = Fleet(tmp_path / "fleet", config=f'[registry]\nurl = "{central.url}"\n').start()
    try:
        fleet.create_group(
            "shops",
            [
                "library/app:v1",
                "library/tool:v1",
                {"reference": "library/multi:v1", "platforms": list(KEPT)},
            ],
        )
        token = fleet.create_satellite("shop-r", "shops")
        sat = fleet.satellite("shop-r", push=False)
        fleet.register(sat, token)
        before = central.blobs_served()
        with sat:
            wait_until(lambda: all_present(sat, 3), timeout=90, what="three images present")
            kept = [c for c in multi.manifests if c.platform and "/".join(c.platform) in KEPT]
            needed = set(app.blob_digests) | set(tool.blob_digests)
            needed |= set(artifact_blobs)
            for child in kept:
                needed |= set(child.blob_digests)
            served_bytes, served = (
                a - b for a, b in zip(central.blobs_served(), before, strict=True)
            )
            # every needed blob once, nothing for the platforms left out
            assert served == len(needed), (served, len(needed))
            sizes = sum(app.blob_file(d).stat().st_size for d in needed - set(artifact_blobs))
            assert served_bytes == sizes + sum(len(b) for b in central_blobs.values())

            host = sat.host
            pins = pinned(sat.data_dir)
            assert needed | {app.digest, tool.digest, multi.digest} <= pins
            assert {signed["signature"], signed["sbom"]} <= pins
            assert not pins & set(left_out_digests(multi))
            # the upstream's tag moves; the fleet's state has not: app:v1 stays the state's
            push(skopeo, layout, tool, central, "app:v1")
            assert skopeo.inspect_raw(f"docker://{host}/library/app:v1") == app.manifest_bytes()

            central.stop()  # offline from here on
            assert skopeo.inspect_raw(f"docker://{host}/library/app:v1") == app.manifest_bytes()
            assert skopeo.inspect_raw(f"docker://{host}/library/tool:v1") == tool.manifest_bytes()
            index = multi.manifest_bytes()
            assert skopeo.inspect_raw(f"docker://{host}/library/multi:v1") == index
            assert skopeo.inspect_raw(f"docker://{host}/library/multi@{multi.digest}") == index
            for child in kept:  # whole images, blobs verified by skopeo
                out = tmp_path / f"out-{child.digest[7:19]}"
                skopeo.copy(f"docker://{host}/library/multi@{child.digest}", f"oci:{out}:x")
            skopeo.copy(f"docker://{host}/library/app:v1", f"oci:{tmp_path / 'out-app'}:x")
            # the signature by cosign's tag, the SBOM through the satellite's referrers API
            schema_tag, sig_tag = referrer_tag_names(app.digest)
            sig = skopeo.inspect_raw(f"docker://{host}/library/app:{sig_tag}")
            assert "sha256:" + hashlib.sha256(sig).hexdigest() == signed["signature"]
            sig_layer = json.loads(sig)["layers"][0]["digest"]
            blob = httpx.get(f"http://{host}/v2/library/app/blobs/{sig_layer}", timeout=10)
            assert blob.status_code == 200 and blob.content == central_blobs[sig_layer]
            listing = httpx.get(f"http://{host}/v2/library/app/referrers/{app.digest}", timeout=10)
            assert listing.status_code == 200, listing.text
            assert [m["digest"] for m in listing.json()["manifests"]] == [signed["sbom"]]
            assert skopeo.inspect_raw(f"docker://{host}/library/app:{schema_tag}")
            # a site runtime through a hosts.toml mirror: by tag and by the index's digest
            hosts = mirror_hosts_dir(tmp_path, host)
            runtime = containerd_factory()
            runtime.pull("docker.io/library/multi:v1", hosts)
            assert runtime.image_digest("docker.io/library/multi:v1") == multi.digest
            runtime.pull(f"docker.io/library/multi@{multi.digest}", hosts)
            runtime.pull("docker.io/library/app:v1", hosts)
            assert runtime.image_digest("docker.io/library/app:v1") == app.digest
            left_out = next(c for c in multi.manifests if c.platform == ("linux", "s390x"))
            with pytest.raises(SkopeoError):
                skopeo.inspect_raw(f"docker://{host}/library/multi@{left_out.digest}")
            # a platform left out is not known here: 404 MANIFEST_UNKNOWN, never 5xx
            answer = httpx.get(
                f"http://{host}/v2/library/multi/manifests/{left_out.digest}", timeout=10
            )
            assert answer.status_code == 404, answer.text
            assert answer.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"

            # a group change drops tool: what only tool needed is unpinned, the rest stays
            central.start()  # Ground Control resolves what it publishes
            fleet.api("PUT", "/api/v1/groups/shops", {"images": [f"library/app@{app.digest}"]})
            only_tool = {tool.digest, tool.config_digest} - set(app.all_digests)
            wait_until(
                lambda: not (pinned(sat.data_dir) & only_tool), timeout=60, what="tool unpinned"
            )
            assert set(app.all_digests) <= pinned(sat.data_dir)
            # satellite gc frees what no state needs now; what the state pins stays
            dry = json.loads(
                run_satellite_cli(
                    "gc", "--dry-run", "--json", "--data-dir", str(sat.data_dir)
                ).stdout
            )
            assert only_tool <= set(dry["digests"]) and not set(dry["digests"]) & set(
                app.all_digests
            )
            done = json.loads(
                run_satellite_cli("gc", "--json", "--data-dir", str(sat.data_dir)).stdout
            )
            assert set(done["digests"]) == set(dry["digests"]) and done["bytes"] > 0
            again = json.loads(
                run_satellite_cli("gc", "--json", "--data-dir", str(sat.data_dir)).stdout
            )
            assert again["blobs"] == 0
            ref = f"docker://{host}/library/app@{app.digest}"
            assert skopeo.inspect_raw(ref) == app.manifest_bytes()
            with sqlite3.connect(f"file:{sat.data_dir / 'metadata.db'}?mode=ro", uri=True) as db:
                stored = {row[0] for row in db.execute("SELECT digest FROM blobs")}
            assert not stored & only_tool and set(app.all_digests) <= stored
    finally:
        fleet.stop()


def test_one_failing_image_does_not_hold_up_the_others(
    tmp_path: Path, central: UpstreamRegistry, skopeo: Skopeo
) -> None:
    layout = tmp_path / "layout"
    good = build_image(layout, "good:v1", layers=2, layer_size=16 * 1024, seed="good")
    bad = build_image(layout, "bad:v1", layers=2, layer_size=16 * 1024, seed="bad")
    push(skopeo, layout, good, central, "good:v1")
    push(skopeo, layout, bad, central, "bad:v1")
    # the central registry loses one of bad's layers (its storage, not its index)
    lost = bad.blob_digests[-1].split(":")[1]
    data = next(central.storage.rglob(f"blobs/sha256/{lost[:2]}/{lost}/data"))
    kept_aside = tmp_path / "kept-aside"
    shutil.move(data, kept_aside)

    fleet = Fleet(tmp_path / "fleet", config=f'[registry]\nurl = "{central.url}"\n').start()
    try:
        fleet.create_group("shops", ["library/good:v1", "library/bad:v1"])
        token = fleet.create_satellite("shop-f", "shops")
        sat = fleet.satellite("shop-f", push=False)
        fleet.register(sat, token)
        with sat:

            def settled() -> dict[str, dict[str, Any]] | None:
                images = images_by_status(sat)
                if images.get("library/bad", {}).get("status") != "failed":
                    return None
                return images if images.get("library/good", {}).get("status") == "present" else None

            images = wait_until(settled, timeout=90, what="good present, bad failed")
            assert images["library/bad"]["error"], images
            # sync's table says which failed and why; its exit status says not all are here
            done = run_satellite_cli("sync", "--now", "--data-dir", str(sat.data_dir), check=False)
            assert done.returncode == 1, done
            assert re.search(r"library/bad@sha256:\w+\s+failed\s+\S", done.stdout), done.stdout
            assert re.search(r"library/good@sha256:\w+\s+present", done.stdout), done.stdout

            # reported to Ground Control: an image_status event and the report's images
            def reported() -> bool:
                for row in fleet.checkins("shop-f"):
                    report = row["report"]
                    found = [
                        i
                        for e in report.get("events", [])
                        if e.get("type") == "image_status"
                        for i in e.get("images", [])
                    ] + list(report.get("images", []))
                    if any(
                        i["repository"] == "library/bad" and i["status"] == "failed" for i in found
                    ):
                        return True
                return False

            wait_until(reported, timeout=60, what="the failure reported")
            shutil.move(kept_aside, data)  # the blob is back: retried with backoff
            wait_until(lambda: all_present(sat, 2), timeout=120, what="bad converges")
            assert skopeo.inspect_raw(f"docker://{sat.host}/library/bad:v1") == bad.manifest_bytes()
    finally:
        fleet.stop()


def metric(sat: Any, name: str) -> float:
    text = httpx.get(f"{sat.url}/metrics", timeout=30).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if re.match(rf"^{name}(\{{.*\}})? ", line)
    )


def test_the_signed_bandwidth_cap_paces_replication(
    tmp_path: Path, central: UpstreamRegistry, skopeo: Skopeo
) -> None:
    cap = 512 * 1024
    layout = tmp_path / "layout"
    big = build_image(layout, "big:v1", layers=2, layer_size=768 * 1024, seed="capped")
    push(skopeo, layout, big, central, "big:v1")
    fleet = Fleet(tmp_path / "fleet", config=f'[registry]\nurl = "{central.url}"\n').start()
    try:
        fleet.create_group("shops", ["library/big:v1"])
        token = fleet.create_satellite("shop-b", "shops", {"bandwidth_bytes_per_second": cap})
        sat = fleet.satellite("shop-b", push=False)
        fleet.register(sat, token)
        with sat:
            # sync waits for replication to settle: a progress line, then the table
            done = run_satellite_cli("sync", "--now", "--data-dir", str(sat.data_dir))
            assert "MB/s" in done.stderr and "1/1 images" in done.stderr, done.stderr
            assert re.search(r"library/big@sha256:\w+\s+present", done.stdout), done.stdout
            assert all_present(sat, 1)
            current = status(sat)
            assert current["config"]["bandwidth_bytes_per_second"] == {
                "value": cap,
                "source": "signed",
            }
            replication = current["replication"]
            fetched = replication["bytes_fetched"]
            assert fetched == sum(big.blob_file(d).stat().st_size for d in big.blob_digests)
            assert replication["bandwidth_bytes_per_second"] == cap
            assert metric(sat, "satellite_bandwidth_cap_bytes_per_second") == cap
            assert metric(sat, "satellite_replicated_bytes_total") == fetched
            assert metric(sat, "satellite_replication_images") == 1
            # every byte paid for: the passes cannot have taken less than the cap allows
            # (less the bucket's burst, at most one 64 KiB piece)
            spent = metric(sat, "satellite_replication_pass_seconds_sum")
            assert spent >= (fetched - 64 * 1024) / cap, (spent, fetched)
            assert replication["bandwidth_waited_seconds"] > 0
            text = run_satellite_cli("status", "--data-dir", str(sat.data_dir)).stdout
            assert f"cap {cap} bytes/s" in text and "replication:" in text
    finally:
        fleet.stop()


_BLOB_ANSWER = re.compile(r'"GET /v2/\S+/blobs/(sha256:[0-9a-f]{64}) HTTP/[\d.]+" (200|206) (\d+) ')


def test_killed_ten_times_mid_replication_it_converges_and_fetches_no_blob_twice(
    tmp_path: Path, central: UpstreamRegistry, skopeo: Skopeo
) -> None:
    layout = tmp_path / "layout"
    # blobs of several of the transfer's 1 MiB reads, so that a kill lands between two
    image = build_image(layout, "kept:v1", layers=2, layer_size=4 * 1024 * 1024, seed="kill")
    push(skopeo, layout, image, central, "kept:v1")
    fleet = Fleet(tmp_path / "fleet", config=f'[registry]\nurl = "{central.url}"\n').start()
    try:
        fleet.create_group("shops", ["library/kept:v1"])
        # capped, so that each kill finds a transfer under way
        config = {"bandwidth_bytes_per_second": 1024 * 1024}
        token = fleet.create_satellite("shop-k", "shops", config)
        sat = fleet.satellite("shop-k", push=False)
        fleet.register(sat, token)
        for kill in range(10):
            sat.start()
            # a second or so into the pass: after startup, mid-transfer
            wait_until(
                lambda: (
                    (status(sat).get("replication") or {}).get("running") or all_present(sat, 1)
                ),
                timeout=60,
                what="a pass under way",
            )
            time.sleep(0.3 + 0.1 * kill)
            sat.kill9()
        with sat:
            wait_until(lambda: all_present(sat, 1), timeout=180, what="converged")
            answers = _BLOB_ANSWER.findall(central.log_path.read_text(errors="replace"))
            for digest in image.blob_digests:
                # asked for from its start once; after each kill, from the bytes kept
                codes = [code for d, code, _ in answers if d == digest]
                assert codes.count("200") == 1, (digest, codes)
            # the kills cut transfers, and they went on from the bytes kept (Range)
            assert any(code == "206" for _, code, _ in answers), answers
        done = run_satellite_cli("verify", "--data-dir", str(sat.data_dir))
        assert done.returncode == 0, done.stdout + done.stderr
    finally:
        fleet.stop()
