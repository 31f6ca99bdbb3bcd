"""Zero-touch registration: a one-time join token and a fresh device key in, identity out.

1. the operator creates a satellite and a join token (shown once; stored as a hash;
   expiring; single use);
2. the satellite POSTs the token and its freshly generated Ed25519 public key;
3. Ground Control checks, in order: the source's attempt rate (before reading the body),
   the token's form, its hash
   (a wrong secret counts against the token, which locks after a few), that it is unused
   and unexpired, that the satellite is not revoked; then atomically marks the token used
   and records the key and a new credential;
4. the answer carries the identity, the credential (shown once), the trust root, the
   current signed state, and the upstream credentials the satellite needs (``join``).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from groundcontrol import satellite_credentials
from groundcontrol.auth import (
    hash_token,
    new_join_token,
    new_satellite_credential,
    same_hash,
    split_join_token,
)
from groundcontrol.config import Config
from groundcontrol.contract import ContractError, keyid, load_public_key_b64
from groundcontrol.errors import (
    BadRequest,
    Forbidden,
    GroundControlError,
    TooManyRequests,
    Unauthorized,
)
from groundcontrol.keys import root_envelope
from groundcontrol.models import Satellite, effective_config
from groundcontrol.publish import Published
from groundcontrol.services import Services
from groundcontrol.store import Queries, Store

log = logging.getLogger("groundcontrol")
RATE_WINDOW = 60


def invalid_token() -> Unauthorized:
    return Unauthorized("join token is invalid, used, expired or locked", code="invalid_join_token")


async def create_join_token(
    store: Store, config: Config, name: str, now: float, ttl: int | None = None
) -> dict[str, Any]:
    token_id, token = new_join_token()
    expires = int(now) + (ttl or config.join_token_ttl)
    async with store.transaction() as q:
        sat = await q.satellite(name)
        if sat.revoked_at is not None:
            raise Forbidden(f"satellite {name} is revoked", code="satellite_revoked")
        await q.insert_join_token(token_id, name, hash_token(token), int(now), expires)
    return {"satellite": name, "token": token, "token_id": token_id, "expires_at": expires}


async def enrol(
    s: Services,
    name: str,
    groups: tuple[str, ...],
    labels: dict[str, str],
    config: dict[str, Any],
    ttl: int | None,
    now: float,
) -> tuple[Satellite, dict[str, Any], list[Published]]:
    """Creates a satellite, publishes its first state and makes its first join token:
    (the satellite, the token as ``create_join_token`` gives it, what was published)."""

    async def mutate(q: Queries) -> tuple[None, list[str]]:
        await q.insert_satellite(name, groups, labels, config, int(now))
        return None, [name]

    _, published = await s.publisher.run(mutate, now)
    token = await create_join_token(s.store, s.config, name, now, ttl)
    async with s.store.transaction() as q:
        sat = await q.satellite(name)
    return sat, token, published


async def count_attempt(store: Store, config: Config, source: str, now: float) -> None:
    """Counts a registration attempt from `source` and refuses it past the rate limit.
    Called before the body is read: a client trickling its body is counted at once."""
    stamp = int(now)
    async with store.transaction() as q:
        attempts = await q.count_register_attempt(source, stamp - stamp % RATE_WINDOW)
    if attempts > config.register_rate_limit:
        raise TooManyRequests("too many registration attempts from this address; wait a minute")


async def register(
    store: Store, config: Config, source: str, body: Any, now: float
) -> tuple[str, str, str]:
    """Check everything but the rate (``count_attempt``, done before the body is read);
    return (satellite name, credential, device keyid)."""
    stamp = int(now)
    if not isinstance(body, dict):
        raise BadRequest("expected an object with token and public_key")
    token, public_key = body.get("token"), body.get("public_key")
    if not isinstance(token, str):
        raise BadRequest("token is required")
    if not isinstance(public_key, str):
        raise BadRequest("public_key (base64 raw Ed25519) is required", code="invalid_public_key")
    token_id = split_join_token(token)
    if token_id is None:
        raise invalid_token()
    async with store.transaction() as q:
        row = await q.join_token(token_id)
        if row is None:
            raise invalid_token()
        if not same_hash(row["token_hash"], hash_token(token)):
            await q.count_join_token_failure(token_id)
            wrong = True
        else:
            wrong = False
    if wrong:
        raise invalid_token()
    try:
        device_key = load_public_key_b64(public_key)
    except ContractError:
        raise BadRequest(
            "public_key must be a base64 raw Ed25519 key", code="invalid_public_key"
        ) from None
    credential = new_satellite_credential()
    kid = keyid(device_key)
    async with store.transaction() as q:
        sat = await q.satellite(row["satellite"])
        if sat.revoked_at is not None:
            raise Forbidden(f"satellite {sat.name} is revoked", code="satellite_revoked")
        if not await q.use_join_token(token_id, stamp, config.join_token_max_failures):
            raise invalid_token()
        await q.register_satellite(sat.name, public_key, kid, hash_token(credential), stamp)
    return sat.name, credential, kid


async def join(s: Services, source: str, body: Any, now: float) -> dict[str, Any]:
    """Registers a satellite (``register``; its attempt counted already) and answers
    with everything it needs to start: identity, credential, trust root, state, upstream
    credentials, effective config. The join token is spent and the credential exists
    only in this answer: what fails after registering (the registry, Harbor) is a
    warning in the answer, not an error that would lose it; the satellite fetches its
    state and credentials again with the credential."""
    name, credential, kid = await register(s.store, s.config, source, body, now)
    root = await root_envelope(s.store)
    warnings: list[str] = []
    state: dict[str, Any] | None = None
    creds: list[dict[str, Any]] = []
    try:
        state = (await s.publisher.state_for_read(name, now))[1]
    except GroundControlError as exc:
        warnings.append(f"state: {exc.code}: {exc.message}")
    try:
        creds = await satellite_credentials.for_satellite(s, name, now)
    except GroundControlError as exc:
        warnings.append(f"upstream_credentials: {exc.code}: {exc.message}")
    for warning in warnings:
        log.warning("registration of %s: %s", name, warning)
    async with s.store.transaction() as q:
        sat = await q.satellite(name)
    return {
        "satellite": name,
        "keyid": kid,
        "credential": credential,
        "root": json.loads(root),
        "state": json.loads(state["envelope"]) if state else None,
        "upstream_credentials": creds,
        "config": effective_config(s.config, sat.config).to_dict(),
        "warnings": warnings,
    }
