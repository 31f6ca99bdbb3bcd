"""Ground Control's signing keys and its trust root.

Where the keys live (the choice, and why): private keys are files under
``<data_dir>/keys/`` — ``root-<keyid>.pem`` and ``state-<keyid>.pem``, PKCS8 PEM, mode
0600 in a 0700 directory, each written to a temp file, fsynced and renamed into place.
The *public* side, the signed trust root, lives in the database (``roots``), so every
Ground Control process sharing the database serves the same chain.

- ``serve`` needs only the state keys named by the current root. Root keys are used by
  ``groundcontrol keys init|rotate`` alone and may be moved offline afterwards.
- Several processes sharing one PostgreSQL share the keys directory too (a read-only
  mount of the same secret); a process that lacks a state key of the current root
  refuses to sign (``signing_unavailable``) rather than sign with something else.

The trust root follows TUF: root keys + threshold, state keys + threshold, a version, an
expiry. Rotation N → N+1 is signed by a threshold of the old root keys *and* of the new
ones (:func:`groundcontrol.contract.verify_root` checks both).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from groundcontrol.contract import (
    Envelope,
    Root,
    generate_key,
    keyid,
    private_key_from_pem,
    private_key_to_pem,
    public_key_b64,
    sign_root,
    verify_root,
)
from groundcontrol.errors import BadRequest, Conflict, NotFound, Unavailable
from groundcontrol.store import Queries, Store
from registry_proxy.durable import atomic_write

Role = Literal["root", "state"]
ROOT_EXPIRES = timedelta(days=365)


class KeyStore:
    """Private keys on disk, one PEM file per key, named by role and keyid."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _ensure_dir(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.directory, 0o700)

    def generate(self, role: Role) -> Ed25519PrivateKey:
        key = generate_key()
        self._ensure_dir()
        path = self.directory / f"{role}-{keyid(key.public_key())}.pem"
        atomic_write(path, private_key_to_pem(key), mode=0o600)
        return key

    def load(self, role: Role, kid: str) -> Ed25519PrivateKey | None:
        path = self.directory / f"{role}-{kid}.pem"
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        key = private_key_from_pem(data)
        if keyid(key.public_key()) != kid:
            raise Unavailable(f"{path}: holds another key than its name says", code="bad_key_file")
        return key

    def load_many(self, role: Role, kids: Iterable[str]) -> list[Ed25519PrivateKey]:
        return [k for k in (self.load(role, kid) for kid in sorted(kids)) if k is not None]

    def remove(self, role: Role, kid: str) -> None:
        (self.directory / f"{role}-{kid}.pem").unlink(missing_ok=True)


def _public_map(keys: Iterable[Ed25519PrivateKey]) -> dict[str, str]:
    return {keyid(k.public_key()): public_key_b64(k.public_key()) for k in keys}


def to_datetime(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


@dataclass(frozen=True)
class TrustedRoot:
    root: Root
    envelope: bytes


async def current_root(store: Store) -> TrustedRoot | None:
    async with store.transaction() as q:
        return await root_in(q)


async def root_in(q: Queries) -> TrustedRoot | None:
    """The current root, read in the caller's transaction."""
    text = await q.root()
    if text is None:
        return None
    data = text.encode()
    # the stored bytes were produced here; parse them through the verifier all the same
    root = _parse_stored_root(data)
    return TrustedRoot(root, data)


async def root_envelope(store: Store, version: int | None = None) -> str:
    """The signed root of ``version`` (None: the latest) as stored, for satellites."""
    async with store.transaction() as q:
        text = await q.root(version)
    if text is None:
        raise NotFound("no such trust root version", code="root_not_found")
    return text


def _parse_stored_root(data: bytes) -> Root:
    envelope = Envelope.from_json(data, max_bytes=len(data))
    return Root.from_dict(json.loads(envelope.payload))


def _check_threshold(role: str, count: int, threshold: int) -> None:
    """Refuses a key count and threshold no root could have, before keys are made."""
    if count < 1 or not 1 <= threshold <= count:
        raise BadRequest(
            f"{role} keys: the threshold must be between 1 and the number of keys "
            f"({count}), got {threshold}",
            code="invalid_threshold",
        )


async def init_trust(
    store: Store,
    keys: KeyStore,
    now: float,
    *,
    root_keys: int = 1,
    root_threshold: int = 1,
    state_keys: int = 1,
    state_threshold: int = 1,
    expires: timedelta = ROOT_EXPIRES,
) -> TrustedRoot:
    """Create root version 1 with fresh keys; a database that has a root keeps it."""
    _check_threshold("root", root_keys, root_threshold)
    _check_threshold("state", state_keys, state_threshold)
    existing = await current_root(store)
    if existing is not None:
        return existing
    roots = [keys.generate("root") for _ in range(root_keys)]
    states = [keys.generate("state") for _ in range(state_keys)]
    root = Root(
        version=1,
        expires=to_datetime(now) + expires,
        root_keys=_public_map(roots),
        root_threshold=root_threshold,
        state_keys=_public_map(states),
        state_threshold=state_threshold,
    )
    envelope = sign_root(root, roots).to_json()
    verify_root(envelope, None, to_datetime(now))
    try:
        async with store.transaction() as q:
            await q.insert_root(1, envelope.decode(), int(now))
    except Conflict:
        # another process initialised trust first: its root wins, our keys are unused
        for k in roots:
            keys.remove("root", keyid(k.public_key()))
        for k in states:
            keys.remove("state", keyid(k.public_key()))
        winner = await current_root(store)
        assert winner is not None
        return winner
    return TrustedRoot(root, envelope)


async def rotate(
    store: Store,
    keys: KeyStore,
    role: Role,
    now: float,
    *,
    count: int | None = None,
    threshold: int | None = None,
    expires: timedelta = ROOT_EXPIRES,
) -> TrustedRoot:
    """Publish root N+1 with fresh keys for ``role`` (or the same keys, renewed expiry).

    ``role="state"`` replaces the state keys; ``role="root"`` replaces the root keys. The
    new root is signed by the old root keys and (for a root rotation) the new ones; both
    thresholds must be met by keys present in the key directory.
    """
    trusted = await current_root(store)
    if trusted is None:
        raise Unavailable("no trust root yet: run `groundcontrol keys init`", code="no_root")
    old = trusted.root
    old_root_keys = keys.load_many("root", old.root_keys)
    if len(old_root_keys) < old.root_threshold:
        raise Unavailable(
            f"rotation needs {old.root_threshold} of the current root keys in {keys.directory}, "
            f"found {len(old_root_keys)}",
            code="root_keys_unavailable",
        )
    n = count or len(old.root_keys if role == "root" else old.state_keys)
    current = old.root_threshold if role == "root" else old.state_threshold
    _check_threshold(role, n, threshold or min(current, n))  # before any key is written
    new_root_keys = old_root_keys
    root_keys_map, root_threshold = dict(old.root_keys), old.root_threshold
    state_keys_map, state_threshold = dict(old.state_keys), old.state_threshold
    if role == "root":
        new_root_keys = [keys.generate("root") for _ in range(n)]
        root_keys_map = _public_map(new_root_keys)
        root_threshold = threshold or min(old.root_threshold, n)
    else:
        state_keys_map = _public_map(keys.generate("state") for _ in range(n))
        state_threshold = threshold or min(old.state_threshold, n)
    new = Root(
        version=old.version + 1,
        expires=to_datetime(now) + expires,
        root_keys=root_keys_map,
        root_threshold=root_threshold,
        state_keys=state_keys_map,
        state_threshold=state_threshold,
    )
    signers = old_root_keys + [k for k in new_root_keys if k not in old_root_keys]
    envelope = sign_root(new, signers).to_json()
    verify_root(envelope, old, to_datetime(now))  # refuse to publish what satellites refuse
    async with store.transaction() as q:
        await q.insert_root(new.version, envelope.decode(), int(now))
    return TrustedRoot(new, envelope)


class Signer:
    """The state keys of the current root, loaded from the key directory, cached per root."""

    def __init__(self, keys: KeyStore) -> None:
        self.keys = keys
        self._cached: tuple[int, list[Ed25519PrivateKey]] | None = None

    async def state_keys(self, q: Queries) -> tuple[Root, list[Ed25519PrivateKey]]:
        trusted = await root_in(q)
        if trusted is None:
            raise Unavailable(
                "no trust root: run `groundcontrol keys init`", code="signing_unavailable"
            )
        root = trusted.root
        if self._cached is None or self._cached[0] != root.version:
            loaded = self.keys.load_many("state", root.state_keys)
            if len(loaded) < root.state_threshold:
                raise Unavailable(
                    f"root version {root.version} needs {root.state_threshold} state key(s); "
                    f"{len(loaded)} found in {self.keys.directory}",
                    code="signing_unavailable",
                )
            self._cached = (root.version, loaded[: root.state_threshold])
        return root, self._cached[1]
