"""The client the pull-through proxy (and Ground Control's image resolver) uses to talk
to one OCI registry.

One ``UpstreamClient`` per configured upstream holds one pooled ``httpx.AsyncClient``
(HTTP/1.1), whose transport sends blob GETs over ``BlobTransport``'s lean connections
(blob_transport.py) and everything else over httpcore. It fetches manifests (verified
against the digest asked for and the digest the upstream announces), answers HEADs,
streams blobs (with ``Range`` to resume), and pings. Repository names are passed through
as given: the Docker Hub ``library/`` rule belongs to the router.

httpx's exceptions are translated in exactly one place, ``errors.translated()``; nothing
else here names one. Invalid repository names and references are refused with
``RegistryError`` (the protocol error of the local API) before anything is sent.

Retries: connection errors, timeouts, 5xx and 429 are retried with exponential backoff
and jitter (``Retry-After`` in seconds wins, capped by ``max_backoff``), at most
``retries`` times, and only before any body byte was handed to the caller: a manifest
is read whole inside an attempt; a blob is retried until its response headers are in,
never once ``open_blob`` has yielded. ``ping`` is a probe and makes a single attempt.

Auth (``auth.RegistryAuth``): anonymous; Basic, sent only to an origin that asked for it
with a ``WWW-Authenticate: Basic`` challenge (and from then on proactively); and the
Bearer token flow of distribution/Docker Hub. Credentials never follow a redirect to
another origin (httpx drops ``Authorization`` there; blob storage is commonly a CDN).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx

from registry_proxy import strict_json
from registry_proxy.blob_transport import BLOB_BODY, BlobTransport
from registry_proxy.digest import Digest
from registry_proxy.errors import RegistryError
from registry_proxy.manifest import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    MANIFEST_TYPES,
    MAX_MANIFEST_BYTES,
    OCI_INDEX,
    OCI_MANIFEST,
)
from registry_proxy.names import parse_reference, validate_name
from registry_proxy.numbers import DIGITS, parse_uint
from registry_proxy.upstream.auth import USER_AGENT, RegistryAuth
from registry_proxy.upstream.errors import (
    UpstreamAuthError,
    UpstreamIntegrityError,
    UpstreamNotAManifest,
    UpstreamNotFound,
    UpstreamProtocolError,
    UpstreamUnavailable,
    read_limited,
    retry_after,
    translated,
)

log = logging.getLogger("satellite.upstream")
T = TypeVar("T")

MANIFEST_ACCEPT = ", ".join((OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST))
NOT_FOUND_CODES = frozenset({"MANIFEST_UNKNOWN", "BLOB_UNKNOWN", "NAME_UNKNOWN"})
MAX_ERROR_BODY = 64 * 1024  # error bodies are read for their message, no further
MAX_REDIRECTS = 5


@dataclass(frozen=True)
class Timeouts:
    """Per-phase socket timeouts, and the total budget of a manifest lookup by tag."""

    connect: float = 3.0
    read: float = 30.0
    write: float = 30.0
    pool: float = 5.0
    manifest_total: float = 5.0  # tag lookups (and pings) answer quickly or fall back


@dataclass(frozen=True)
class UpstreamManifest:
    body: bytes
    media_type: str
    digest: Digest  # computed over `body`


@dataclass(frozen=True)
class UpstreamHead:
    digest: Digest
    media_type: str
    size: int


class UpstreamBlob:
    """An open blob response. ``offset`` is where its bytes start in the blob (0 when the
    server ignored our ``Range``); ``size`` is the whole blob's size when the server said.

    The bytes are not verified here: the caller hashes them (it also holds the bytes
    before ``offset`` that a resumed transfer does not see again).
    """

    def __init__(self, response: httpx.Response, what: str, offset: int, size: int | None) -> None:
        self._response = response
        self._what = what
        self.offset = offset
        self.size = size

    async def chunks(self) -> AsyncIterator[bytes]:
        """The raw bytes as they arrive (BlobTransport hands out up to 1 MiB at a time,
        so the caller's per-chunk work does not dominate a fast link); a cut connection
        raises UpstreamUnavailable."""
        async for piece in self.pieces():
            yield bytes(piece)

    async def pieces(self) -> AsyncIterator[bytes | memoryview]:
        """As ``chunks``, without a copy: a piece may be a view of the connection's
        buffer, valid only until the next one is asked for (the cache fill hashes and
        writes each piece before it asks)."""
        with translated(self._what):
            async for piece in self._response.aiter_raw():
                yield piece


def _header_digest(headers: httpx.Headers) -> Digest | None:
    value = headers.get("docker-content-digest")
    if not value:
        return None
    try:
        return Digest.parse(value.strip())
    except RegistryError:
        return None  # an algorithm we do not know: nothing to check against


def _media_type(headers: httpx.Headers) -> str | None:
    value = headers.get("content-type", "").split(";", 1)[0].strip()
    return value if value in MANIFEST_TYPES else None


def _body_media_type(body: bytes) -> str | None:
    try:
        doc = strict_json.loads(body)
    except ValueError:
        return None
    value = doc.get("mediaType") if isinstance(doc, dict) else None
    return value if isinstance(value, str) and value in MANIFEST_TYPES else None


def _int_header(headers: httpx.Headers, name: str) -> int | None:
    return parse_uint(headers.get(name, "").strip())


_CONTENT_RANGE = re.compile(rf"bytes +({DIGITS})-({DIGITS})/({DIGITS}|\*)")


@dataclass(frozen=True)
class _Reply:
    headers: httpx.Headers
    body: bytes


class UpstreamClient:
    """One upstream registry: manifests, blobs and pings over one pooled connection set."""

    def __init__(
        self,
        name: str,
        url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        ca_file: Path | None = None,
        timeouts: Timeouts = Timeouts(),
        retries: int = 3,
        backoff: float = 0.2,
        max_backoff: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if retries < 0 or backoff < 0 or max_backoff < 0:
            raise ValueError("retries, backoff and max_backoff must not be negative")
        self.name = name
        self.url = url.rstrip("/")
        self.timeouts = timeouts
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.auth = RegistryAuth(username, password, clock=clock)
        self._random = random.Random()
        # the system's CAs (not certifi's), or only the configured CA
        verify = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        if transport is None:
            # blob bodies over BlobTransport's lean connections, the rest over httpcore
            inner = httpx.AsyncHTTPTransport(
                verify=verify, http1=True, http2=False, trust_env=False
            )
            transport = BlobTransport(inner, verify)
        self._http = httpx.AsyncClient(
            base_url=self.url,
            auth=self.auth,
            verify=verify,
            http1=True,
            http2=False,
            timeout=httpx.Timeout(
                connect=timeouts.connect,
                read=timeouts.read,
                write=timeouts.write,
                pool=timeouts.pool,
            ),
            follow_redirects=True,
            max_redirects=MAX_REDIRECTS,
            trust_env=False,  # no proxy or CA settings picked up from the environment
            headers={"User-Agent": USER_AGENT},
            transport=transport,
        )

    async def __aenter__(self) -> UpstreamClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # ------------------------------------------------------------------ operations

    async def get_manifest(
        self,
        repo: str,
        reference: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (None: the default budget)
    ) -> UpstreamManifest:
        """The manifest as stored upstream, verified against a digest reference and
        against the ``Docker-Content-Digest`` the upstream announces.

        ``timeout`` bounds the whole lookup, retries included; by default a tag lookup
        gets ``timeouts.manifest_total`` and a digest lookup only the per-phase timeouts.
        """
        ref = parse_reference(reference)
        path = f"/v2/{validate_name(repo)}/manifests/{reference}"
        async with self._deadline(self._budget(ref, timeout), f"GET {path}"):
            return await self._get_manifest(path, ref)

    async def head_manifest(
        self,
        repo: str,
        reference: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (None: the default budget)
    ) -> UpstreamHead:
        """Digest, media type and size of a manifest; falls back to a GET when the HEAD
        lacks ``Docker-Content-Digest``, ``Content-Length`` or a manifest media type."""
        ref = parse_reference(reference)
        path = f"/v2/{validate_name(repo)}/manifests/{reference}"
        async with self._deadline(self._budget(ref, timeout), f"HEAD {path}"):
            reply = await self._retrying(
                lambda: self._manifest_exchange("HEAD", path),
                retry_refused=isinstance(ref, Digest),
            )
            announced = _header_digest(reply.headers)
            if isinstance(ref, Digest):
                if announced is not None and announced != ref:
                    raise UpstreamIntegrityError(
                        f"{self.name}: HEAD {path}: upstream announced {announced}"
                    )
                announced = ref
            media_type = _media_type(reply.headers)
            size = _int_header(reply.headers, "content-length")
            if announced is not None and media_type is not None and size is not None:
                return UpstreamHead(announced, media_type, size)
            manifest = await self._get_manifest(path, ref)
            return UpstreamHead(manifest.digest, manifest.media_type, len(manifest.body))

    async def get_referrers(self, repo: str, digest: Digest) -> bytes | None:
        """``GET /v2/<repo>/referrers/<digest>``: the image index listing the manifests
        that refer to ``digest``; None when the upstream has no referrers API (404), in
        which case the caller falls back to the referrers tag schema."""
        path = f"/v2/{validate_name(repo)}/referrers/{digest}"
        what = f"{self.name}: GET {path}"

        async def attempt() -> bytes:
            async with self._exchange("GET", path, {"Accept": OCI_INDEX}) as response:
                await self._raise_for_status(response, what)
                return await read_limited(response, MAX_MANIFEST_BYTES, what)

        async with self._deadline(self.timeouts.manifest_total, what):
            try:
                return await self._retrying(attempt)
            except UpstreamNotFound:
                return None

    @contextlib.asynccontextmanager
    async def open_blob(
        self, repo: str, digest: Digest, *, offset: int = 0
    ) -> AsyncIterator[UpstreamBlob]:
        """``GET /v2/<repo>/blobs/<digest>``, from ``offset`` on (``Range``) when > 0.

        Retried until the response headers are in; once this yields, a cut connection
        surfaces from ``chunks()`` as UpstreamUnavailable and resuming is the caller's.
        """
        if offset < 0:
            raise ValueError("offset must not be negative")
        path = f"/v2/{validate_name(repo)}/blobs/{digest}"
        what = f"{self.name}: GET {path}"
        # identity: the bytes on the wire must be the blob's bytes, to hash and to range
        headers = {"Accept-Encoding": "identity"}
        if offset > 0:
            headers["Range"] = f"bytes={offset}-"

        async def attempt() -> tuple[contextlib.AsyncExitStack, UpstreamBlob]:
            stack = contextlib.AsyncExitStack()
            try:
                response = await stack.enter_async_context(
                    self._exchange("GET", path, headers, extensions={BLOB_BODY: True})
                )
                await self._raise_for_status(response, what)
                blob = self._blob(response, what, offset)
            except BaseException:
                await stack.aclose()
                raise
            return stack, blob

        stack, blob = await self._retrying(attempt)
        async with stack:
            yield blob

    async def ping(
        self,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (None: the default budget)
    ) -> None:
        """``GET /v2/``: returns when the upstream answers as a registry (401 counts).
        A single attempt within ``timeout`` (default ``timeouts.manifest_total``)."""
        what = f"{self.name}: GET /v2/"
        budget = timeout if timeout is not None else self.timeouts.manifest_total
        async with (
            self._deadline(budget, "GET /v2/"),
            self._exchange("GET", "/v2/", {}, auth=False) as response,
        ):
            status = response.status_code
            if 200 <= status < 300 or status == 401:
                return
            if status == 404:
                raise UpstreamProtocolError(f"{what}: HTTP 404: not a registry", status=status)
            await self._raise_for_status(response, what)
            raise UpstreamProtocolError(f"{what}: HTTP {status}", status=status)

    # ------------------------------------------------------------------ the machinery

    @contextlib.asynccontextmanager
    async def _exchange(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        *,
        auth: bool = True,
        extensions: dict[str, object] | None = None,
    ) -> AsyncIterator[httpx.Response]:
        """One request/response (auth flow and redirects included), response streamed and
        closed on exit; httpx errors inside the block come out translated."""
        with translated(f"{self.name}: {method} {path}"):
            request = self._http.build_request(method, path, headers=headers, extensions=extensions)
            response = await self._http.send(
                request, stream=True, auth=httpx.USE_CLIENT_DEFAULT if auth else None
            )
            try:
                yield response
            finally:
                await response.aclose()

    async def _retrying(
        self, attempt: Callable[[], Awaitable[T]], *, retry_refused: bool = True
    ) -> T:
        """Retries unavailability with backoff. A refused connection on a tag lookup is
        not retried: the caller has a local answer, and an offline site should get it
        at once rather than after the whole lookup budget."""
        for n in range(self.retries + 1):
            try:
                return await attempt()
            except UpstreamUnavailable as exc:
                if n >= self.retries or (exc.refused and not retry_refused):
                    raise
                delay = self._delay(n, exc.retry_after)
                log.debug("upstream %s: %s; retry %d in %.2fs", self.name, exc, n + 1, delay)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(self.max_backoff, retry_after)
        ceiling = min(self.max_backoff, self.backoff * 2.0**attempt)
        return ceiling / 2 + self._random.uniform(0, ceiling / 2)

    def _budget(self, ref: str | Digest, timeout: float | None) -> float | None:
        if timeout is not None:
            return timeout
        return None if isinstance(ref, Digest) else self.timeouts.manifest_total

    @contextlib.asynccontextmanager
    async def _deadline(self, seconds: float | None, what: str) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(seconds):
                yield
        except TimeoutError:
            raise UpstreamUnavailable(
                f"{self.name}: {what}: no answer within {seconds:g}s"
            ) from None

    async def _raise_for_status(self, response: httpx.Response, what: str) -> None:
        status = response.status_code
        if 200 <= status < 300:
            return
        codes: set[str] = set()
        messages: list[str] = []
        if status >= 400 and response.request.method != "HEAD":
            body = await self._error_body(response)
            codes, messages = _error_codes(body)
        text = f"{what}: HTTP {status}" + (f": {'; '.join(messages)[:500]}" if messages else "")
        if status == 429 or status >= 500:
            raise UpstreamUnavailable(
                text, status=status, retry_after=retry_after(response.headers)
            )
        if status == 404 or codes & NOT_FOUND_CODES:
            raise UpstreamNotFound(text, status=status)
        if status in (401, 403):
            raise UpstreamAuthError(text, status=status)
        raise UpstreamProtocolError(text, status=status)

    @staticmethod
    async def _error_body(response: httpx.Response) -> bytes:
        parts: list[bytes] = []
        total = 0
        async for chunk in response.aiter_bytes():
            parts.append(chunk)
            total += len(chunk)
            if total >= MAX_ERROR_BODY:
                break
        return b"".join(parts)[:MAX_ERROR_BODY]

    async def _manifest_exchange(self, method: str, path: str) -> _Reply:
        what = f"{self.name}: {method} {path}"
        async with self._exchange(method, path, {"Accept": MANIFEST_ACCEPT}) as response:
            await self._raise_for_status(response, what)
            if response.status_code != 200:
                raise UpstreamProtocolError(f"{what}: HTTP {response.status_code}")
            body = b""
            if method != "HEAD":
                body = await read_limited(response, MAX_MANIFEST_BYTES, what)
            return _Reply(response.headers, body)

    async def _get_manifest(self, path: str, ref: str | Digest) -> UpstreamManifest:
        what = f"{self.name}: GET {path}"
        reply = await self._retrying(
            lambda: self._manifest_exchange("GET", path), retry_refused=isinstance(ref, Digest)
        )
        body = reply.body
        algorithm = ref.algorithm if isinstance(ref, Digest) else "sha256"
        digest = Digest.of(body, algorithm)
        if isinstance(ref, Digest) and digest != ref:
            raise UpstreamIntegrityError(f"{what}: the body's digest is {digest}")
        announced = _header_digest(reply.headers)
        if announced is not None:
            actual = (
                digest if announced.algorithm == algorithm else Digest.of(body, announced.algorithm)
            )
            if announced != actual:
                raise UpstreamIntegrityError(
                    f"{what}: upstream announced {announced}, the body is {actual}"
                )
        media_type = _media_type(reply.headers) or _body_media_type(body)
        if media_type is None:
            content_type = reply.headers.get("content-type", "")[:200]
            raise UpstreamNotAManifest(f"{what}: not a manifest type ({content_type!r})")
        return UpstreamManifest(body, media_type, digest)

    def _blob(self, response: httpx.Response, what: str, offset: int) -> UpstreamBlob:
        status = response.status_code
        if status == 200:
            return UpstreamBlob(response, what, 0, _int_header(response.headers, "content-length"))
        if status == 206:
            content_range = response.headers.get("content-range", "")
            match = _CONTENT_RANGE.fullmatch(content_range.strip())
            start, end = (None, None) if match is None else map(parse_uint, match.group(1, 2))
            total = None if match is None or match[3] == "*" else parse_uint(match[3])
            if (
                match is None
                or start != offset
                or end is None
                or end < start
                or (match[3] != "*" and (total is None or end >= total))
            ):
                raise UpstreamProtocolError(
                    f"{what}: 206 with Content-Range {content_range[:100]!r} for offset {offset}"
                )
            return UpstreamBlob(response, what, offset, total)
        raise UpstreamProtocolError(f"{what}: HTTP {status}", status=status)


def _error_codes(body: bytes) -> tuple[set[str], list[str]]:
    """Codes and messages of an OCI error body ``{"errors": [{"code", "message"}]}``."""
    try:
        doc = strict_json.loads(body)
    except ValueError:
        return set(), []
    errors = doc.get("errors") if isinstance(doc, dict) else None
    codes: set[str] = set()
    messages: list[str] = []
    for entry in errors if isinstance(errors, list) else []:
        if isinstance(entry, dict):
            code, message = entry.get("code"), entry.get("message")
            if isinstance(code, str):
                codes.add(code)
                messages.append(f"{code} {message}" if isinstance(message, str) else code)
    return codes, messages
