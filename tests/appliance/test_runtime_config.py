"""`satellite runtime-config`: the files it writes are used by the real runtimes to pull
through a real satellite, merged files keep what was there, and `--revert` restores the
exact bytes. Every file is parsed back with a real parser (tomllib, json, PyYAML)."""

from __future__ import annotations

import json
import os
import subprocess
import tomllib
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import httpx
import pytest
import yaml

from appliance import runtime_config as rc
from appliance.config import UpstreamConfig
from tests.conftest import SatelliteFactory
from tests.support.containerd import Containerd
from tests.support.images import GeneratedLayout
from tests.support.podman import OFFLINE_ENV, Podman
from tests.support.satellite import SatelliteProcess, UpstreamTable, satellite_command
from tests.support.skopeo import Skopeo
from tests.support.upstream import UpstreamRegistry, require_tool


def runtime_config(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`satellite runtime-config ARGS` as a subprocess, as an operator runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SATELLITE_")}
    done = subprocess.run(
        [*satellite_command(), "runtime-config", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    if check and done.returncode != 0:
        raise AssertionError(f"runtime-config {args} exited {done.returncode}: {done.stderr}")
    return done


def catalog(sat: SatelliteProcess) -> list[str]:
    repos: list[str] = httpx.get(f"{sat.url}/v2/_catalog", trust_env=False).json()["repositories"]
    return repos


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


# --------------------------------------------------------------------------- containerd


def test_containerd_hosts_toml_pulls_through_the_satellite(
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
    # "docker.io" is named as the runtimes name it (routed by ?ns=); "central" is not a
    # registry host, so its images are reached with override_path under /v2/central
    sat = satellite_factory(
        push=False,
        upstreams=[
            UpstreamTable("docker.io", upstream_registry.url, default=True),
            UpstreamTable("central", upstream_registry.url),
        ],
    )
    root = tmp_path / "root"
    out = runtime_config(
        "containerd", "--config", str(sat.config_path), "--root", str(root),
        "--mirror-url", sat.url, "--apply",
    ).stdout  # fmt: skip
    certs = root / "etc/containerd/certs.d"
    assert f"wrote {certs / 'docker.io/hosts.toml'}" in out
    assert 'config_path = "/etc/containerd/certs.d"' in out
    hub = tomllib.loads((certs / "docker.io/hosts.toml").read_text())
    assert hub["server"] == upstream_registry.url
    assert hub["host"] == {sat.url: {"capabilities": ["pull", "resolve"]}}
    central = tomllib.loads((certs / upstream_registry.host / "hosts.toml").read_text())
    assert central["host"] == {
        f"{sat.url}/v2/central": {"capabilities": ["pull", "resolve"], "override_path": True}
    }

    env = {**os.environ, **OFFLINE_ENV}
    first = containerd_factory()
    first.pull("docker.io/library/app:v1", certs, env=env)
    first.pull(f"{upstream_registry.host}/library/multi:v1", certs, env=env)
    assert first.image_digest("docker.io/library/app:v1") == image_layout.app.digest
    multi_ref = f"{upstream_registry.host}/library/multi:v1"
    assert first.image_digest(multi_ref) == image_layout.multi.digest
    assert {"docker.io/library/app", "central/library/multi"} <= set(catalog(sat))
    # with the upstream gone, only the satellite can serve the second runtime
    upstream_registry.stop()
    second = containerd_factory()
    second.pull("docker.io/library/app:v1", certs, env=env)
    assert second.image_digest("docker.io/library/app:v1") == image_layout.app.digest

    runtime_config("containerd", "--config", str(sat.config_path), "--root", str(root), "--revert")
    assert tree(root) == {}
    assert not (root / "etc").exists()


def test_containerd_note_names_the_config_path_line_for_the_installed_version(
    tmp_path: Path,
) -> None:
    upstreams = [UpstreamConfig("docker.io", "https://registry-1.docker.io", default=True)]
    files: dict[PurePosixPath, bytes] = {}
    v2 = rc.render("containerd", "http://10.0.0.5:8585", upstreams, files.get)
    assert '[plugins."io.containerd.grpc.v1.cri".registry]' in v2.notes[0]
    files[PurePosixPath("etc/containerd/config.toml")] = b"version = 3\n"
    v3 = rc.render("containerd", "http://10.0.0.5:8585", upstreams, files.get)
    assert '[plugins."io.containerd.cri.v1.images".registry]\n' in v3.notes[0]
    files[PurePosixPath("etc/containerd/config.toml")] = (
        b'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\n'
        b'  config_path = "/etc/containerd/certs.d"\n'
    )
    done = rc.render("containerd", "http://10.0.0.5:8585", upstreams, files.get)
    assert "already reads" in done.notes[0]


# --------------------------------------------------------------------------- CRI-O / podman


@pytest.fixture
def hub_satellite(
    skopeo: Skopeo,
    image_layout: GeneratedLayout,
    upstream_registry: UpstreamRegistry,
    satellite_factory: SatelliteFactory,
) -> SatelliteProcess:
    skopeo.copy(image_layout.oci("app:v1"), f"docker://{upstream_registry.host}/library/app:v1")
    return satellite_factory(
        push=False, upstreams=[UpstreamTable("docker.io", upstream_registry.url, default=True)]
    )


def _drop_in(runtime: str, sat: SatelliteProcess, root: Path) -> Path:
    runtime_config(
        runtime, "--config", str(sat.config_path), "--root", str(root),
        "--mirror-url", sat.url, "--apply",
    )  # fmt: skip
    path = root / "etc/containers/registries.conf.d/50-satellite.conf"
    doc = tomllib.loads(path.read_text())
    assert doc["unqualified-search-registries"] == ["docker.io"]
    assert doc["registry"] == [
        {
            "prefix": "docker.io",
            "location": "docker.io",
            "mirror": [{"location": f"{sat.host}/docker.io", "insecure": True}],
        }
    ]
    return path


def test_registries_conf_drop_in_serves_skopeo_a_short_name(
    hub_satellite: SatelliteProcess, image_layout: GeneratedLayout, tmp_path: Path
) -> None:
    drop_in = _drop_in("crio", hub_satellite, tmp_path / "root")
    out = tmp_path / "out"
    # "app:v1" is docker.io/library/app:v1 to skopeo; docker.io itself is unreachable here
    subprocess.run(
        [
            require_tool("skopeo", "skopeo"), "--insecure-policy", "--registries-conf",
            str(drop_in), "copy", "docker://app:v1", f"oci:{out}:app:v1",
        ],
        check=True, capture_output=True, timeout=120, env={**os.environ, **OFFLINE_ENV},
    )  # fmt: skip
    index = json.loads((out / "index.json").read_text())
    assert index["manifests"][0]["digest"] == image_layout.app.digest
    assert "docker.io/library/app" in catalog(hub_satellite)


def test_registries_conf_drop_in_serves_podman_a_short_name(
    hub_satellite: SatelliteProcess, image_layout: GeneratedLayout, tmp_path: Path
) -> None:
    drop_in = _drop_in("podman", hub_satellite, tmp_path / "root")
    podman = Podman(tmp_path / "podman", env={"CONTAINERS_REGISTRIES_CONF": str(drop_in)})
    try:
        podman.run("pull", "app:v1")
        listed = podman.run("images", "--format", "{{.Repository}}:{{.Tag}} {{.Digest}}")
    finally:
        podman.close()
    assert listed.split() == ["docker.io/library/app:v1", image_layout.app.digest]


# --------------------------------------------------------------------------- merged files


DAEMON_JSON = (
    b'{\n\t"log-driver": "journald",\n\t"registry-mirrors": ["https://mirror.example"],'
    b'\n\t"features": {"buildkit": true}\n}'
)

REGISTRIES_YAML = b"""# site registries, kept by hand
mirrors:
  docker.io:
    endpoint:
      - "https://mirror.example:5000"
  quay.io:
    endpoint: ["https://quay-mirror.example"]
configs:
  "mirror.example:5000":
    auth: {username: site, password: secret}
"""


def _sat_config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "satellite.toml"
    path.write_text(
        '[server]\nlisten = "0.0.0.0:8585"\n'
        '[[upstream]]\nname = "docker.io"\nurl = "https://registry-1.docker.io"\ndefault = true\n'
        + extra
    )
    return path


def test_daemon_json_merged_keeps_other_keys_and_reverts_byte_identically(
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    path = root / "etc/docker/daemon.json"
    path.parent.mkdir(parents=True)
    path.write_bytes(DAEMON_JSON)
    path.chmod(0o600)
    config = _sat_config(tmp_path)

    printed = runtime_config("docker", "--config", str(config), "--root", str(root)).stdout
    assert path.read_bytes() == DAEMON_JSON  # printing writes nothing
    assert "Docker Hub images only" in printed
    out = runtime_config("docker", "--config", str(config), "--root", str(root), "--apply")
    assert "Docker Hub images only" in out.stdout
    doc = json.loads(path.read_bytes())
    assert doc == {
        "log-driver": "journald",
        # the wildcard listen address becomes this machine's loopback address
        "registry-mirrors": ["http://127.0.0.1:8585", "https://mirror.example"],
        "features": {"buildkit": True},
        "insecure-registries": ["127.0.0.1:8585"],
    }
    # a second apply changes nothing and keeps the first backup
    runtime_config("docker", "--config", str(config), "--root", str(root), "--apply")
    assert json.loads(path.read_bytes()) == doc
    runtime_config("docker", "--config", str(config), "--root", str(root), "--revert")
    assert path.read_bytes() == DAEMON_JSON
    assert path.stat().st_mode & 0o777 == 0o600
    assert set(tree(root)) == {"etc/docker/daemon.json"}  # the backups are gone too


@pytest.mark.parametrize("runtime", ["k3s", "rke2"])
def test_registries_yaml_merged_keeps_other_keys_and_reverts_byte_identically(
    runtime: str, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    path = root / f"etc/rancher/{runtime}/registries.yaml"
    path.parent.mkdir(parents=True)
    path.write_bytes(REGISTRIES_YAML)
    config = _sat_config(
        tmp_path, '[[upstream]]\nname = "central"\nurl = "https://harbor.corp:5000"\n'
    )
    runtime_config(
        runtime, "--config", str(config), "--root", str(root),
        "--mirror-url", "http://satellite.site:8585", "--apply",
    )  # fmt: skip
    doc = yaml.safe_load(path.read_bytes())
    assert doc == {
        "mirrors": {
            "docker.io": {
                "endpoint": ["http://satellite.site:8585", "https://mirror.example:5000"]
            },
            "quay.io": {"endpoint": ["https://quay-mirror.example"]},
            "harbor.corp:5000": {
                "endpoint": ["http://satellite.site:8585"],
                "rewrite": {"^(.*)$": "central/$1"},
            },
        },
        "configs": {"mirror.example:5000": {"auth": {"username": "site", "password": "secret"}}},
    }
    runtime_config(runtime, "--config", str(config), "--root", str(root), "--revert")
    assert path.read_bytes() == REGISTRIES_YAML


def test_revert_removes_what_apply_created_and_nothing_else(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc/rancher").mkdir(parents=True)
    (root / "etc/rancher/other").write_text("kept\n")
    config = _sat_config(tmp_path)
    runtime_config("k3s", "--config", str(config), "--root", str(root), "--apply")
    assert yaml.safe_load((root / "etc/rancher/k3s/registries.yaml").read_bytes()) == {
        "mirrors": {"docker.io": {"endpoint": ["http://127.0.0.1:8585"]}}
    }
    runtime_config("k3s", "--config", str(config), "--root", str(root), "--revert")
    assert tree(root) == {"etc/rancher/other": b"kept\n"}
    assert not (root / "etc/rancher/k3s").exists()
    again = runtime_config("k3s", "--config", str(config), "--root", str(root), "--revert")
    assert "nothing to revert" in again.stdout


@pytest.mark.parametrize(
    ("runtime", "existing", "extra_args", "message"),
    [
        ("docker", b"{not json", (), "is not valid JSON"),
        ("docker", b"[1, 2]", (), "expected a JSON object"),
        ("k3s", b"mirrors: [a, b]\n", (), "mirrors must be a mapping"),
        ("k3s", b"mirrors: {\n", (), "is not valid YAML"),
        ("containerd", None, ("--mirror-url", "ftp://x"), "--mirror-url: expected http(s)"),
        ("containerd", None, ("--mirror-url", "http://x:8585/v2"), "no path"),
    ],
)
def test_bad_input_is_refused_with_a_clear_error_and_nothing_written(
    runtime: str, existing: bytes | None, extra_args: tuple[str, ...], message: str, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    target = (
        root
        / {
            "docker": "etc/docker/daemon.json",
            "k3s": "etc/rancher/k3s/registries.yaml",
            "containerd": "etc/containerd/certs.d/docker.io/hosts.toml",
        }[runtime]
    )
    if existing is not None:
        target.parent.mkdir(parents=True)
        target.write_bytes(existing)
    before = tree(root)
    args = ("--config", str(_sat_config(tmp_path)), "--root", str(root), *extra_args)
    done = runtime_config(runtime, *args, "--apply", check=False)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert tree(root) == before


def test_docker_needs_docker_hub_as_the_default_upstream(tmp_path: Path) -> None:
    config = tmp_path / "s.toml"
    config.write_text('[[upstream]]\nname = "ghcr.io"\nurl = "https://ghcr.io"\ndefault = true\n')
    done = runtime_config("docker", "--config", str(config), "--root", str(tmp_path), check=False)
    assert done.returncode == 2
    assert "Docker mirrors Docker Hub only" in done.stderr
    config.write_text(
        '[[upstream]]\nname = "ghcr.io"\nurl = "https://ghcr.io"\ndefault = true\n'
        '[[upstream]]\nname = "docker.io"\nurl = "https://registry-1.docker.io"\n'
    )
    done = runtime_config("docker", "--config", str(config), "--root", str(tmp_path), check=False)
    assert done.returncode == 2
    assert "make the Docker Hub upstream 'docker.io' the default" in done.stderr


def test_no_upstream_is_a_clear_error(tmp_path: Path) -> None:
    done = runtime_config("podman", "--root", str(tmp_path), check=False)
    assert done.returncode == 2
    assert "no [[upstream]]" in done.stderr


def test_mirror_url_and_routing_prefix_per_upstream() -> None:
    assert rc.default_mirror_url("0.0.0.0", 8585) == "http://127.0.0.1:8585"
    assert rc.default_mirror_url("::", 8585) == "http://127.0.0.1:8585"
    assert rc.default_mirror_url("fd00::5", 80) == "http://[fd00::5]:80"
    assert rc.parse_mirror_url("https://sat.site:443/") == "https://sat.site:443"
    found = rc.mirrors(
        [
            UpstreamConfig("central", "https://harbor.corp"),
            UpstreamConfig("hub", "https://registry-1.docker.io", default=True),
            UpstreamConfig("ghcr.io", "https://ghcr.io"),
        ]
    )
    assert [(m.registry, m.prefix) for m in found] == [
        ("docker.io", "hub"),  # the default first: short names resolve to it
        ("harbor.corp", "central"),
        ("ghcr.io", None),
    ]
    with pytest.raises(rc.RuntimeConfigError, match="not a registry host"):
        rc.mirrors([UpstreamConfig("../../etc/cron.d", "https://x.example")])
    with pytest.raises(rc.RuntimeConfigError, match=r"both ghcr\.io"):
        rc.mirrors(
            [UpstreamConfig("ghcr.io", "https://ghcr.io"), UpstreamConfig("x", "https://ghcr.io")]
        )


def test_a_symlinked_target_is_left_alone(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc/docker").mkdir(parents=True)
    real = tmp_path / "daemon.json"
    real.write_bytes(DAEMON_JSON)
    (root / "etc/docker/daemon.json").symlink_to(real)
    args = ("--config", str(_sat_config(tmp_path)), "--root", str(root), "--apply")
    done = runtime_config("docker", *args, check=False)
    assert done.returncode == 2
    assert "is a symbolic link" in done.stderr
    assert real.read_bytes() == DAEMON_JSON
    assert not (root / "var").exists()  # no backup either
