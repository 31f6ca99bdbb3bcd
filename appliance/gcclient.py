"""The satellite's HTTP client for Ground Control's API (docs/groundcontrol.md).

Transport only: bytes in and out, with a byte cap on every answer that is enforced
while reading, never after buffering. Nothing here verifies or trusts anything; the
state and roots it returns go through the contract (``TrustedState``) before use.

Errors::

    GroundControlError          Ground Control answered, and the answer is an error
    └── GroundControlUnreachable  no answer: refused, timed out, cut, DNS, TLS
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from groundcontrol.contract import DEFAULT_ROOT_MAX_BYTES, DEFAULT_STATE_MAX_BYTES

USER_AGENT = "satellite"
# what a request sent on a connection the server was just closing fails with
_STALE_CONNECTION = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)
JSON_MAX_BYTES = 1024 * 1024
REGISTER_MAX_BYTES = DEFAULT_ROOT_MAX_BYTES + DEFAULT_STATE_MAX_BYTES + JSON_MAX_BYTES


class GroundControlError(Exception):
    def __init__(self, message: str, *, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code


class GroundControlUnreachable(GroundControlError):
    """No answer from Ground Control."""


@dataclass(frozen=True)
class StateAnswer:
    """A state long-poll's outcome: new bytes (or None for 304), and whether Ground
    Control honoured ``wait`` (it says so with ``X-State-Wait``)."""

    envelope: bytes | None
    long_poll: bool


def _verify(ca_file: str | None) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=ca_file)


class GroundControlClient:
    def __init__(
        self,
        url: str,
        credential: str | None = None,
        *,
        ca_file: str | None = None,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers = {"User-Agent": USER_AGENT}
        if credential:
            headers["Authorization"] = f"Bearer {credential}"
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._http = httpx.AsyncClient(
            base_url=self.url,
            headers=headers,
            verify=_verify(ca_file),
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            trust_env=False,
            follow_redirects=False,
            # servers close idle connections (hypercorn after 5 s): do not reuse older ones
            limits=httpx.Limits(max_connections=8, keepalive_expiry=4.0),
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> GroundControlClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- one exchange -----------------------------------------------------------------

    async def _exchange(
        self,
        method: str,
        path: str,
        limit: int,
        *,
        content: bytes | None = None,
        params: dict[str, str] | None = None,
        read_timeout: float | None = None,
        retry: bool = True,
    ) -> tuple[httpx.Response, bytes]:
        """One request. ``retry``: resend once when the connection fails before an answer
        (every call but registration is idempotent: states by version, check-ins by seq)."""
        headers = {"Content-Type": "application/json"} if content is not None else {}
        request = self._http.build_request(
            method,
            path,
            content=content,
            params=params,
            headers=headers,
            timeout=(
                httpx.Timeout(read_timeout, connect=10.0)
                if read_timeout
                else httpx.USE_CLIENT_DEFAULT
            ),
        )
        try:
            try:
                response = await self._http.send(request, stream=True)
            except _STALE_CONNECTION:
                if not retry:
                    raise
                # sent on a kept-alive connection the server was closing: one fresh attempt
                response = await self._http.send(request, stream=True)
            try:
                body = await _read_capped(response, limit, f"{method} {path}")
            finally:
                await response.aclose()
        except httpx.TransportError as exc:
            reason = str(exc) or type(exc).__name__
            raise GroundControlUnreachable(f"Ground Control {self.url}: {reason}") from exc
        if response.status_code >= 400:
            raise _error(response, body, f"{method} {path}")
        return response, body

    async def _json(self, method: str, path: str, limit: int = JSON_MAX_BYTES, **kw: Any) -> Any:
        response, body = await self._exchange(method, path, limit, **kw)
        try:
            return json.loads(body)
        except ValueError as exc:
            raise GroundControlError(
                f"{method} {path}: answer is not JSON", status=response.status_code
            ) from exc

    # -- the API ------------------------------------------------------------------------

    async def register(self, token: str, public_key_b64: str) -> dict[str, Any]:
        body = json.dumps({"token": token, "public_key": public_key_b64}).encode()
        data = await self._json(
            "POST", "/api/v1/register", REGISTER_MAX_BYTES, content=body, retry=False
        )
        if not isinstance(data, dict):
            raise GroundControlError("register: answer is not an object")
        return data

    async def state(self, satellite: str, have: int, wait: float = 0) -> StateAnswer:
        params = {"have": str(have)}
        if wait > 0:
            params["wait"] = str(int(wait))
        response, body = await self._exchange(
            "GET",
            f"/api/v1/satellites/{satellite}/state",
            DEFAULT_STATE_MAX_BYTES,
            params=params,
            read_timeout=self.timeout + wait,
        )
        long_poll = wait > 0 and "x-state-wait" in response.headers
        if response.status_code == 304:
            return StateAnswer(None, long_poll)
        if response.status_code != 200:
            raise GroundControlError(
                f"state: unexpected status {response.status_code}", status=response.status_code
            )
        return StateAnswer(body, long_poll)

    async def root_versions(self) -> list[int]:
        data = await self._json("GET", "/api/v1/roots")
        versions = data.get("versions") if isinstance(data, dict) else None
        if not isinstance(versions, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in versions
        ):
            raise GroundControlError("roots: answer has no list of versions")
        return [int(v) for v in versions]

    async def root(self, version: int) -> bytes:
        _, body = await self._exchange("GET", f"/api/v1/roots/{version}", DEFAULT_ROOT_MAX_BYTES)
        return body

    async def post_checkins(self, satellite: str, envelopes: Sequence[bytes]) -> dict[str, Any]:
        # the envelopes go out as the bytes that were signed, framed by a JSON list
        content = b'{"checkins":[' + b",".join(envelopes) + b"]}"
        data = await self._json("POST", f"/api/v1/satellites/{satellite}/checkins", content=content)
        if not isinstance(data, dict) or not isinstance(data.get("acked"), list):
            raise GroundControlError("checkins: answer has no acked list")
        return data

    async def upstream_credentials(self, satellite: str) -> Any:
        data = await self._json("GET", f"/api/v1/satellites/{satellite}/credentials")
        if not isinstance(data, dict):
            raise GroundControlError("credentials: answer is not an object")
        return data.get("upstream_credentials", [])


async def _read_capped(response: httpx.Response, limit: int, what: str) -> bytes:
    length = response.headers.get("content-length", "")
    if length.isascii() and length.isdigit() and len(length) < 19 and int(length) > limit:
        raise GroundControlError(f"{what}: answer of {length} bytes is over {limit}")
    chunks: list[bytes] = []
    total = 0
    async for chunk in response.aiter_bytes():
        total += len(chunk)
        if total > limit:
            raise GroundControlError(f"{what}: answer is over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _error(response: httpx.Response, body: bytes, what: str) -> GroundControlError:
    code = message = None
    try:
        data = json.loads(body)
        error = data.get("error") if isinstance(data, dict) else None
        if isinstance(error, dict):
            code = str(error.get("code"))[:100]
            message = str(error.get("message"))[:500]
    except ValueError:
        pass
    text = f"{code}: {message}" if code else f"HTTP {response.status_code}"
    return GroundControlError(f"{what}: {text}", status=response.status_code, code=code)
