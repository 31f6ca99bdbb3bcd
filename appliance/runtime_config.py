"""Points a site's container runtimes at this satellite, and takes it back exactly.

Two halves. `render` is pure: the satellite's upstreams, the URL the runtimes should use
and the bytes now in the runtime's files in; the new bytes of each file and the notes an
operator must read out. `apply` and `revert` are the only writers: `apply` keeps the
bytes (or the absence) of every file it replaces in a backup directory before the first
change, and `revert` puts those bytes back, so a revert restores exactly what was there
whatever happened in between; a crash at any instant leaves each file old or new, never
torn (temp file, fsync, rename, fsync of the directory).

Per runtime (paths under `--root`, `/` by default):

    containerd   etc/containerd/certs.d/<registry host>/hosts.toml   one per upstream
    crio         etc/containers/registries.conf.d/50-satellite.conf  [[registry.mirror]]
    podman       etc/containers/registries.conf.d/50-satellite.conf  (same format)
    docker       etc/docker/daemon.json                              merged: registry-mirrors
    k3s          etc/rancher/k3s/registries.yaml                     merged: mirrors
    rke2         etc/rancher/rke2/registries.yaml                    merged: mirrors

How each upstream is addressed: a runtime pulls `<registry host>/<repo>` and the
satellite routes by containerd's `?ns=<registry host>` or by a first path segment naming
the upstream. When the upstream's name is the registry host (`docker.io`, `ghcr.io`)
the mirror is the satellite itself; otherwise (`name = "central"`, url
`https://harbor.corp`) the runtime is told to put `central/` in front of the repository
(containerd `override_path`, k3s `rewrite`). CRI-O and podman send no `?ns=`, so their
mirror location always carries the upstream's name as a path. Docker mirrors Docker Hub
only, through the satellite's default upstream.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import yaml

from appliance.config import UpstreamConfig
from registry_proxy import names
from registry_proxy.durable import atomic_write, fsync_dir
from registry_proxy.routing import UpstreamName

RUNTIMES = ("containerd", "crio", "podman", "docker", "k3s", "rke2")
DOCKER_HUB = "docker.io"
CONTAINERD_CERTS_D = PurePosixPath("etc/containerd/certs.d")
CONTAINERS_DROP_IN = PurePosixPath("etc/containers/registries.conf.d/50-satellite.conf")
DOCKER_DAEMON_JSON = PurePosixPath("etc/docker/daemon.json")
RANCHER_REGISTRIES = {
    "k3s": PurePosixPath("etc/rancher/k3s/registries.yaml"),
    "rke2": PurePosixPath("etc/rancher/rke2/registries.yaml"),
}
BACKUP_DIR = PurePosixPath("var/backups/satellite/runtime-config")
HEADER = "written by `satellite runtime-config {runtime}`; `--revert` restores what was here"


class RuntimeConfigError(ValueError):
    """Nothing can be written: bad input, or a present file that cannot be merged."""


@dataclass(frozen=True)
class Mirror:
    """Where one upstream's images are found on the satellite, as a runtime sees it."""

    registry: str  # the host in the runtime's image references: docker.io, harbor.corp:5000
    upstream: UpstreamConfig
    prefix: str | None  # a first path segment the satellite routes by, when ns cannot

    @property
    def server(self) -> str:
        """The registry's own address, containerd's fallback when the satellite is down."""
        return self.upstream.url


@dataclass(frozen=True)
class RuntimeConfig:
    """What `apply` writes: relative path -> new bytes, and what to tell the operator."""

    runtime: str
    files: Mapping[PurePosixPath, bytes]
    notes: Sequence[str] = field(default_factory=tuple)


Reader = Callable[[PurePosixPath], bytes | None]


def parse_mirror_url(value: str) -> str:
    """`http(s)://host[:port]`, no path: the address the runtimes use for the satellite."""
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RuntimeConfigError(f"--mirror-url: expected http(s)://HOST[:PORT], got {value!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise RuntimeConfigError(f"--mirror-url: expected no path or query, got {value!r}")
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError:
        raise RuntimeConfigError(f"--mirror-url: bad port in {value!r}") from None
    return f"{parts.scheme}://{parts.netloc}"


def default_mirror_url(host: str, port: int) -> str:
    """The satellite's own listen address; a wildcard listen means "this machine"."""
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _is_hub(upstream: UpstreamConfig) -> bool:
    return UpstreamName(upstream.name, upstream.url).is_docker_hub


def _looks_like_host(name: str) -> bool:
    # the reference grammar's rule for a first component that is a registry domain
    return "." in name or ":" in name or name == "localhost"


def mirrors(upstreams: Sequence[UpstreamConfig]) -> list[Mirror]:
    """One Mirror per upstream, the default upstream first (short names resolve to it)."""
    if not upstreams:
        raise RuntimeConfigError(
            "the satellite has no [[upstream]]: nothing for a runtime to mirror "
            "(add upstreams to its config or pass the same --config as `satellite run`)"
        )
    result: list[Mirror] = []
    seen: dict[str, str] = {}
    for upstream in sorted(upstreams, key=lambda u: not u.default):
        if _is_hub(upstream):
            registry = DOCKER_HUB
        elif _looks_like_host(upstream.name):
            registry = upstream.name
        else:
            registry = urlsplit(upstream.url).netloc.rpartition("@")[2]
        if not names.is_registry_host(registry):
            # it names a directory (certs.d/<host>) and a TOML/YAML key: nothing else fits
            raise RuntimeConfigError(
                f"upstream {upstream.name!r}: {registry!r} is not a registry host[:port]"
            )
        if registry in seen:
            raise RuntimeConfigError(
                f"upstreams {seen[registry]!r} and {upstream.name!r} are both {registry}: "
                "a runtime can mirror a registry to one place only"
            )
        seen[registry] = upstream.name
        prefix = None if registry == upstream.name else upstream.name
        result.append(Mirror(registry=registry, upstream=upstream, prefix=prefix))
    return result


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string of printable text is a TOML basic string


def _plain_http(mirror_url: str) -> bool:
    return mirror_url.startswith("http://")


def _netloc(mirror_url: str) -> str:
    return urlsplit(mirror_url).netloc


# --------------------------------------------------------------------------- containerd


def containerd_hosts_toml(mirror: Mirror, mirror_url: str) -> bytes:
    host = mirror_url if mirror.prefix is None else f"{mirror_url}/v2/{mirror.prefix}"
    lines = [
        f"# {HEADER.format(runtime='containerd')}",
        f"server = {_toml_str(mirror.server)}",
        "",
        f"[host.{_toml_str(host)}]",
        '  capabilities = ["pull", "resolve"]',
    ]
    if mirror.prefix is not None:
        # containerd would add /v2 itself; the path above already holds it
        lines.append("  override_path = true")
    return ("\n".join(lines) + "\n").encode()


def _containerd_notes(read: Reader) -> list[str]:
    """Whether containerd's own config reads certs.d, and the exact line if it does not."""
    certs = f"/{CONTAINERD_CERTS_D}"
    config = read(PurePosixPath("etc/containerd/config.toml"))
    text = (config or b"").decode("utf-8", "replace")
    if f'config_path = "{certs}"' in text or f"config_path = '{certs}'" in text:
        return [f"/etc/containerd/config.toml already reads {certs}: no restart needed"]
    v2_section = '[plugins."io.containerd.grpc.v1.cri".registry]'
    v3_section = '[plugins."io.containerd.cri.v1.images".registry]'
    if "version = 3" in text:
        which, section, other = "containerd 2.x (config version 3)", v3_section, v2_section
    else:
        which, section, other = "containerd 1.6/1.7 (config version 2)", v2_section, v3_section
    return [
        f"containerd reads these files only when its config sets config_path; for {which} "
        f'add to /etc/containerd/config.toml:\n    {section}\n      config_path = "{certs}"\n'
        f"  then `systemctl restart containerd` (the other config version uses {other}; "
        f"`ctr images pull` needs `--hosts-dir {certs}`)"
    ]


def render_containerd(
    mirror_url: str, upstreams: Sequence[UpstreamConfig], read: Reader
) -> RuntimeConfig:
    files = {
        CONTAINERD_CERTS_D / m.registry / "hosts.toml": containerd_hosts_toml(m, mirror_url)
        for m in mirrors(upstreams)
    }
    return RuntimeConfig("containerd", files, _containerd_notes(read))


# --------------------------------------------------------------------------- CRI-O, podman


def registries_conf(mirror_url: str, upstreams: Sequence[UpstreamConfig], runtime: str) -> bytes:
    """A containers-registries.conf(5) v2 drop-in; the default upstream leads the search list
    so that a short name (`nginx:1`) resolves through the satellite too."""
    found = mirrors(upstreams)
    search = ", ".join(_toml_str(m.registry) for m in found)
    lines = [f"# {HEADER.format(runtime=runtime)}", f"unqualified-search-registries = [{search}]"]
    for m in found:
        # these clients send no ?ns=: the upstream is always named by the first segment
        location = f"{_netloc(mirror_url)}/{m.upstream.name}"
        lines += [
            "",
            "[[registry]]",
            f"prefix = {_toml_str(m.registry)}",
            f"location = {_toml_str(m.registry)}",
            "",
            "[[registry.mirror]]",
            f"location = {_toml_str(location)}",
        ]
        if _plain_http(mirror_url):
            lines.append("insecure = true")
    return ("\n".join(lines) + "\n").encode()


def render_containers(
    runtime: str, mirror_url: str, upstreams: Sequence[UpstreamConfig], read: Reader
) -> RuntimeConfig:
    notes = [
        "registries.conf.d drop-ins are read at each pull by podman, skopeo and buildah; "
        "CRI-O reads them at start: `systemctl reload crio` (or restart)"
        if runtime == "crio"
        else "podman, skopeo and buildah read registries.conf.d drop-ins at each pull",
        "the drop-in sets unqualified-search-registries: short names resolve through "
        "the satellite's upstreams, the default one first",
    ]
    return RuntimeConfig(
        runtime, {CONTAINERS_DROP_IN: registries_conf(mirror_url, upstreams, runtime)}, notes
    )


# --------------------------------------------------------------------------- docker


def _load_json_object(data: bytes | None, path: PurePosixPath) -> dict[str, Any]:
    if data is None or not data.strip():
        return {}
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RuntimeConfigError(f"/{path} is not valid JSON ({exc}); not touching it") from None
    if not isinstance(doc, dict):
        raise RuntimeConfigError(f"/{path}: expected a JSON object; not touching it")
    return doc


def _string_list(doc: Mapping[str, Any], key: str, path: PurePosixPath) -> list[str]:
    value = doc.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RuntimeConfigError(f"/{path}: {key} must be a list of strings; not touching it")
    return list(value)


def merge_daemon_json(current: bytes | None, mirror_url: str) -> bytes:
    """daemon.json with the satellite first in registry-mirrors; every other key kept."""
    doc = _load_json_object(current, DOCKER_DAEMON_JSON)
    found = _string_list(doc, "registry-mirrors", DOCKER_DAEMON_JSON)
    doc["registry-mirrors"] = [mirror_url, *(m for m in found if m.rstrip("/") != mirror_url)]
    if _plain_http(mirror_url):
        insecure = _string_list(doc, "insecure-registries", DOCKER_DAEMON_JSON)
        if _netloc(mirror_url) not in insecure:
            doc["insecure-registries"] = [*insecure, _netloc(mirror_url)]
    return (json.dumps(doc, indent=2) + "\n").encode()


def render_docker(
    mirror_url: str, upstreams: Sequence[UpstreamConfig], read: Reader
) -> RuntimeConfig:
    hub = [m for m in mirrors(upstreams) if m.registry == DOCKER_HUB]
    if not hub:
        raise RuntimeConfigError(
            "Docker mirrors Docker Hub only, and this satellite has no Docker Hub upstream "
            "(name or url docker.io / registry-1.docker.io)"
        )
    if not hub[0].upstream.default:
        raise RuntimeConfigError(
            "Docker mirrors Docker Hub only and sends no registry name with its requests: "
            f"make the Docker Hub upstream {hub[0].upstream.name!r} the default upstream"
        )
    others = [m.registry for m in mirrors(upstreams) if m.registry != DOCKER_HUB]
    notes = [
        "Docker uses registry-mirrors for Docker Hub images only; "
        + (
            f"images of {', '.join(others)} are pulled from those registries directly "
            "(name them as <satellite>/<upstream>/<repo> to go through the satellite)"
            if others
            else "other registries are pulled from directly"
        ),
        "Docker reads daemon.json at start: `systemctl restart docker`",
    ]
    merged = merge_daemon_json(read(DOCKER_DAEMON_JSON), mirror_url)
    return RuntimeConfig("docker", {DOCKER_DAEMON_JSON: merged}, notes)


# --------------------------------------------------------------------------- k3s, rke2


def merge_registries_yaml(
    current: bytes | None, path: PurePosixPath, mirror_url: str, upstreams: Sequence[UpstreamConfig]
) -> bytes:
    """registries.yaml with the satellite first in each mirrored registry's endpoints;
    `configs` and every other key kept (comments are not: YAML round trips drop them)."""
    doc: Any = {}
    if current is not None and current.strip():
        try:
            doc = yaml.safe_load(current)
        except yaml.YAMLError as exc:
            raise RuntimeConfigError(
                f"/{path} is not valid YAML ({exc}); not touching it"
            ) from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise RuntimeConfigError(f"/{path}: expected a mapping at the top; not touching it")
    table = doc.setdefault("mirrors", {})
    if not isinstance(table, dict):
        raise RuntimeConfigError(f"/{path}: mirrors must be a mapping; not touching it")
    for m in mirrors(upstreams):
        entry = table.get(m.registry) or {}
        if not isinstance(entry, dict):
            raise RuntimeConfigError(f"/{path}: mirrors.{m.registry} must be a mapping")
        endpoints = entry.get("endpoint") or []
        if not isinstance(endpoints, list) or not all(isinstance(e, str) for e in endpoints):
            raise RuntimeConfigError(f"/{path}: mirrors.{m.registry}.endpoint must be a list")
        entry["endpoint"] = [mirror_url, *(e for e in endpoints if e.rstrip("/") != mirror_url)]
        if m.prefix is not None:
            entry["rewrite"] = {"^(.*)$": f"{m.prefix}/$1"}
        table[m.registry] = entry
    text = yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)
    return text.encode()


def render_rancher(
    runtime: str, mirror_url: str, upstreams: Sequence[UpstreamConfig], read: Reader
) -> RuntimeConfig:
    path = RANCHER_REGISTRIES[runtime]
    merged = merge_registries_yaml(read(path), path, mirror_url, upstreams)
    notes = [
        f"{runtime} turns registries.yaml into containerd hosts.toml files at start: "
        f"`systemctl restart {runtime}{'-server' if runtime == 'rke2' else ''}` "
        "(agents too)"
    ]
    return RuntimeConfig(runtime, {path: merged}, notes)


def render(
    runtime: str, mirror_url: str, upstreams: Sequence[UpstreamConfig], read: Reader
) -> RuntimeConfig:
    """The files that point `runtime` at the satellite at `mirror_url`. Pure: `read` gives
    the present bytes of a path relative to the root (None when there is no file)."""
    mirror_url = parse_mirror_url(mirror_url)
    if runtime == "containerd":
        return render_containerd(mirror_url, upstreams, read)
    if runtime in ("crio", "podman"):
        return render_containers(runtime, mirror_url, upstreams, read)
    if runtime == "docker":
        return render_docker(mirror_url, upstreams, read)
    if runtime in RANCHER_REGISTRIES:
        return render_rancher(runtime, mirror_url, upstreams, read)
    raise RuntimeConfigError(f"unknown runtime {runtime!r} (known: {', '.join(RUNTIMES)})")


# --------------------------------------------------------------------------- on disk


def reader(root: Path) -> Reader:
    """Reads paths relative to `root`; a missing file is None."""

    def read(path: PurePosixPath) -> bytes | None:
        try:
            return (root / path).read_bytes()
        except FileNotFoundError:
            return None
        except IsADirectoryError:
            raise RuntimeConfigError(f"{root / path} is a directory") from None

    return read


def _backup_dir(root: Path, runtime: str) -> Path:
    return root / BACKUP_DIR / runtime


def _manifest(root: Path, runtime: str) -> dict[str, Any]:
    path = _backup_dir(root, runtime) / "manifest.json"
    try:
        doc: dict[str, Any] = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {"runtime": runtime, "files": {}}
    except ValueError as exc:
        raise RuntimeConfigError(f"{path}: unreadable backup manifest ({exc})") from None
    return doc


def _mkdirs(path: Path, created: list[str], root: Path) -> None:
    """Creates the missing parents of `path`, noting each one for revert to remove."""
    missing: list[Path] = []
    parent = path.parent
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    for directory in reversed(missing):
        directory.mkdir(mode=0o755)
        fsync_dir(directory.parent)
        created.append(str(directory.relative_to(root)))


def apply(root: Path, config: RuntimeConfig) -> list[Path]:
    """Writes `config` under `root` after backing up what each file held. Applying again
    keeps the first backup, so `revert` always returns to the state before the first apply."""
    backups = _backup_dir(root, config.runtime)
    manifest = _manifest(root, config.runtime)
    files: dict[str, Any] = manifest["files"]
    created: list[str] = list(manifest.get("created_dirs", []))
    for rel in config.files:
        if (root / rel).is_symlink():
            # replacing a link with a file could not be undone byte for byte, nor be meant
            raise RuntimeConfigError(f"{root / rel} is a symbolic link; not touching it")
    for rel in config.files:
        key = str(rel)
        if key in files:
            continue
        target = root / rel
        if target.is_file():
            backup = backups / f"{len(files)}.orig"
            atomic_write(backup, target.read_bytes(), mode=0o600)
            files[key] = {"backup": backup.name, "mode": target.stat().st_mode & 0o7777}
        else:
            files[key] = {"backup": None}
    for rel in config.files:
        _mkdirs(root / rel, created, root)
    manifest["created_dirs"] = created
    # the manifest is durable before the first file changes: a crash in between is revertible
    atomic_write(backups / "manifest.json", json.dumps(manifest, indent=2).encode(), mode=0o600)
    written = []
    for rel, data in config.files.items():
        entry = files[str(rel)]
        mode = entry.get("mode", 0o644)
        atomic_write(root / rel, data, mode=mode)
        os.chmod(root / rel, mode)  # as it was, whatever the umask
        written.append(root / rel)
    return written


def revert(root: Path, runtime: str) -> list[Path]:
    """Puts back the bytes (or the absence) of every file `apply` changed for `runtime`,
    then removes the directories it created and its backups. Nothing applied: nothing done."""
    backups = _backup_dir(root, runtime)
    if not (backups / "manifest.json").exists():
        return []
    manifest = _manifest(root, runtime)
    restored = []
    for key, entry in manifest["files"].items():
        target = root / key
        if entry["backup"] is None:
            if target.exists():
                target.unlink()
                fsync_dir(target.parent)
        else:
            data = (backups / entry["backup"]).read_bytes()
            atomic_write(target, data, mode=entry["mode"])
            os.chmod(target, entry["mode"])
        restored.append(target)
    for rel in reversed(manifest.get("created_dirs", [])):
        directory = root / rel
        if directory.is_dir() and not any(directory.iterdir()):
            directory.rmdir()
    shutil.rmtree(backups)
    fsync_dir(backups.parent)
    return restored


def describe(config: RuntimeConfig) -> str:
    """The files and notes as text, for printing without --apply."""
    out: list[str] = []
    for rel, data in config.files.items():
        out += [f"# ---- /{rel}", data.decode("utf-8").rstrip("\n"), ""]
    out += [f"# note: {note}" for note in config.notes]
    return "\n".join(out) + "\n"
