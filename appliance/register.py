"""`satellite register`: join the fleet with a one-time join token.

Fetch → verify → persist, in that order: the device key is made here and never leaves
the machine; the root in Ground Control's answer is verified (trust on first use, or
pinned to root keyids the operator gave out of band); the first state, if any, is
verified against it; only then is the identity written, as one atomic swap (identity.py).
Any failure leaves the data dir as it was.
"""

from __future__ import annotations

import shutil
import socket
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from appliance.fleetdb import FleetDB
from appliance.gcclient import GroundControlClient, GroundControlError
from appliance.identity import (
    Identity,
    IdentityError,
    NewIdentity,
    UpstreamCredential,
    activate_identity,
    load_identity,
    stage_identity,
)
from groundcontrol.contract import (
    ContractError,
    TrustedState,
    canonical_json,
    generate_key,
    keyid,
    public_key_b64,
)

ADMIN_SOCKET = "admin.sock"


class RegistrationError(Exception):
    """Registration failed; the message is one line for the operator."""


def daemon_running(data_dir: Path) -> bool:
    """True when a `satellite run` answers on this data dir's admin socket."""
    path = data_dir / ADMIN_SOCKET
    if not path.exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


def _envelope_bytes(value: object, what: str) -> bytes:
    # The envelope arrives as a JSON object inside the answer; its payload is base64, so
    # re-encoding the envelope leaves the signed bytes untouched.
    if not isinstance(value, dict):
        raise RegistrationError(f"Ground Control's answer has no {what} envelope")
    try:
        return canonical_json(value)
    except (TypeError, ValueError) as exc:
        raise RegistrationError(f"Ground Control's {what} envelope is not JSON: {exc}") from exc


async def register(
    data_dir: Path,
    url: str,
    token: str,
    *,
    root_keyids: Sequence[str] = (),
    force: bool = False,
    ca_file: str | None = None,
    now: datetime | None = None,
) -> tuple[Identity, list[str]]:
    """Register this data dir with Ground Control. Returns the identity and warnings."""
    if not url.startswith(("http://", "https://")):
        raise RegistrationError(f"--ground-control: expected an http(s) URL, got {url!r}")
    try:
        existing = load_identity(data_dir)
    except IdentityError as exc:
        existing = None
        if not force:
            raise RegistrationError(f"{exc}; pass --force to replace it") from exc
    if existing is not None and not force:
        raise RegistrationError(
            f"{data_dir} is already registered as {existing.satellite!r} with"
            f" {existing.groundcontrol_url}; pass --force to replace that identity"
        )
    if daemon_running(data_dir):
        raise RegistrationError(f"a satellite is running on {data_dir}; stop it before registering")
    device_key = generate_key()
    async with GroundControlClient(url, ca_file=ca_file) as client:
        try:
            answer = await client.register(token, public_key_b64(device_key.public_key()))
        except GroundControlError as exc:
            raise RegistrationError(f"registration refused: {exc}") from exc
    return await _persist(data_dir, url, answer, device_key, root_keyids, ca_file, now)


async def _persist(
    data_dir: Path,
    url: str,
    answer: dict[str, Any],
    device_key: Any,
    root_keyids: Sequence[str],
    ca_file: str | None,
    now: datetime | None,
) -> tuple[Identity, list[str]]:
    now = now or datetime.now(UTC)
    satellite = answer.get("satellite")
    credential = answer.get("credential")
    if not isinstance(satellite, str) or not isinstance(credential, str):
        raise RegistrationError("Ground Control's answer lacks the satellite name or credential")
    if answer.get("keyid") != keyid(device_key.public_key()):
        raise RegistrationError("Ground Control registered another key than this device's")
    warnings = [str(w) for w in answer.get("warnings") or []]
    root_bytes = _envelope_bytes(answer.get("root"), "root")
    try:
        trust = TrustedState.first_use(satellite, root_bytes, now, root_keyids)
    except ContractError as exc:
        raise RegistrationError(f"the trust root failed verification: {exc}") from exc
    state: tuple[int, bytes] | None = None
    if answer.get("state") is not None:
        state_bytes = _envelope_bytes(answer["state"], "state")
        try:
            doc = trust.update_state(state_bytes, now)
            state = (doc.version, state_bytes)
        except ContractError as exc:
            warnings.append(f"state: refused ({exc}); it will be fetched again")
    try:
        upstream_credentials = UpstreamCredential.parse_list(
            answer.get("upstream_credentials") or []
        )
    except ValueError as exc:
        warnings.append(f"upstream credentials ignored: {exc}")
        upstream_credentials = ()
    public = {k: v for k, v in answer.items() if k not in ("credential", "upstream_credentials")}
    new = NewIdentity(
        satellite=satellite,
        groundcontrol_url=url.rstrip("/"),
        keyid=keyid(device_key.public_key()),
        device_key=device_key,
        credential=credential,
        upstream_credentials=upstream_credentials,
        registration=public,
        ca_file=ca_file,
    )
    staged: Path | None = None
    try:
        staged = stage_identity(data_dir, new)
        async with FleetDB(staged / "fleet.db") as db:
            await db.save_trust([(trust.root.version, root_bytes)], state, now.timestamp())
        activate_identity(data_dir, staged)
    except Exception as exc:
        if staged is not None:
            shutil.rmtree(staged, ignore_errors=True)
        raise RegistrationError(
            f"registered with Ground Control as {satellite!r}, but the identity could not be"
            f" stored in {data_dir}: {exc}. The join token is spent: ask the operator for a"
            " new one (`groundcontrol satellite join-token`)"
        ) from exc
    identity = load_identity(data_dir)
    assert identity is not None
    return identity, warnings
