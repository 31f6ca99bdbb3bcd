"""What the upstream registry client raises, and the one place httpx's exceptions are
translated into it (``translated``)::

    UpstreamError                   anything the client raises about the upstream
    ├── UpstreamUnavailable         the link is down: connect errors, timeouts, a connection
    │                               cut mid-transfer, 5xx/429 still there after the retries
    │                               (the circuit breaker counts these)
    ├── UpstreamNotFound            404, or MANIFEST_UNKNOWN / BLOB_UNKNOWN / NAME_UNKNOWN
    ├── UpstreamAuthError           401/403 once the auth flow has had its go
    ├── UpstreamIntegrityError      bytes that do not match the digest asked for or announced
    └── UpstreamProtocolError       anything else unexpected (statuses, headers, sizes, JSON)
        └── UpstreamNotAManifest    a manifest request answered with something else

Also the helpers both the client and the auth flow read answers with: a size-capped body
(``read_limited``) and ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import httpx

from registry_proxy.errors import RegistryError
from registry_proxy.numbers import parse_uint


class UpstreamError(Exception):
    """Base of everything this module raises about the upstream."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class UpstreamUnavailable(UpstreamError):
    """The link is down (or the upstream is overloaded); the circuit breaker counts these."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        refused: bool = False,
    ) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after
        self.refused = refused  # nothing listens there: retrying soon rarely helps


class UpstreamNotFound(UpstreamError):
    """The upstream does not have the repository, manifest or blob."""


class UpstreamAuthError(UpstreamError):
    """The upstream (or its token service) refused us after the auth flow."""


class UpstreamIntegrityError(UpstreamError):
    """The upstream served bytes that do not match the digest asked for or announced."""


class UpstreamProtocolError(UpstreamError):
    """The upstream answered something this client cannot make sense of."""


class UpstreamNotAManifest(UpstreamProtocolError):
    """What the upstream has under that reference is no manifest or index type."""


@contextlib.contextmanager
def translated(what: str) -> Iterator[None]:
    """The one boundary where httpx's exceptions become this module's."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise UpstreamUnavailable(f"{what}: timed out ({type(exc).__name__})") from exc
    except (httpx.NetworkError, httpx.RemoteProtocolError, httpx.ProxyError) as exc:
        # refused, reset, cut mid-body, TLS handshake failed: the link is down for us
        raise UpstreamUnavailable(
            f"{what}: {type(exc).__name__}: {exc}", refused=_is_refused(exc)
        ) from exc
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        # too many redirects, undecodable body, unsupported scheme, bad URL
        raise UpstreamProtocolError(f"{what}: {type(exc).__name__}: {exc}") from exc


def _is_refused(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    for _ in range(8):  # the cause chain through httpcore and anyio is short
        if seen is None:
            return False
        if isinstance(seen, ConnectionRefusedError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def as_registry_error(exc: BaseException, unknown_code: str, reference: str) -> RegistryError:
    """What a client of the satellite is told when going upstream for `reference` failed:
    the protocol's error for each kind of upstream failure (RegistryErrors pass as they are)."""
    if isinstance(exc, RegistryError):
        return exc
    if isinstance(exc, UpstreamNotFound):
        return RegistryError(unknown_code, f"{reference} is not known upstream")
    if isinstance(exc, UpstreamAuthError):
        return RegistryError("DENIED", f"upstream refused access to {reference}: {exc}")
    if isinstance(exc, asyncio.CancelledError):
        return RegistryError("UNAVAILABLE", "the satellite is shutting down")
    return RegistryError("UNAVAILABLE", f"upstream failed for {reference}: {exc}")


# --------------------------------------------------------------------------- answers


class _LimitedStream(httpx.AsyncByteStream):
    """A response stream that refuses to deliver more than `limit` bytes."""

    def __init__(self, inner: httpx.AsyncByteStream, limit: int, what: str) -> None:
        self._inner = inner
        self._limit = limit
        self._what = what

    async def __aiter__(self) -> AsyncIterator[bytes]:
        total = 0
        async for chunk in self._inner:
            total += len(chunk)
            if total > self._limit:
                raise UpstreamProtocolError(f"{self._what}: more than {self._limit} bytes")
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


async def read_limited(response: httpx.Response, limit: int, what: str) -> bytes:
    """The (decoded) body, refused when it is over `limit` bytes. Read with ``aread`` so
    that httpx, which reads every response of an auth flow again, finds it cached."""
    length = response.headers.get("content-length", "")
    declared = parse_uint(length.strip())
    if declared is not None and declared > limit:
        raise UpstreamProtocolError(f"{what}: {length} bytes is over the {limit} byte limit")
    if isinstance(response.stream, httpx.AsyncByteStream):
        response.stream = _LimitedStream(response.stream, limit, what)
    body = await response.aread()
    if len(body) > limit:  # decoded: a small compressed body can grow
        raise UpstreamProtocolError(f"{what}: more than {limit} bytes")
    return body


def retry_after(headers: httpx.Headers) -> float | None:
    """``Retry-After`` in seconds (the HTTP-date form is ignored: backoff applies)."""
    value = headers.get("retry-after", "").strip()
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None
