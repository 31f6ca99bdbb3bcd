"""USB bundles both ways, with real parts: `groundcontrol serve` whose central registry is
a docker-registry, `groundcontrol bundle export` writing an OCI layout that skopeo reads,
a satellite with no route to Ground Control or the registry importing it (stopped and
running), every tamper refused with nothing applied, and check-ins carried back."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from groundcontrol.contract import Envelope, StateDocument, generate_key, sign_state
from registry_proxy.digest import Digest
from registry_proxy.referrers import referrer_tags
from tests.support.artifacts import attach, sbom_by_digest
from tests.support.containerd import Containerd
from tests.support.fleet import Fleet, run_satellite_cli, state_version, status, wait_until
from tests.support.groundcontrol import groundcontrol_env
from tests.support.images import GeneratedLayout
from tests.support.satellite import REPO_ROOT, SatelliteProcess, satellite_command
from tests.support.skopeo import Skopeo
from tests.support.staterelay import StateRelay
from tests.support.upstream import UpstreamRegistry, require_tool


@dataclass
class Site:
    fleet: Fleet
    central: UpstreamRegistry
    sat: SatelliteProcess
    root: Path

    def export(self, name: str, output: Path, *extra: str) -> dict[str, Any]:
        out = self.fleet.cli(
            "bundle", "export", name, "--output", str(output), "--json",
            "--data-dir", str(self.fleet.data), "--config", str(self.root / "gc.toml"),
            *extra,
        )  # fmt: skip
        result: dict[str, Any] = json.loads(out)
        return result

    def bundle_import(self, bundle: Path, *, terminal: bool = False) -> tuple[int, str]:
        """Exit code, and stdout with the error lines of stderr (not its log lines); with
        ``terminal``, stderr is a terminal and all of it follows (the progress line)."""
        done = run_satellite_cli(
            "bundle",
            "import",
            str(bundle),
            "--data-dir",
            str(self.sat.data_dir),
            check=False,
            terminal=terminal,
        )
        if terminal:
            return done.returncode, done.stdout + done.stderr
        errors = [
            line for line in done.stderr.splitlines() if line.startswith(("satellite:", "  "))
        ]
        return done.returncode, done.stdout + "\n".join(errors)


def push(skopeo: Skopeo, layout: GeneratedLayout, tag: str, central: UpstreamRegistry) -> None:
    skopeo.copy(layout.oci(tag), f"docker://{central.host}/library/{tag}", all_images=True)


@pytest.fixture
def site(tmp_path: Path, image_layout: GeneratedLayout, skopeo: Skopeo) -> Iterator[Site]:
    """Ground Control with a central registry holding app:v1 and multi:v1; satellite
    "site-a" in group "shops" (app:v1), registered through a relay that is then closed,
    so the satellite has no route to Ground Control; and no upstream registry at all."""
    central = UpstreamRegistry(tmp_path / "central").start()
    push(skopeo, image_layout, "app:v1", central)
    push(skopeo, image_layout, "multi:v1", central)
    fleet = Fleet(tmp_path, config=f'[registry]\nurl = "{central.url}"\n').start()
    try:
        fleet.create_group("shops", [{"reference": "library/app:v1"}])
        token = fleet.create_satellite("site-a", "shops", {"checkin_interval": "1s"})
        fleet.create_satellite("site-b", "shops")
        sat = fleet.satellite("site-a", push=False)
        with StateRelay(fleet.url) as relay:
            run_satellite_cli(
                "register", "--ground-control", relay.url, "--token", token,
                "--data-dir", str(sat.data_dir),
            )  # fmt: skip
        # registration brought version 1: bundles carry version 2 on
        fleet.api("POST", "/api/v1/satellites/site-a/publish")
        yield Site(fleet, central, sat, tmp_path)
    finally:
        fleet.stop()
        central.stop()


def document(envelope: bytes) -> StateDocument:
    payload = Envelope.from_json(envelope, 1 << 20).payload
    return StateDocument.from_dict(json.loads(payload))


def pull(skopeo: Skopeo, sat: SatelliteProcess, ref: str, out: Path) -> str:
    skopeo.copy(f"docker://{sat.host}/{ref}", f"oci:{out}:x", all_images=True)
    return skopeo.inspect(f"oci:{out}:x")["Digest"]  # type: ignore[no-any-return]


def test_export_then_import_into_a_stopped_and_a_running_satellite(
    site: Site,
    skopeo: Skopeo,
    tmp_path: Path,
    image_layout: GeneratedLayout,
    containerd_factory: Callable[[], Containerd],
) -> None:
    bundle = tmp_path / "stick" / "bundle"
    first = site.export("site-a", bundle)
    assert first["images"] == 1 and first["blobs_written"] == 4  # config and 3 layers
    # a standard OCI layout: skopeo reads it and copies the image out
    assert (bundle / "oci-layout").is_file()
    skopeo.copy(f"oci:{bundle}:library/app:v1", f"docker://{site.central.host}/copied/app:v1")
    assert skopeo.inspect(f"docker://{site.central.host}/copied/app:v1")["Digest"] == (
        image_layout.app.digest
    )
    # an export run again copies nothing
    assert site.export("site-a", bundle)["blobs_written"] == 0
    version = first["state_version"]

    # the data dir of a stopped satellite
    code, out = site.bundle_import(bundle)
    assert code == 0 and out.startswith(f"applied: state version {version}"), out
    assert "4 blob(s) imported" in out
    code, out = site.bundle_import(bundle)  # idempotent
    assert code == 0 and out.startswith(f"current: state version {version}"), out
    assert "0 blob(s) imported" in out

    # a group change, and its bundle, before the central registry goes away: of the
    # index, only the platform the group keeps travels (the index's bytes intact)
    site.fleet.api(
        "PUT",
        "/api/v1/groups/shops",
        {
            "images": [
                {"reference": "library/app:v1"},
                {"reference": "library/multi:v1", "platforms": ["linux/amd64"]},
            ]
        },
    )
    second = tmp_path / "stick2"
    exported = site.export("site-a", second)
    assert exported["state_version"] > version
    children = {c.platform: c for c in image_layout.multi.manifests}
    in_bundle = {p.name for p in (second / "blobs" / "sha256").iterdir()}
    assert image_layout.multi.digest.split(":")[1] in in_bundle
    assert {d.split(":")[1] for d in children[("linux", "amd64")].all_digests} <= in_bundle
    arm64 = children[("linux", "arm64")]
    left_out = set(arm64.all_digests) - set(children[("linux", "amd64")].all_digests)
    assert left_out and not {d.split(":")[1] for d in left_out} & in_bundle
    site.central.stop()
    with site.sat:
        wait_until(lambda: status(site.sat)["running"], what="daemon")
        assert state_version(site.sat) == version
        # the state the stopped data dir accepted is reported as a connected one would be
        wait_until(
            lambda: [
                e
                for e in _outbox_events(site)
                if e.get("type") == "state_accepted"
                and e.get("version") == version
                and e.get("source") == "bundle"
            ],
            what="a state_accepted event for the bundle's state",
        )
        # replication finds everything present: with the registry gone, a fetch would fail
        wait_until(
            lambda: status(site.sat)["images"]["by_status"] == {"present": 1},
            what="the image present",
        )
        # the named image pulls from the satellite, which reaches neither Ground Control
        # nor the registry its signed config names
        assert pull(skopeo, site.sat, "library/app:v1", tmp_path / "pulled") == (
            image_layout.app.digest
        )
        # and a runtime pulls it: containerd with the satellite as the mirror of the
        # central registry the state names (?ns=<that registry>)
        hosts = tmp_path / "hosts.d"
        (hosts / site.central.host).mkdir(parents=True)
        (hosts / site.central.host / "hosts.toml").write_text(
            'server = "http://127.0.0.1:9"\n'
            f'[host."http://{site.sat.host}"]\n  capabilities = ["pull", "resolve"]\n'
        )
        runtime = containerd_factory()
        runtime.pull(f"{site.central.host}/library/app:v1", hosts)
        assert runtime.image_digest(f"{site.central.host}/library/app:v1") == (
            image_layout.app.digest
        )
        # the new bundle, imported by the running daemon: the CLI draws the daemon's
        # progress on its terminal, ending full at the bundle's bytes
        code, out = site.bundle_import(second, terminal=True)
        assert code == 0 and out.startswith("applied:"), out
        total = sum(p.stat().st_size for p in (second / "blobs" / "sha256").iterdir()) / 1e6
        drawn = [line for line in re.split(r"[\r\n]", out) if line.startswith("import [")]
        assert len(drawn) >= 2, repr(out[-600:])  # the bar as it moved, and the last one
        assert re.search(rf"import \[#{{24}}\] {total:.1f}/{total:.1f} MB", drawn[-1]), drawn
        assert state_version(site.sat) == exported["state_version"]
        current = status(site.sat)
        assert current["state_source"] == "bundle"
        wait_until(
            lambda: status(site.sat)["images"]["by_status"] == {"present": 2},
            what="both images present",
        )
        raw = skopeo.inspect_raw(f"docker://{site.sat.host}/library/multi:v1")
        assert raw == image_layout.multi.manifest_bytes()  # the index, digest intact
        out = tmp_path / "pulled-multi"
        skopeo.copy(f"docker://{site.sat.host}/library/multi:v1", f"oci:{out}:x")
        assert skopeo.inspect(f"oci:{out}:x")["Digest"] == children[("linux", "amd64")].digest
        # the platform left out is not here, and says so (404, never 5xx)
        answer = httpx.get(f"{site.sat.url}/v2/library/multi/manifests/{arm64.digest}", timeout=10)
        assert answer.status_code == 404, answer.text


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def biggest_blob(bundle: Path) -> Path:
    return max((bundle / "blobs" / "sha256").iterdir(), key=lambda p: p.stat().st_size)


def test_a_bad_bundle_is_refused_with_one_reason_and_nothing_applied(
    site: Site, tmp_path: Path
) -> None:
    good = tmp_path / "good"
    site.export("site-a", good)
    other = tmp_path / "other"
    site.export("site-b", other)

    def variant(name: str) -> Path:
        path = tmp_path / name
        shutil.copytree(good, path)
        return path

    flipped = variant("flipped")
    flip_byte(biggest_blob(flipped))
    truncated = variant("truncated")
    with open(biggest_blob(truncated), "r+b") as f:
        f.truncate(100)
    foreign = variant("foreign")
    shutil.copy(other / "satellite" / "state.json", foreign / "satellite" / "state.json")
    unsigned = variant("unsigned")
    doc = document((good / "satellite" / "state.json").read_bytes())
    forged = sign_state(replace(doc, version=doc.version + 5), [generate_key()]).to_json()
    (unsigned / "satellite" / "state.json").write_bytes(forged)
    incomplete = variant("incomplete")
    (incomplete / "satellite" / "state.json").unlink()

    cases = {
        flipped: "damaged",
        truncated: "damaged",
        foreign: "WrongSatelliteError",
        unsigned: "SignatureError",
        incomplete: "not a complete bundle",
    }
    for bundle, reason in cases.items():
        code, out = site.bundle_import(bundle)
        assert code == 1 and reason in out, (bundle.name, out)
        assert len(out.strip().splitlines()) == 1, out
        assert state_version(site.sat) == 1, bundle.name  # the state from registration

    # a missing blob: the state stays unapplied and the missing digest is named
    missing = variant("missing")
    gone = biggest_blob(missing)
    gone.unlink()
    code, out = site.bundle_import(missing)
    assert code == 3 and f"sha256:{gone.name}" in out, out
    assert state_version(site.sat) == 1
    # what the stick did bring is pinned until the state applies: no budget evicts it
    brought = _pins(site, "bundle")
    assert brought and f"sha256:{gone.name}" not in brought

    # the good bundle applies (blobs imported from the damaged tries are not copied again)
    code, out = site.bundle_import(good)
    assert code == 0 and out.startswith("applied:"), out
    assert _pins(site, "bundle") == set()  # the state's own pins take over
    applied = state_version(site.sat)
    assert applied > 1
    # an older state after a newer one: a rollback
    site.fleet.api("POST", "/api/v1/satellites/site-a/publish")
    newer = tmp_path / "newer"
    site.export("site-a", newer)
    assert site.bundle_import(newer)[0] == 0
    code, out = site.bundle_import(good)
    assert code == 1 and "RollbackError" in out, out
    assert state_version(site.sat) == applied + 1


def test_a_tar_and_a_split_bundle(site: Site, tmp_path: Path, skopeo: Skopeo) -> None:
    tar = tmp_path / "bundle.tar"
    result = site.export("site-a", tar, "--tar")
    assert result["blobs_written"] == 4 and tar.is_file()
    # a standard OCI layout in a tar: skopeo reads it as an oci-archive
    assert skopeo.inspect(f"oci-archive:{tar}:library/app:v1")["Layers"]
    split = tmp_path / "parts" / "bundle.tar"
    site.export("site-a", split, "--split", "64KiB")
    parts = sorted(split.parent.iterdir())
    assert len(parts) >= 3 and all(p.stat().st_size <= 64 * 1024 for p in parts)
    assert b"".join(p.read_bytes() for p in parts) == tar.read_bytes()
    # exported again in fewer parts: the parts of the earlier export are gone
    site.export("site-a", split, "--split", "1MiB")
    assert sorted(p.name for p in split.parent.iterdir()) == ["bundle.tar.000"]
    assert (split.parent / "bundle.tar.000").read_bytes() == tar.read_bytes()
    site.export("site-a", split, "--split", "64KiB")
    assert sorted(split.parent.iterdir()) == parts

    # what an export cut short leaves (kill -9, a full stick): never taken for a bundle
    cut = tmp_path / "cut.tar"
    (tmp_path / "cut.tar.partial").write_bytes(tar.read_bytes()[:70000])
    code, out = site.bundle_import(cut)
    assert code == 1 and "the export that wrote it was cut short" in out, out

    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
    code, out = site.bundle_import(truncated)
    assert code == 1 and "truncated or damaged tar" in out, out
    assert state_version(site.sat) == 1
    middle = parts[1]
    kept = middle.read_bytes()
    middle.unlink()
    code, out = site.bundle_import(parts[0])
    assert code == 1 and f"part {middle.name} of the bundle is missing" in out, out
    assert state_version(site.sat) == 1
    middle.write_bytes(kept)
    code, out = site.bundle_import(parts[0], terminal=True)
    assert code == 0 and out.startswith("applied: state version 2"), out
    # on a terminal, a progress line drawn in place ends full, at the parts' total
    total = sum(p.stat().st_size for p in parts) / 1e6
    last = out.split("\r")[-1]
    assert re.search(rf"import \[#{{24}}\] [\d.]+/{total:.1f} MB", last), repr(out[-400:])
    # the blobs the truncated tar brought in were not copied again
    assert "already present" in out
    code, out = site.bundle_import(tar)
    assert code == 0 and out.startswith("current: state version 2"), out
    assert "0 blob(s) imported" in out


def test_an_import_killed_midway_resumes_without_copying_again(site: Site, tmp_path: Path) -> None:
    """A blob file that is a pipe with no writer stalls the import there, as a slow stick
    does; kill -9 then, and the next import copies only what was not in yet."""
    bundle = tmp_path / "b"
    site.export("site-a", bundle)
    index = json.loads((bundle / "index.json").read_bytes())
    manifest_digest = index["manifests"][0]["digest"].split(":")[1]
    manifest = json.loads((bundle / "blobs" / "sha256" / manifest_digest).read_bytes())
    stalled = bundle / "blobs" / "sha256" / manifest["layers"][-1]["digest"].split(":")[1]
    real = stalled.read_bytes()
    stalled.unlink()
    os.mkfifo(stalled)
    log = tmp_path / "import.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*satellite_command(), "bundle", "import", str(bundle), "--data-dir",
             str(site.sat.data_dir)],
            stdout=out, stderr=subprocess.STDOUT, env=groundcontrol_env(),
        )  # fmt: skip
        try:
            wait_until(lambda: log.read_text().count("imported sha256:") == 3, what="3 blobs in")
        finally:
            proc.kill()  # SIGKILL
            proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    assert state_version(site.sat) == 1
    stalled.unlink()
    stalled.write_bytes(real)
    code, out = site.bundle_import(bundle)
    assert code == 0 and out.startswith("applied:"), out
    assert "1 blob(s) imported" in out and "3 already present" in out, out
    assert state_version(site.sat) == 2


def test_the_usb_import_script_imports_and_writes_the_reports_back(
    site: Site, tmp_path: Path
) -> None:
    """What satellite-bundle@.service runs once the stick is mounted, end to end, with
    the running daemon; the units themselves pass systemd-analyze verify."""
    stick = tmp_path / "stick"
    site.export("site-a", stick / "images" / "bundle.tar", "--split", "64KiB")
    (stick / "SATELLITE-BUNDLE").write_text("images/bundle.tar.000\n")
    script = REPO_ROOT / "systemd" / "satellite-usb-import"
    with site.sat:
        wait_until(lambda: status(site.sat)["running"], what="daemon")
        done = subprocess.run(
            [str(script), str(stick), str(site.sat.data_dir)],
            env={**groundcontrol_env(), "SATELLITE": satellite_command()[0]},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "applied: state version 2" in done.stdout, done.stdout
        assert status(site.sat)["state_source"] == "bundle"
    carried = json.loads((stick / "reports" / "site-a" / "checkins.json").read_bytes())
    assert carried["checkins"]
    assert (stick / "reports" / "site-a" / "inventory.json").is_file()
    # a stick without a bundle: refused with the reason, in the journal
    empty = tmp_path / "empty"
    empty.mkdir()
    done = subprocess.run(
        [str(script), str(empty), str(site.sat.data_dir)],
        env={**groundcontrol_env(), "SATELLITE": satellite_command()[0]},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1 and "no bundle on" in done.stderr


def test_the_usb_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = require_tool("systemd-analyze", "systemd")
    text = (REPO_ROOT / "systemd" / "satellite-bundle@.service").read_text()
    unit = tmp_path / "satellite-bundle@sdb1.service"
    script = REPO_ROOT / "systemd" / "satellite-usb-import"
    unit.write_text(text.replace("/opt/satellite/bin/satellite-usb-import", str(script)))
    done = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    rule = (REPO_ROOT / "systemd" / "99-satellite-bundle.rules").read_text()
    assert 'ENV{SYSTEMD_WANTS}+="satellite-bundle@%k.service"' in rule
    assert 'ENV{ID_FS_LABEL}=="SATBUNDLE"' in rule


def test_reports_carried_back_and_acknowledged_by_the_next_bundle(
    site: Site, tmp_path: Path
) -> None:
    bundle = tmp_path / "b1"
    site.export("site-a", bundle)
    with site.sat:
        wait_until(lambda: status(site.sat)["running"], what="daemon")
        code, out = site.bundle_import(bundle)
        assert code == 0, out
        version = state_version(site.sat)
        wait_until(lambda: status(site.sat)["outbox"]["depth"] >= 2, what="check-ins queued")
        stick = tmp_path / "reports"
        done = run_satellite_cli(
            "reports", "export", str(stick), "--data-dir", str(site.sat.data_dir)
        )
        assert "check-in(s)" in done.stdout
        carried = (stick / "site-a" / "checkins.json").read_bytes()
        count = len(json.loads(carried)["checkins"])
        assert count >= 2
        imported = json.loads(
            site.fleet.cli(
                "reports",
                "import",
                str(stick),
                "--json",
                "--data-dir",
                str(site.fleet.data),
            )
        )
        assert len(imported["site-a"]["accepted"]) == count
        again = json.loads(
            site.fleet.cli(
                "reports", "import", str(stick), "--json", "--data-dir", str(site.fleet.data)
            )
        )
        assert again["site-a"]["accepted"] == [] and len(again["site-a"]["duplicates"]) == count
        # Ground Control shows the air-gapped satellite's applied version
        shown = site.fleet.api("GET", "/api/v1/satellites/site-a")
        assert shown["applied_version"] == version
        # the stored envelopes are the satellite's bytes
        seqs = site.fleet.seqs("site-a")
        assert len(seqs) == count
        # a delta bundle leaves out what the satellite reported holding
        site.fleet.api(
            "PUT",
            "/api/v1/groups/shops",
            {"images": [{"reference": "library/app:v1"}, {"reference": "library/multi:v1"}]},
        )
        delta = tmp_path / "b2"
        result = site.export("site-a", delta, "--since-checkins")
        assert result["blobs_skipped"] == 4  # app:v1's config and layers
        assert result["blobs_written"] > 0
        # the ack list is signed for site-a and this state: a tampered one, or another
        # satellite's, clears nothing (a warning), while the state still applies
        acks_file = delta / "satellite" / "acks.json"
        envelope = json.loads(acks_file.read_bytes())
        payload = json.loads(base64.b64decode(envelope["payload"]))
        assert payload["satellite"] == "site-a" and payload["seqs"] == sorted(seqs)
        payload["through"] = 1_000_000  # would clear every check-in queued
        envelope["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
        tampered = tmp_path / "b2-tampered"
        shutil.copytree(delta, tampered)
        (tampered / "satellite" / "acks.json").write_text(json.dumps(envelope))
        site.fleet.api("POST", "/api/v1/satellites/site-b/publish")
        site.export("site-b", tmp_path / "b-other")
        foreign = tmp_path / "b2-foreign"
        shutil.copytree(delta, foreign)
        shutil.copy(tmp_path / "b-other" / "satellite" / "acks.json", foreign / "satellite")
        for bundle, reason in ((tampered, "SignatureError"), (foreign, "WrongSatelliteError")):
            queued = _outbox_seqs(site)
            code, out = site.bundle_import(bundle)
            assert code == 0 and "0 check-in(s) acknowledged" in out, out
            assert f"satellite: warning: satellite/acks.json refused: {reason}" in out, out
            assert "no check-in cleared" in out
            assert set(queued) <= set(_outbox_seqs(site))  # nothing cleared
        assert state_version(site.sat) == result["state_version"]  # the state applied
        depth_before = status(site.sat)["outbox"]["depth"]
        code, out = site.bundle_import(delta)
        assert code == 0 and out.startswith("current:"), out
        assert "warning" not in out
        assert f"{count} check-in(s) acknowledged" in out
        assert status(site.sat)["outbox"]["depth"] < depth_before + 2
        left = [seq for seq in _outbox_seqs(site) if seq in seqs]
        assert left == []


def _pins(site: Site, owner: str) -> set[str]:
    db = site.sat.data_dir / "metadata.db"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return {r[0] for r in conn.execute("SELECT digest FROM pins WHERE owner = ?", (owner,))}


def _outbox(site: Site) -> list[dict[str, Any]]:
    """The payloads of the check-ins queued in the satellite's outbox."""
    stick = site.root / "reports-again"
    shutil.rmtree(stick, ignore_errors=True)
    run_satellite_cli("reports", "export", str(stick), "--data-dir", str(site.sat.data_dir))
    path = stick / "site-a" / "checkins.json"
    if not path.exists():
        return []
    envelopes = json.loads(path.read_bytes())["checkins"]
    return [json.loads(base64.b64decode(e["payload"])) for e in envelopes]


def _outbox_seqs(site: Site) -> list[int]:
    return [checkin["seq"] for checkin in _outbox(site)]


def _outbox_events(site: Site) -> list[dict[str, Any]]:
    return [event for checkin in _outbox(site) for event in checkin.get("events", [])]


def test_bundles_carry_referrers_and_a_delta_carries_a_new_one(
    site: Site, skopeo: Skopeo, tmp_path: Path, image_layout: GeneratedLayout
) -> None:
    """The central docker-registry has no referrers API: the tag schema's index (an SBOM),
    cosign's ``.sig`` tag and later an ``.att`` tag name what refers to app:v1."""
    app = image_layout.app
    attached = attach(site.central, "library/app", app)
    tags = referrer_tags(Digest.parse(app.digest))
    schema_tag, sig_tag, att_tag = tags[0], tags[1], tags[2]
    with httpx.Client(base_url=site.central.url, timeout=30) as c:
        signature = c.get(
            f"/v2/library/app/manifests/{attached['signature']}",
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        ).content
    bundle = tmp_path / "b1"
    first = site.export("site-a", bundle)
    assert first["referrers"] == 3  # the schema's index, the SBOM it lists, the signature
    names = {
        m["annotations"]["org.opencontainers.image.ref.name"]
        for m in json.loads((bundle / "index.json").read_bytes())["manifests"]
    }
    assert names == {
        "library/app:v1",
        f"library/app:{schema_tag}",
        f"library/app:{sig_tag}",
        f"library/app@{attached['sbom']}",
    }
    # standard tools read them from the layout, bytes as signed
    assert skopeo.inspect_raw(f"oci:{bundle}:library/app:{sig_tag}") == signature
    code, out = site.bundle_import(bundle)
    assert code == 0 and "3 referrer(s)" in out, out
    # kept from eviction: an air-gapped site cannot fetch them again
    pinned = {attached[k] for k in ("signature", "signature_layer", "sbom", "sbom_layer")}
    assert pinned <= _pins(site, "referrers")

    # an attestation added after the export: a delta bundle leaves out what the satellite
    # holds (the image, the signature) and carries the attestation
    with httpx.Client(base_url=site.central.url, timeout=30) as c:
        added = sbom_by_digest(c, "library/app", app, b'{"predicate": "later"}', tag=att_tag)
    stick = tmp_path / "reports"
    run_satellite_cli("reports", "export", str(stick), "--data-dir", str(site.sat.data_dir))
    delta = tmp_path / "b2"
    inventory = stick / "site-a" / "inventory.json"
    second = site.export("site-a", delta, "--since-inventory", str(inventory))
    assert second["referrers"] == 4
    assert second["blobs_written"] == 1  # the attestation's layer; its config is held
    written = {p.name for p in (delta / "blobs" / "sha256").iterdir()}
    assert Digest.parse(added["layer"]).encoded in written
    assert Digest.parse(attached["signature_layer"]).encoded not in written

    site.central.stop()
    with site.sat:
        wait_until(lambda: status(site.sat)["running"], what="daemon")
        code, out = site.bundle_import(delta)
        assert code == 0 and out.startswith("current:") and "4 referrer(s)" in out, out
        assert {added["manifest"], added["layer"]} | pinned <= _pins(site, "referrers")
        with httpx.Client(base_url=site.sat.url, timeout=30) as c:
            listed = c.get(f"/v2/library/app/referrers/{app.digest}")
            assert listed.status_code == 200, listed.text
            assert {m["digest"] for m in listed.json()["manifests"]} == {
                attached["sbom"],
                added["manifest"],
            }
            for tag, digest in ((sig_tag, attached["signature"]), (att_tag, added["manifest"])):
                answer = c.get(
                    f"/v2/library/app/manifests/{tag}",
                    headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
                )
                assert answer.status_code == 200, answer.text
                assert answer.headers["docker-content-digest"] == digest
            served = c.get(
                f"/v2/library/app/manifests/{sig_tag}",
                headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
            )
            assert served.content == signature  # byte-identical, offline
            blob = c.get(f"/v2/library/app/blobs/{attached['signature_layer']}")
            assert blob.status_code == 200 and Digest.of(blob.content) == Digest.parse(
                attached["signature_layer"]
            )
