"""A real runtime through the satellite: containerd's `ctr images pull` with a hosts.toml
mirror sends `GET /v2/library/x/manifests/y?ns=docker.io`, as kubelet-driven pulls do."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import SatelliteFactory
from tests.support.images import GeneratedLayout
from tests.support.net import wait_for_path
from tests.support.satellite import SatelliteProcess, Upstream
from tests.support.skopeo import Skopeo
from tests.support.upstream import UpstreamRegistry, require_tool


class Containerd:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket = root / "c.sock"
        config = root / "config.toml"
        root.mkdir(parents=True, exist_ok=True)
        config.write_text(
            "version = 2\n"
            f'root = "{root / "root"}"\n'
            f'state = "{root / "state"}"\n'
            f'[grpc]\n  address = "{self.socket}"\n'
            '[plugins."io.containerd.grpc.v1.cri"]\n  disable_tcp_service = true\n'
        )
        self.log = (root / "containerd.log").open("wb")
        self.proc = subprocess.Popen(
            ["containerd", "--config", str(config)], stdout=self.log, stderr=subprocess.STDOUT
        )
        wait_for_path(self.socket, timeout=20)

    def ctr(self, *args: str, timeout: float = 120) -> str:
        result = subprocess.run(
            ["ctr", "-a", str(self.socket), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise AssertionError(f"ctr {' '.join(args)} failed: {result.stderr[-2000:]}")
        return result.stdout

    def pull(self, ref: str, hosts_dir: Path) -> None:
        self.ctr("images", "pull", "--snapshotter", "native", "--hosts-dir", str(hosts_dir), ref)

    def image_digest(self, ref: str) -> str:
        for line in self.ctr("images", "ls").splitlines()[1:]:
            fields = line.split()
            if fields and fields[0] == ref:
                return fields[2]
        raise AssertionError(f"{ref} not in containerd")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture
def containerd_factory(tmp_path: Path) -> Iterator[Callable[[], Containerd]]:
    require_tool("containerd", "containerd")
    started: list[Containerd] = []

    def make() -> Containerd:
        # unix socket paths are short: keep the root under /tmp
        root = Path(subprocess.check_output(["mktemp", "-d", "/tmp/ctd.XXXXXX"], text=True).strip())
        started.append(Containerd(root))
        return started[-1]

    yield make
    for c in started:
        c.stop()
        subprocess.run(["rm", "-rf", str(c.root)], check=False)


def _hosts_dir(tmp_path: Path, sat: SatelliteProcess) -> Path:
    hosts = tmp_path / "hosts.d"
    (hosts / "docker.io").mkdir(parents=True)
    # the fallback "server" is a closed loopback port: nothing may leave this machine
    (hosts / "docker.io" / "hosts.toml").write_text(
        'server = "http://127.0.0.1:9"\n'
        f'[host."http://{sat.host}"]\n  capabilities = ["pull", "resolve"]\n'
    )
    return hosts


def test_ctr_pulls_through_the_satellite_and_again_offline(
    skopeo: Skopeo,
    image_layout: GeneratedLayout,
    upstream_registry: UpstreamRegistry,
    satellite_factory: SatelliteFactory,
    containerd_factory: Callable[[], Containerd],
    tmp_path: Path,
) -> None:
    skopeo.copy(image_layout.oci("app:v1"), f"docker://{upstream_registry.host}/library/app:v1")
    skopeo.copy(
        image_layout.oci("multi:v1"),
        f"docker://{upstream_registry.host}/library/multi:v1",
        all_images=True,
    )
    sat = satellite_factory(push=False, upstreams=[Upstream("docker.io", upstream_registry.url)])
    hosts = _hosts_dir(tmp_path, sat)
    first = containerd_factory()
    first.pull("docker.io/library/app:v1", hosts)
    first.pull("docker.io/library/multi:v1", hosts)
    assert first.image_digest("docker.io/library/app:v1") == image_layout.app.digest
    assert first.image_digest("docker.io/library/multi:v1") == image_layout.multi.digest
    catalog = httpx.get(f"{sat.url}/v2/_catalog").json()["repositories"]
    assert "docker.io/library/app" in catalog
    # the link goes down; a second site runtime still pulls everything from the satellite
    upstream_registry.stop()
    second = containerd_factory()
    second.pull("docker.io/library/app:v1", hosts)
    assert second.image_digest("docker.io/library/app:v1") == image_layout.app.digest
