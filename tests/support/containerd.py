"""containerd 1.6 (Debian) as a real runtime: its root, state and socket in a temp dir.

c = containerd_factory()          # a started containerd (fixture)
c.pull("docker.io/library/app:v1", hosts_dir)   # ctr images pull --hosts-dir DIR
c.image_digest("docker.io/library/app:v1")
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from tests.support.process import ServerProcess
from tests.support.upstream import require_tool


class Containerd(ServerProcess):
    name = "containerd"

    def __init__(self, root: Path) -> None:
        super().__init__(root / "containerd.log")
        self.root = root
        self.socket = root / "c.sock"
        self.config = root / "config.toml"
        root.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            "version = 2\n"
            f'root = "{root / "root"}"\n'
            f'state = "{root / "state"}"\n'
            f'[grpc]\n  address = "{self.socket}"\n'
            '[plugins."io.containerd.grpc.v1.cri"]\n  disable_tcp_service = true\n'
        )

    def start(self) -> Containerd:
        self._launch(["containerd", "--config", str(self.config)])
        self._await_path(self.socket)
        return self

    def ctr(self, *args: str, timeout: float = 120, env: Mapping[str, str] | None = None) -> str:
        result = subprocess.run(
            ["ctr", "-a", str(self.socket), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=None if env is None else dict(env),
        )
        if result.returncode != 0:
            raise AssertionError(f"ctr {' '.join(args)} failed: {result.stderr[-2000:]}")
        return result.stdout

    def pull(self, ref: str, hosts_dir: Path, env: Mapping[str, str] | None = None) -> None:
        self.ctr(
            "images", "pull", "--snapshotter", "native", "--hosts-dir", str(hosts_dir), ref, env=env
        )

    def image_digest(self, ref: str) -> str:
        for line in self.ctr("images", "ls").splitlines()[1:]:
            fields = line.split()
            if fields and fields[0] == ref:
                return fields[2]
        raise AssertionError(f"{ref} not in containerd")


def mirror_hosts_dir(root: Path, mirror_host: str) -> Path:
    """A ``--hosts-dir`` whose docker.io/hosts.toml sends pulls to ``mirror_host``. The
    fallback "server" is a closed loopback port: nothing may leave this machine."""
    hosts = root / "hosts.d"
    (hosts / "docker.io").mkdir(parents=True)
    (hosts / "docker.io" / "hosts.toml").write_text(
        'server = "http://127.0.0.1:9"\n'
        f'[host."http://{mirror_host}"]\n  capabilities = ["pull", "resolve"]\n'
    )
    return hosts


@pytest.fixture
def containerd_factory(tmp_path: Path) -> Iterator[Callable[[], Containerd]]:
    require_tool("containerd", "containerd")
    started: list[Containerd] = []

    def make() -> Containerd:
        # unix socket paths are short: keep the root under /tmp
        root = Path(subprocess.check_output(["mktemp", "-d", "/tmp/ctd.XXXXXX"], text=True).strip())
        started.append(Containerd(root).start())
        return started[-1]

    yield make
    for c in started:
        c.stop()
        subprocess.run(["rm", "-rf", str(c.root)], check=False)
