"""image/build.sh: the appliance's OCI image, built without a daemon, reproducibly, then
pushed into a satellite with skopeo, pulled from it and run by podman, where it serves a
pull through to an upstream.

The first build on a machine fetches Debian packages and wheels (a minute or two); the
Debian and PyPI layers are cached by their inputs (~/.cache/satellite-image), so later
builds only redo the project's own layer."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SatelliteFactory
from tests.support.images import GeneratedLayout, blob_path, find_ref
from tests.support.net import free_port, wait_http
from tests.support.podman import Podman
from tests.support.satellite import REPO_ROOT, UpstreamTable, render_config
from tests.support.skopeo import Skopeo
from tests.support.upstream import UpstreamRegistry, require_tool

pytestmark = pytest.mark.slow

MAX_COMPRESSED = 80 * 1024 * 1024  # the goal for the image


def build(out: Path) -> str:
    require_tool("mmdebstrap", "mmdebstrap")
    done = subprocess.run(
        ["bash", str(REPO_ROOT / "image/build.sh"), str(out)],
        capture_output=True,
        text=True,
        timeout=1500,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout.strip().splitlines()[-1]


# one worker builds the image once for both tests (the build cache is not shared safely)
pytestmark = pytest.mark.xdist_group("image")


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("image") / "layout"
    return out, build(out)


def _blob_json(layout: Path, digest: str) -> Any:
    return json.loads(blob_path(layout, digest).read_bytes())


def test_image_is_reproducible_labelled_and_runs_as_a_user(
    image: tuple[Path, str], tmp_path: Path
) -> None:
    layout, digest = image
    assert find_ref(layout, "latest")["digest"] == digest
    # the same inputs give the same digest (the Debian and PyPI layers come from the cache,
    # the project's layer is made again)
    again = tmp_path / "again"
    assert build(again) == digest
    assert (again / "index.json").read_bytes() == (layout / "index.json").read_bytes()

    manifest = _blob_json(layout, digest)
    config = _blob_json(layout, manifest["config"]["digest"])
    assert config["config"]["User"] == "10001:10001"
    assert config["config"]["Entrypoint"] == ["/opt/satellite/venv/bin/satellite", "run"]
    labels = config["config"]["Labels"]
    assert labels["org.opencontainers.image.title"] == "satellite"
    assert "/healthz" in labels["org.opencontainers.image.description"]
    for key in ("version", "revision", "created", "licenses"):
        assert labels[f"org.opencontainers.image.{key}"]
    size = sum(layer["size"] for layer in manifest["layers"])
    print(f"appliance image: {len(manifest['layers'])} layers, {size / 1e6:.1f} MB compressed")
    assert size <= MAX_COMPRESSED


@pytest.fixture
def podman(tmp_path: Path) -> Iterator[Podman]:
    runner = Podman(tmp_path / "podman")
    yield runner
    runner.close()


def test_image_pushed_to_a_satellite_runs_under_podman_and_serves_a_pull(
    image: tuple[Path, str],
    skopeo: Skopeo,
    image_layout: GeneratedLayout,
    upstream_registry: UpstreamRegistry,
    satellite_factory: SatelliteFactory,
    podman: Podman,
    tmp_path: Path,
) -> None:
    layout, digest = image
    registry = satellite_factory(push=True)
    skopeo.copy(f"oci:{layout}:latest", f"docker://{registry.host}/appliance/satellite:test")
    assert skopeo.inspect(f"docker://{registry.host}/appliance/satellite:test")["Digest"] == digest
    skopeo.copy(image_layout.oci("app:v1"), f"docker://{upstream_registry.host}/library/app:v1")

    ref = f"{registry.host}/appliance/satellite:test"
    podman.run("pull", "--tls-verify=false", ref, timeout=300)
    config = tmp_path / "satellite.toml"
    config.write_text(
        render_config(
            push=False, upstreams=[UpstreamTable("docker.io", upstream_registry.url, True)]
        )
    )
    config.chmod(0o644)
    port = free_port()
    name = f"sat-{os.getpid()}-{port}"
    podman.run(
        "run", "-d", "--name", name, "--network", "host", *Podman.RUN_FLAGS,
        "-e", f"SATELLITE_SERVER_LISTEN=127.0.0.1:{port}",
        "-v", f"{config}:/etc/satellite/satellite.toml:ro",
        ref, "--config", "/etc/satellite/satellite.toml",
    )  # fmt: skip
    try:
        try:
            wait_http(f"http://127.0.0.1:{port}/readyz", ready=lambda r: r.status_code == 200)
        except Exception:
            raise AssertionError(podman.run("logs", name)) from None
        out = tmp_path / "pulled"
        skopeo.copy(f"docker://127.0.0.1:{port}/docker.io/library/app:v1", f"oci:{out}:app:v1")
        assert find_ref(out, "app:v1")["digest"] == image_layout.app.digest
        user = podman.run("exec", name, "id", "-u").strip()
        assert user == "10001"
        podman.run("stop", "-t", "30", name, timeout=60)
        state = podman.run("inspect", name, "--format", "{{.State.ExitCode}}").strip()
        assert state == "0", podman.run("logs", name)  # SIGTERM: a graceful stop
    finally:
        podman.run("rm", "-f", name)
