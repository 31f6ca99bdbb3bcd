"""The satellite's identity in its data dir: who it is in the fleet, and its secrets.

Everything that registration creates lives in one directory, ``<data dir>/fleet.d/<id>``,
reached through the symlink ``<data dir>/fleet``:

    fleet/identity.json        satellite name, Ground Control URL, device keyid    0600
    fleet/device.pem           the device's Ed25519 private key (PKCS8)             0600
    fleet/credential           the satellite's bearer credential                    0600
    fleet/upstreams.json       upstream registry credentials from Ground Control    0600
    fleet/registration.json    the rest of the registration answer (effective config)
    fleet/fleet.db             trust (root chain, applied state), outbox, image results

A registration writes a new directory completely (each file fsynced, then the directory),
then swaps the symlink with one atomic rename: a crash at any instant leaves either the
old identity or the new one, never a mix, and ``--force`` never destroys the old identity
before the new one is in place. Directories are 0700; nothing here is ever logged.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from groundcontrol.contract import ContractError, private_key_from_pem, private_key_to_pem
from registry_proxy.durable import atomic_write, fsync_dir

LINK = "fleet"
DIRS = "fleet.d"
DB_NAME = "fleet.db"


class IdentityError(Exception):
    """The identity in the data dir is missing, unreadable or inconsistent."""


@dataclass(frozen=True)
class UpstreamCredential:
    registry: str  # host[:port]
    username: str
    password: str

    def to_dict(self) -> dict[str, str]:
        return {"registry": self.registry, "username": self.username, "password": self.password}

    @classmethod
    def parse_list(cls, raw: object) -> tuple[UpstreamCredential, ...]:
        if not isinstance(raw, list):
            raise ValueError("upstream_credentials: expected a list")
        result = []
        for item in raw:
            if not isinstance(item, Mapping):
                raise ValueError("upstream_credentials: expected objects")
            values = [item.get(k) for k in ("registry", "username", "password")]
            if not all(isinstance(v, str) and v for v in values):
                raise ValueError("upstream_credentials: registry, username, password needed")
            result.append(cls(*(str(v) for v in values)))
        return tuple(result)


@dataclass(frozen=True)
class Identity:
    satellite: str
    groundcontrol_url: str
    keyid: str
    registered_at: float
    directory: Path
    ca_file: str | None = None

    @property
    def db_path(self) -> Path:
        return self.directory / DB_NAME

    def device_key(self) -> Ed25519PrivateKey:
        try:
            return private_key_from_pem((self.directory / "device.pem").read_bytes())
        except (OSError, ContractError) as exc:
            raise IdentityError(f"device key unreadable: {exc}") from exc

    def credential(self) -> str:
        try:
            return (self.directory / "credential").read_text().strip()
        except OSError as exc:
            raise IdentityError(f"credential unreadable: {exc}") from exc

    def upstream_credentials(self) -> tuple[UpstreamCredential, ...]:
        try:
            raw = json.loads((self.directory / "upstreams.json").read_bytes())
            return UpstreamCredential.parse_list(raw)
        except FileNotFoundError:
            return ()
        except (OSError, ValueError) as exc:
            raise IdentityError(f"upstream credentials unreadable: {exc}") from exc

    def save_upstream_credentials(self, creds: Sequence[UpstreamCredential]) -> None:
        """Replace the stored upstream credentials atomically (0600)."""
        body = json.dumps([c.to_dict() for c in creds], indent=1).encode()
        write_private(self.directory / "upstreams.json", body)


def write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Durable replace of ``path``; the file is created with ``mode`` (secrets: 0600)."""
    atomic_write(path, data, mode)


def link_path(data_dir: Path) -> Path:
    return data_dir / LINK


def load_identity(data_dir: Path) -> Identity | None:
    """The registered identity, or None when this data dir was never registered."""
    link = link_path(data_dir)
    if not link.is_symlink() and not link.exists():
        return None
    directory = link.resolve()
    try:
        raw = json.loads((directory / "identity.json").read_bytes())
        return Identity(
            satellite=str(raw["satellite"]),
            groundcontrol_url=str(raw["groundcontrol_url"]),
            keyid=str(raw["keyid"]),
            registered_at=float(raw["registered_at"]),
            directory=directory,
            ca_file=raw.get("ca_file"),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise IdentityError(f"{link}: identity unreadable: {exc}") from exc


@dataclass(frozen=True)
class NewIdentity:
    """What registration hands to ``install_identity``."""

    satellite: str
    groundcontrol_url: str
    keyid: str
    device_key: Ed25519PrivateKey
    credential: str
    upstream_credentials: tuple[UpstreamCredential, ...]
    registration: Mapping[str, Any]  # the answer minus secrets: config, warnings, root
    ca_file: str | None = None


def stage_identity(data_dir: Path, new: NewIdentity) -> Path:
    """Write a complete identity directory under fleet.d/ (not yet active); returns it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    parent = data_dir / DIRS
    parent.mkdir(mode=0o700, exist_ok=True)
    directory = parent / f"{int(time.time())}-{secrets.token_hex(4)}"
    directory.mkdir(mode=0o700)
    identity = {
        "satellite": new.satellite,
        "groundcontrol_url": new.groundcontrol_url,
        "keyid": new.keyid,
        "registered_at": time.time(),
        "ca_file": new.ca_file,
    }
    write_private(directory / "identity.json", json.dumps(identity, indent=1).encode())
    write_private(directory / "device.pem", private_key_to_pem(new.device_key))
    write_private(directory / "credential", new.credential.encode() + b"\n")
    body = json.dumps([c.to_dict() for c in new.upstream_credentials], indent=1).encode()
    write_private(directory / "upstreams.json", body)
    write_private(
        directory / "registration.json", json.dumps(new.registration, indent=1).encode(), 0o644
    )
    fsync_dir(parent)
    return directory


def activate_identity(data_dir: Path, directory: Path) -> None:
    """Point the ``fleet`` symlink at ``directory`` atomically, then drop the old one."""
    link = link_path(data_dir)
    previous = link.resolve() if link.is_symlink() else None
    tmp_link = data_dir / f".{LINK}.{secrets.token_hex(4)}.tmp"
    os.symlink(Path(DIRS) / directory.name, tmp_link)
    try:
        os.replace(tmp_link, link)
    except BaseException:
        tmp_link.unlink(missing_ok=True)
        raise
    fsync_dir(data_dir)
    if previous is not None and previous != directory.resolve():
        shutil.rmtree(previous, ignore_errors=True)


def sweep_staged(data_dir: Path, min_age: float = 600.0) -> list[Path]:
    """Remove identity directories that the symlink does not point at and that are older
    than ``min_age`` seconds (a registration that crashed before its swap; a young one
    may be a registration under way). Returns what was removed."""
    parent = data_dir / DIRS
    if not parent.is_dir():
        return []
    link = link_path(data_dir)
    active = link.resolve() if link.is_symlink() else None
    removed = []
    now = time.time()
    for child in parent.iterdir():
        if child.resolve() == active:
            continue
        try:
            age = now - child.stat().st_mtime
        except OSError:
            continue
        if age >= min_age:
            shutil.rmtree(child, ignore_errors=True)
            removed.append(child)
    return removed
