"""Registry authentication as an httpx auth flow: anonymous, Basic, and the Bearer token
challenge of distribution and Docker Hub; and the ``WWW-Authenticate`` parser every
registry client of the project uses (the satellite's upstream client, Ground Control's
image resolver and its oras-py state-artifact push).
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
from collections.abc import AsyncGenerator, Callable, Generator
from dataclasses import dataclass

import httpx

from registry_proxy import strict_json
from registry_proxy.upstream.errors import (
    UpstreamAuthError,
    UpstreamProtocolError,
    UpstreamUnavailable,
    read_limited,
    retry_after,
)

USER_AGENT = "satellite/0.1"
MAX_TOKEN_BODY = 1024 * 1024
DEFAULT_TOKEN_LIFETIME = 60.0  # distribution's token spec: expires_in defaults to 60 s
TOKEN_EXPIRY_MARGIN = 10.0  # renew this long before a token expires (at most half its life)


@dataclass(frozen=True)
class Challenge:
    scheme: str  # lower-cased
    params: dict[str, str]


_TOKEN_CHARS = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_SCHEME_RE = re.compile(rf"[\s,]*({_TOKEN_CHARS})(?=\s|,|$)")
_PARAM_RE = re.compile(rf'[\s,]*({_TOKEN_CHARS})\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,]*)')
_ESCAPE_RE = re.compile(r"\\(.)")


def parse_challenges(values: list[str]) -> list[Challenge]:
    """``WWW-Authenticate`` header values → challenges (RFC 9110 §11.6.1): quoted values
    may hold commas and escapes; one value may carry several challenges."""
    out: list[Challenge] = []
    for value in values:
        pos = 0
        current: Challenge | None = None
        while pos < len(value):
            if current is not None and (param := _PARAM_RE.match(value, pos)):
                raw = param.group(2)
                if raw.startswith('"'):
                    raw = _ESCAPE_RE.sub(r"\1", raw[1:-1])
                current.params.setdefault(param.group(1).lower(), raw)
                pos = param.end()
                continue
            scheme = _SCHEME_RE.match(value, pos)
            if scheme is None:
                break  # token68 or garbage: keep what was understood
            current = Challenge(scheme.group(1).lower(), {})
            out.append(current)
            pos = scheme.end()
    return out


_REPO_PATH = re.compile(r"/v2/(.+)/(?:manifests|blobs|tags|referrers)/[^/]*$")


def _pull_scope(url: httpx.URL) -> str | None:
    """The token scope a registry request needs: ``repository:<name>:pull``."""
    match = _REPO_PATH.search(url.path)
    return f"repository:{match.group(1)}:pull" if match else None


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return (url.scheme, url.host, url.port)


TokenKey = tuple[str, str, str]  # (realm, service, scope)


@dataclass(frozen=True)
class _Token:
    value: str
    renew_at: float


class RegistryAuth(httpx.Auth):
    """Anonymous, Basic and Bearer-token auth for registries, as an httpx auth flow.

    Bearer (distribution's token spec, as Docker Hub does it): a 401 with
    ``WWW-Authenticate: Bearer realm=...,service=...,scope=...`` makes the flow yield
    ``GET realm?service=...&scope=...`` (scope from the challenge, else
    ``repository:<repo>:pull``; with Basic credentials when configured), take ``token``
    or ``access_token`` from the JSON, and retry the original request once. Tokens are
    cached per (realm, service, scope) until ``expires_in`` (default 60 s) less a margin;
    once an origin has challenged, later requests carry a cached (or freshly fetched)
    token up front, so a warm pull costs no 401 round trip.

    The flow is an async generator (``async_auth_flow``), httpx's hook for flows that
    read a body or take a lock: the token response has to be read inside the flow, and
    a lock per scope makes concurrent requests share one token fetch. The token request
    is yielded, so it goes through the same client and transport as everything else.
    """

    def __init__(
        self,
        username: str | None = None,
        password: str | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._basic: str | None = None
        self._clock = clock
        self._basic_origins: set[tuple[str, str, int | None]] = set()
        self._bearer_origins: dict[tuple[str, str, int | None], tuple[str, str]] = {}
        self._tokens: dict[TokenKey, _Token] = {}
        self._locks: dict[TokenKey, asyncio.Lock] = {}
        self.set_credentials(username, password)

    def set_credentials(self, username: str | None, password: str | None) -> None:
        """Use new credentials from the next request on (rotated by Ground Control);
        tokens fetched with the old ones are dropped."""
        basic = None
        if username is not None:
            raw = f"{username}:{password or ''}".encode()
            basic = "Basic " + base64.b64encode(raw).decode("ascii")
        if basic != self._basic:
            self._basic = basic
            self._tokens.clear()

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response]:
        raise RuntimeError("RegistryAuth works with httpx.AsyncClient only")

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        origin = _origin(request.url)
        scope = _pull_scope(request.url) or ""
        sent: str | None = None

        known = self._bearer_origins.get(origin)
        if known is not None:
            key = (*known, scope)
            async with self._lock(key):
                sent = self._cached(key)
                if sent is None:
                    token_response = yield self._token_request(key, request)
                    sent = await self._store_token(key, token_response)
            request.headers["Authorization"] = f"Bearer {sent}"
        elif self._basic is not None and origin in self._basic_origins:
            request.headers["Authorization"] = self._basic

        response = yield request
        if response.status_code != 401:
            return

        challenges = parse_challenges(response.headers.get_list("www-authenticate"))
        bearer = next((c for c in challenges if c.scheme == "bearer"), None)
        if bearer is not None and bearer.params.get("realm"):
            realm, service = bearer.params["realm"], bearer.params.get("service", "")
            self._bearer_origins[origin] = (realm, service)
            key = (realm, service, bearer.params.get("scope") or scope)
            async with self._lock(key):
                token = self._cached(key)
                if token is None or token == sent:  # the token just refused is no good
                    self._tokens.pop(key, None)
                    token_response = yield self._token_request(key, request)
                    token = await self._store_token(key, token_response)
            request.headers["Authorization"] = f"Bearer {token}"
            yield request  # once: a second 401 is the caller's UpstreamAuthError
            return

        if (
            self._basic is not None
            and any(c.scheme == "basic" for c in challenges)
            and request.headers.get("Authorization") != self._basic
        ):
            self._basic_origins.add(origin)
            request.headers["Authorization"] = self._basic
            yield request

    def _lock(self, key: TokenKey) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    def _cached(self, key: TokenKey) -> str | None:
        token = self._tokens.get(key)
        if token is None or self._clock() >= token.renew_at:
            return None
        return token.value

    def _token_request(self, key: TokenKey, original: httpx.Request) -> httpx.Request:
        realm, service, scope = key
        url = httpx.URL(realm)
        if url.scheme not in ("http", "https"):
            raise UpstreamProtocolError(f"Bearer challenge with a bad realm {realm[:200]!r}")
        params = {name: value for name, value in (("service", service), ("scope", scope)) if value}
        headers = {"User-Agent": original.headers.get("User-Agent", USER_AGENT)}
        if self._basic is not None:
            headers["Authorization"] = self._basic
        # a request yielded by a flow gets no client defaults: carry the timeouts over
        return httpx.Request(
            "GET",
            url.copy_merge_params(params),
            headers=headers,
            extensions={"timeout": original.extensions.get("timeout", {})},
        )

    async def _store_token(self, key: TokenKey, response: httpx.Response) -> str:
        realm = key[0]
        status = response.status_code
        if status in (401, 403):
            raise UpstreamAuthError(
                f"token service {realm} refused the credentials (HTTP {status})", status=status
            )
        if status == 429 or status >= 500:
            raise UpstreamUnavailable(
                f"token service {realm}: HTTP {status}",
                status=status,
                retry_after=retry_after(response.headers),
            )
        if status != 200:
            raise UpstreamProtocolError(f"token service {realm}: HTTP {status}", status=status)
        body = await read_limited(response, MAX_TOKEN_BODY, f"token from {realm}")
        try:
            doc = strict_json.loads(body)
        except ValueError:
            raise UpstreamProtocolError(f"token service {realm}: not JSON") from None
        token = doc.get("token") or doc.get("access_token") if isinstance(doc, dict) else None
        if not isinstance(token, str) or not token:
            raise UpstreamProtocolError(f"token service {realm}: no token in the answer")
        expires_in = doc.get("expires_in")
        lifetime = (
            float(expires_in)
            if isinstance(expires_in, int | float)
            and not isinstance(expires_in, bool)
            and expires_in > 0
            else DEFAULT_TOKEN_LIFETIME
        )
        now = self._clock()
        for stale in [k for k, t in self._tokens.items() if now >= t.renew_at]:
            del self._tokens[stale]
        self._tokens[key] = _Token(token, now + lifetime - min(TOKEN_EXPIRY_MARGIN, lifetime / 2))
        return token
