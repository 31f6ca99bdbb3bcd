"""Credentials: operator API tokens, satellite credentials, join tokens, dashboard sessions.

All are random secrets (256 bits from :mod:`secrets`) shown once and stored only as
SHA-256 hashes. A slow password hash buys nothing for secrets of that entropy, and a hash
lookup keeps the check constant-time with respect to the secret.

- operator API token ``gco_…``: ``groundcontrol admin token create``; revocable.
- satellite credential ``gcs_…``: issued at registration; replaced by re-registration,
  cleared by revocation.
- join token ``gcj_<id>.<secret>``: one per registration, single use, expiring; the id
  lets failed guesses be counted against the token, which locks after a few.
- dashboard session: a cookie the dashboard's login form sets after the operator pasted
  an operator token; it lives no longer than that token (revoking it ends the session)
  and carries a per-session CSRF token for the dashboard's forms.

The API reads credentials only from ``Authorization: Bearer <token>``: a browser never
attaches that header on its own, so a foreign page cannot borrow an operator's login
(cross-site request forgery). Cookies are read only under ``/dashboard``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from starlette.requests import HTTPConnection

from groundcontrol.errors import Forbidden, Unauthorized
from groundcontrol.store import Queries

OPERATOR_PREFIX = "gco_"
SATELLITE_PREFIX = "gcs_"
JOIN_PREFIX = "gcj_"
MAX_TOKEN_LENGTH = 256


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_operator_token() -> tuple[str, str]:
    """(id, token)."""
    return secrets.token_hex(8), OPERATOR_PREFIX + secrets.token_urlsafe(32)


def new_satellite_credential() -> str:
    return SATELLITE_PREFIX + secrets.token_urlsafe(32)


def new_join_token() -> tuple[str, str]:
    """(id, token); the id is the public half and is stored in clear."""
    token_id = secrets.token_hex(8)
    return token_id, f"{JOIN_PREFIX}{token_id}.{secrets.token_urlsafe(32)}"


def split_join_token(token: str) -> str | None:
    """The id of a well-formed join token, else None."""
    if not token.startswith(JOIN_PREFIX) or len(token) > MAX_TOKEN_LENGTH:
        return None
    token_id, sep, secret = token[len(JOIN_PREFIX) :].partition(".")
    if not sep or not secret or len(token_id) != 16:
        return None
    try:
        bytes.fromhex(token_id)
    except ValueError:
        return None
    return token_id


def same_hash(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def bearer_token(conn: HTTPConnection) -> str | None:
    """The token of ``Authorization: Bearer``; any other scheme carries nothing."""
    header = conn.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer" and value:
        return value if len(value) <= MAX_TOKEN_LENGTH else None
    return None


@dataclass(frozen=True)
class Operator:
    token_id: str
    name: str


@dataclass(frozen=True)
class SatellitePrincipal:
    name: str


Principal = Operator | SatellitePrincipal


async def authenticate(q: Queries, token: str | None, now: int) -> Principal | None:
    """Who holds this token, if anyone (revoked tokens and satellites hold nothing)."""
    if token is None:
        return None
    if token.startswith(OPERATOR_PREFIX):
        row = await q.api_token_by_hash(hash_token(token))
        if row is None:
            return None
        await q.touch_api_token(row["id"], now)
        return Operator(row["id"], row["name"])
    if token.startswith(SATELLITE_PREFIX):
        name = await q.satellite_by_credential(hash_token(token))
        return None if name is None else SatellitePrincipal(name)
    return None


def require_operator(principal: Principal | None) -> Operator:
    if principal is None:
        raise Unauthorized("an operator API token is required")
    if not isinstance(principal, Operator):
        raise Forbidden("this route is for operators")
    return principal


def require_satellite(principal: Principal | None, name: str) -> Principal:
    """The satellite itself, or an operator; nobody else."""
    if principal is None:
        raise Unauthorized("a satellite credential or an operator API token is required")
    if isinstance(principal, SatellitePrincipal) and principal.name != name:
        raise Forbidden("a satellite may only use its own routes")
    return principal


def require_own_satellite(principal: Principal | None, name: str) -> SatellitePrincipal:
    """Only the satellite itself (check-ins are signed by it; operators cannot post them)."""
    if principal is None:
        raise Unauthorized("a satellite credential is required")
    if not isinstance(principal, SatellitePrincipal) or principal.name != name:
        raise Forbidden("only the satellite itself may use this route")
    return principal


# --- dashboard sessions ----------------------------------------------------------------

SESSION_COOKIE = "gc_session"


@dataclass(frozen=True)
class Session:
    id_hash: str
    operator: Operator
    csrf: str

    def csrf_matches(self, value: str) -> bool:
        return hmac.compare_digest(value.encode(), self.csrf.encode())


async def open_session(q: Queries, token: str, now: int, ttl: int) -> tuple[str, Session] | None:
    """A new session for a valid operator token: (cookie value, session); else None."""
    principal = await authenticate(q, token, now)
    if not isinstance(principal, Operator):
        return None
    cookie, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    id_hash = hash_token(cookie)
    await q.insert_dashboard_session(id_hash, principal.token_id, csrf, now, now + ttl)
    return cookie, Session(id_hash, principal, csrf)


async def session_of(q: Queries, conn: HTTPConnection, now: int) -> Session | None:
    cookie = conn.cookies.get(SESSION_COOKIE, "")
    if not cookie or len(cookie) > MAX_TOKEN_LENGTH:
        return None
    id_hash = hash_token(cookie)
    row = await q.dashboard_session(id_hash, now)
    if row is None:
        return None
    return Session(id_hash, Operator(row["token_id"], row["name"]), row["csrf"])


def over_tls(conn: HTTPConnection) -> bool:
    """The browser's side of the connection is TLS: served over TLS, or by a proxy that
    says so in ``X-Forwarded-Proto`` (a header no cross-site form can set)."""
    forwarded = conn.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return conn.url.scheme == "https" or forwarded == "https"


def own_origin(conn: HTTPConnection) -> str:
    scheme = "https" if over_tls(conn) else "http"
    return f"{scheme}://{conn.headers.get('host', '')}"


def same_origin(conn: HTTPConnection) -> bool:
    """The request says it comes from a page of this server: its ``Origin``, else the
    origin of its ``Referer``. A request that names neither is refused (browsers send
    ``Origin`` with every form post)."""
    origin = conn.headers.get("origin")
    if origin is None:
        referer = conn.headers.get("referer", "")
        scheme, sep, rest = referer.partition("://")
        if not sep:
            return False
        origin = f"{scheme}://{rest.split('/', 1)[0]}"
    return hmac.compare_digest(origin.encode(), own_origin(conn).encode())
