"""The OCI Distribution API (distribution-spec v1.1, end-1 … end-13) as a Starlette app.

Routing is done here by hand because repository names contain slashes: the path after
``/v2/`` is matched from its end (``/manifests/<ref>``, ``/blobs/uploads/<id>`` …) and
the rest must be a valid repository name. Every failure is a RegistryError, turned into
the spec's error body by one handler at the edge.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from registry_proxy.accesslog import UPSTREAM_SCOPE_KEY, AccessLog
from registry_proxy.accesslog import Format as AccessLogFormat
from registry_proxy.content import CacheStatus, Content, FillSource
from registry_proxy.deadline import BodyDeadline, BodyLimits
from registry_proxy.digest import Digest
from registry_proxy.edge import EXCEPTION_HANDLERS, PureAsgi, UnexpectedErrors, error_response
from registry_proxy.errors import RegistryError
from registry_proxy.manifest import MAX_MANIFEST_BYTES, OCI_INDEX, accepts
from registry_proxy.metrics import CONTENT_TYPE_LATEST, Metrics
from registry_proxy.names import parse_reference, validate_name, validate_tag
from registry_proxy.numbers import DIGITS, parse_uint
from registry_proxy.proxy import Proxy, UpstreamLink
from registry_proxy.responses import BlobResponse, StreamResponse, parse_range
from registry_proxy.routing import Router, Target, UpstreamName
from registry_proxy.store import ContentStore

log = logging.getLogger("satellite.registry")
ACCESS_LOG = logging.getLogger("satellite.access")
API_VERSION_HEADER = (b"docker-distribution-api-version", b"registry/2.0")
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
MAX_PAGE = 10_000

# fullmatch, and "." matching newlines: a name or argument with a control character is
# routed and then refused by the grammar (400), never matched short of its end
_ROUTES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"(?P<name>.+)/tags/list", re.DOTALL), "tags"),
    (re.compile(r"(?P<name>.+)/manifests/(?P<arg>[^/]+)", re.DOTALL), "manifest"),
    (re.compile(r"(?P<name>.+)/blobs/uploads/?", re.DOTALL), "upload_start"),
    (re.compile(r"(?P<name>.+)/blobs/uploads/(?P<arg>[^/]+)", re.DOTALL), "upload"),
    (re.compile(r"(?P<name>.+)/blobs/(?P<arg>[^/]+)", re.DOTALL), "blob"),
    (re.compile(r"(?P<name>.+)/referrers/(?P<arg>[^/]+)", re.DOTALL), "referrers"),
]


def _route(rest: str) -> tuple[str, re.Match[str]]:
    for pattern, kind in _ROUTES:
        match = pattern.fullmatch(rest)
        if match is not None:
            return kind, match
    raise RegistryError("NOT_FOUND", "no such endpoint")


@dataclass(frozen=True)
class RegistrySettings:
    push: bool = False


class Registry:
    """Request handlers over one ContentStore and the pull-through Proxy that wraps it.

    Reads go through ``content`` (the proxy, answering a local repository from the store
    and a pull-through one through its upstream); writes go to the store."""

    def __init__(
        self,
        store: ContentStore,
        settings: RegistrySettings,
        router: Router,
        proxy: Proxy,
        metrics: Metrics,
    ) -> None:
        self.store = store
        self.settings = settings
        self.router = router
        self.proxy = proxy
        self.content: Content = proxy
        self.metrics = metrics
        self.ready = False

    def set_upstreams(self, upstreams: dict[str, UpstreamLink]) -> None:
        """Swap the upstreams at runtime (a new signed config); requests under way
        finish with what they started with."""
        self.router = Router(
            [UpstreamName(name, up.client.url, up.default) for name, up in upstreams.items()]
        )
        self.proxy.set_upstreams(upstreams)

    async def base(self, request: Request) -> Response:
        return JSONResponse({})

    async def catalog(self, request: Request) -> Response:
        n, last = _pagination(request)
        repos = await self.store.catalog(n, last)
        headers = _next_link("/v2/_catalog", n, repos)
        return JSONResponse({"repositories": repos}, headers=headers)

    async def dispatch(self, request: Request) -> Response:
        # the scope's path, not request.url.path: URL parsing drops "\t", "\r" and "\n"
        path: str = request.scope["path"]
        raw_path: bytes = request.scope.get("raw_path") or path.encode()
        if b"%" in raw_path or b"\\" in raw_path:
            # no name, reference or upload id may contain an escape: refuse them whole,
            # so that an encoded "/" or "." can never change what a path means
            raise RegistryError("NAME_INVALID", "escaped characters are not allowed in paths")
        rest = path[len("/v2/") :]
        if rest in ("", "_catalog"):  # their own routes took the methods they answer
            allowed = "GET, HEAD" if rest == "" else "GET"
            raise RegistryError(
                "UNSUPPORTED", f"{request.method} is not allowed here", headers={"Allow": allowed}
            )
        kind, match = _route(rest)
        ns = request.query_params.get("ns") if request.scope["query_string"] else None
        target = self.router.route(validate_name(match["name"]), ns)
        arg = match.groupdict().get("arg")
        method = request.method
        if method in WRITE_METHODS and not self.settings.push:
            raise RegistryError(
                "UNSUPPORTED", "pushes are disabled on this satellite ([registry] push = false)"
            )
        handler = self._handlers.get((kind, method))
        if handler is None:
            allowed = ", ".join(m for k, m in self._handlers if k == kind)
            raise RegistryError(
                "UNSUPPORTED", f"{method} is not allowed here", headers={"Allow": allowed}
            )
        try:
            response = await handler(self, request, target, arg)
        except RegistryError as exc:
            if target.upstream is not None:
                exc.headers.setdefault("OCI-Namespace", target.upstream)
            raise
        if target.upstream is not None:
            response.headers["oci-namespace"] = target.upstream
        return response

    # -- blobs (end-2, end-10) -----------------------------------------------------

    async def get_blob(self, request: Request, t: Target, arg: str | None) -> Response:
        digest = Digest.parse(arg or "")
        head = request.method == "HEAD"
        headers = {
            "docker-content-digest": str(digest),
            "content-type": "application/octet-stream",
            "etag": f'"{digest}"',
        }
        count = self.metrics.client_bytes.inc
        source, cache = await self.content.blob_answer(t, digest)
        if cache is not None:
            _note_cache(request, headers, cache)
        try:
            byte_range = parse_range(request.headers.get("range"), source.size)
        except BaseException:
            source.close()
            raise
        if isinstance(source, FillSource):
            return StreamResponse(
                source.reader, source.size, headers, byte_range, head, source.close, count
            )
        return BlobResponse(source.fd, source.size, headers, byte_range, head, source.close, count)

    async def delete_blob(self, request: Request, t: Target, arg: str | None) -> Response:
        await self.store.delete_blob(t.repo, Digest.parse(arg or ""))
        return Response(status_code=202)

    # -- uploads (end-4a/b, end-5, end-6, end-11, end-13) --------------------------

    async def start_upload(self, request: Request, t: Target, arg: str | None) -> Response:
        params = request.query_params
        mount = params.get("mount")
        if mount is not None:
            digest = Digest.parse(mount)
            from_name = params.get("from")
            from_repo = None
            if from_name is not None:
                from_repo = self.router.route(validate_name(from_name), params.get("ns")).repo
            if await self.store.mount_blob(t.repo, digest, from_repo):
                return _created(t.name, digest)
        upload_id = await self.store.start_upload(t.repo, resumable="digest" not in params)
        if "digest" in params:
            digest = Digest.parse(params["digest"])
            try:
                await self.store.finish_upload(
                    t.repo, upload_id, digest, request.stream(), None, _content_length(request)
                )
            except BaseException:
                await self.store.cancel_upload(upload_id)
                raise
            return _created(t.name, digest)
        return Response(status_code=202, headers=_upload_headers(t.name, upload_id, 0))

    async def patch_upload(self, request: Request, t: Target, arg: str | None) -> Response:
        upload_id = arg or ""
        start, length = _content_range(request)
        with _upload_position(t.name, upload_id):
            offset = await self.store.append_upload(
                t.repo, upload_id, request.stream(), start, length
            )
        return Response(status_code=202, headers=_upload_headers(t.name, upload_id, offset))

    async def put_upload(self, request: Request, t: Target, arg: str | None) -> Response:
        upload_id = arg or ""
        if "digest" not in request.query_params:
            raise RegistryError("DIGEST_INVALID", "the digest query parameter is required")
        digest = Digest.parse(request.query_params["digest"])
        start, length = _content_range(request)
        with _upload_position(t.name, upload_id):
            await self.store.finish_upload(
                t.repo, upload_id, digest, request.stream(), start, length
            )
        return _created(t.name, digest)

    async def get_upload(self, request: Request, t: Target, arg: str | None) -> Response:
        upload_id = arg or ""
        offset = await self.store.upload_offset(t.repo, upload_id)
        return Response(status_code=204, headers=_upload_headers(t.name, upload_id, offset))

    async def delete_upload(self, request: Request, t: Target, arg: str | None) -> Response:
        upload_id = arg or ""
        await self.store.upload_offset(t.repo, upload_id)  # 404 if unknown
        await self.store.cancel_upload(upload_id)
        return Response(status_code=204)

    # -- manifests (end-3, end-7, end-9) -------------------------------------------

    async def get_manifest(self, request: Request, t: Target, arg: str | None) -> Response:
        reference = parse_reference(arg or "")
        row, cache = await self.content.manifest_answer(t, reference)
        # clients such as skopeo send one Accept line per media type
        if not accepts(", ".join(request.headers.getlist("accept")), row.media_type):
            raise RegistryError(
                "MANIFEST_UNKNOWN",
                f"manifest is {row.media_type}, which the Accept header does not list",
            )
        headers = {
            "docker-content-digest": str(row.digest),
            "content-type": row.media_type,
            "etag": f'"{row.digest}"',
        }
        if cache is not None:
            _note_cache(request, headers, cache)
        if request.method == "HEAD":
            headers["content-length"] = str(row.size)
            return Response(status_code=200, headers=headers)
        body = await self.content.manifest_bytes(row)
        return Response(body, status_code=200, headers=headers)

    async def put_manifest(self, request: Request, t: Target, arg: str | None) -> Response:
        reference = parse_reference(arg or "")
        # distribution-spec's ?tag=a&tag=b: tags set with the push (all checked first)
        tags = list(dict.fromkeys(validate_tag(tag) for tag in request.query_params.getlist("tag")))
        body = await _read_capped(request, MAX_MANIFEST_BYTES)
        digest, manifest = await self.store.put_manifest(
            t.repo, reference, body, request.headers.get("content-type")
        )
        for tag in tags:
            await self.store.set_tag(t.repo, tag, digest)
        headers = {
            "location": f"/v2/{t.name}/manifests/{digest}",
            "docker-content-digest": str(digest),
        }
        if manifest.subject is not None:
            headers["oci-subject"] = str(manifest.subject.digest)
        response = Response(status_code=201, headers=headers)
        response.raw_headers.extend((b"oci-tag", tag.encode()) for tag in tags)
        return response

    async def delete_manifest(self, request: Request, t: Target, arg: str | None) -> Response:
        await self.store.delete_manifest(t.repo, parse_reference(arg or ""))
        return Response(status_code=202)

    # -- listings (end-8, end-12) --------------------------------------------------

    async def tags(self, request: Request, t: Target, arg: str | None) -> Response:
        n, last = _pagination(request)
        tags = await self.content.tag_list(t, n, last)
        headers = _next_link(f"/v2/{t.name}/tags/list", n, tags)
        return JSONResponse({"name": t.name, "tags": tags}, headers=headers)

    async def referrers(self, request: Request, t: Target, arg: str | None) -> Response:
        subject = Digest.parse(arg or "")
        artifact_type = request.query_params.get("artifactType")
        referrers = await self.content.referrer_list(t, subject, artifact_type)
        manifests = [d.to_dict() for d in referrers]
        body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests})
        headers = {"content-type": OCI_INDEX}
        if artifact_type is not None:
            headers["oci-filters-applied"] = "artifactType"
        return Response(body.encode(), status_code=200, headers=headers)

    Handler = Callable[["Registry", Request, Target, str | None], Awaitable[Response]]
    _handlers: dict[tuple[str, str], Handler] = {
        ("blob", "GET"): get_blob,
        ("blob", "HEAD"): get_blob,
        ("blob", "DELETE"): delete_blob,
        ("upload_start", "POST"): start_upload,
        ("upload", "PATCH"): patch_upload,
        ("upload", "PUT"): put_upload,
        ("upload", "GET"): get_upload,
        ("upload", "DELETE"): delete_upload,
        ("manifest", "GET"): get_manifest,
        ("manifest", "HEAD"): get_manifest,
        ("manifest", "PUT"): put_manifest,
        ("manifest", "DELETE"): delete_manifest,
        ("tags", "GET"): tags,
        ("referrers", "GET"): referrers,
    }


# RFC 9211 Cache-Status values; "stale" is a cached tag mapping the upstream has not
# confirmed (it was slow or unreachable)
_CACHE_STATUS = {
    CacheStatus.HIT: "satellite; hit",
    CacheStatus.MISS: "satellite; fwd=uri-miss",
    CacheStatus.STALE: "satellite; hit; detail=stale",
}


def _note_cache(request: Request, headers: dict[str, str], cache: CacheStatus) -> None:
    """Tells the client (Cache-Status) and the access log where an answer came from."""
    headers["cache-status"] = _CACHE_STATUS[cache]
    request.scope[UPSTREAM_SCOPE_KEY] = cache.value


def _created(name: str, digest: Digest) -> Response:
    return Response(
        status_code=201,
        headers={"location": f"/v2/{name}/blobs/{digest}", "docker-content-digest": str(digest)},
    )


@contextlib.contextmanager
def _upload_position(name: str, upload_id: str) -> Iterator[None]:
    """A chunk out of order (416) tells the client where the upload is, as every
    upload response does."""
    try:
        yield
    except RegistryError as exc:
        if exc.code == "RANGE_INVALID" and isinstance(exc.detail, dict) and "offset" in exc.detail:
            exc.headers = _upload_headers(name, upload_id, exc.detail["offset"])
        raise


def _upload_headers(name: str, upload_id: str, offset: int) -> dict[str, str]:
    return {
        "location": f"/v2/{name}/blobs/uploads/{upload_id}",
        "range": f"0-{max(offset - 1, 0)}",
        "docker-upload-uuid": upload_id,
    }


def _content_length(request: Request) -> int | None:
    value = request.headers.get("content-length")
    if value is None:
        return None
    length = parse_uint(value.strip())
    if length is None:
        raise RegistryError("SIZE_INVALID", f"invalid Content-Length {value[:40]!r}")
    return length


_CONTENT_RANGE = re.compile(rf"(?:bytes )?({DIGITS})-({DIGITS})(?:/({DIGITS}|\*))?")


def _content_range(request: Request) -> tuple[int | None, int | None]:
    """(start, length) of a chunk from Content-Range (inclusive end) and Content-Length."""
    length = _content_length(request)
    header = request.headers.get("content-range")
    if header is None:
        return None, length
    invalid = RegistryError("RANGE_INVALID", f"invalid Content-Range {header[:100]!r}")
    match = _CONTENT_RANGE.fullmatch(header.strip())
    if match is None:
        raise invalid
    start, end = parse_uint(match[1]), parse_uint(match[2])
    if start is None or end is None or end < start:
        raise invalid
    if match[3] is not None and match[3] != "*":
        total = parse_uint(match[3])
        if total is None or end >= total:  # "10-19/5": the chunk ends past the whole
            raise invalid
    if length is not None and length != end - start + 1:
        raise RegistryError(
            "RANGE_INVALID", f"Content-Range {header[:100]!r} disagrees with Content-Length"
        )
    return start, end - start + 1


def _pagination(request: Request) -> tuple[int | None, str | None]:
    raw_n = request.query_params.get("n")
    n: int | None = None
    if raw_n is not None:
        parsed = parse_uint(raw_n)
        if parsed is None:
            raise RegistryError("PAGINATION_NUMBER_INVALID", f"invalid n {raw_n[:20]!r}")
        n = min(parsed, MAX_PAGE)
    return n, request.query_params.get("last") or None


def _next_link(path: str, n: int | None, items: list[str]) -> dict[str, str]:
    if n is None or n == 0 or len(items) < n:
        return {}
    query = urlencode({"n": n, "last": items[-1]})
    return {"link": f'<{path}?{query}>; rel="next"'}


async def _read_capped(request: Request, limit: int) -> bytes:
    declared = _content_length(request)
    if declared is not None and declared > limit:
        raise RegistryError(
            "MANIFEST_INVALID", f"manifest is {declared} bytes; the limit is {limit}", status=413
        )
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RegistryError(
                "MANIFEST_INVALID", f"manifest exceeds the limit of {limit} bytes", status=413
            )
    return bytes(body)


class ApiVersionHeader(PureAsgi):
    """Adds Docker-Distribution-API-Version to every response."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), API_VERSION_HEADER]
            await send(message)

        await self.app(scope, receive, send_with_header)


class PullPath(PureAsgi):
    """``GET`` and ``HEAD`` under ``/v2/<name>/``, the requests of every pull, go from
    here straight to ``Registry.dispatch``: past Starlette's routing and exception
    layers and the request body's deadline (they have no body). Every other request,
    and ``/v2/`` and ``/v2/_catalog``, takes the app's routes. It sits inside
    ``UnexpectedErrors`` and ``ApiVersionHeader``, so that both still apply; a
    ``RegistryError`` gets the same answer as from the app's handler."""

    def __init__(self, app: ASGIApp, registry: Registry) -> None:
        super().__init__(app)
        self.registry = registry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] not in ("GET", "HEAD")
            or not scope["path"].startswith("/v2/")
            or scope["path"] in ("/v2/", "/v2/_catalog")
        ):
            await self.app(scope, receive, send)
            return
        try:
            response = await self.registry.dispatch(Request(scope, receive))
        except RegistryError as exc:
            response = error_response(exc, scope["method"])
        await response(scope, receive, send)


def _body_timeout(message: str) -> tuple[bytes, str]:
    error = RegistryError("REQUEST_TIMEOUT", message, status=408)
    return json.dumps(error.body()).encode(), "application/json"


def create_app(
    store: ContentStore,
    settings: RegistrySettings | None = None,
    upstreams: dict[str, UpstreamLink] | None = None,
    *,
    metrics: Metrics | None = None,
    tag_timeout: float = 3.0,
    stale_after: float = 0.25,
    maintenance_interval: float = 30.0,
    body_limits: BodyLimits | None = None,
    access_log: AccessLogFormat | None = None,
) -> Starlette:
    """The registry app. The store (and the upstream clients) are opened and closed by
    the app's lifespan; a maintenance task flushes access times and keeps the budget.
    Request bodies are read under `body_limits` (a rate floor by default); `access_log`
    writes one line per request on stderr, as the ``satellite.access`` logger's level
    allows (None: no access log)."""
    metrics = metrics or Metrics()
    upstreams = upstreams or {}
    router = Router(
        [UpstreamName(name, up.client.url, up.default) for name, up in upstreams.items()]
    )
    # a proxy even without upstreams: a signed config may add some at runtime
    proxy = Proxy(store, upstreams, metrics, tag_timeout=tag_timeout, stale_after=stale_after)
    registry = Registry(store, settings or RegistrySettings(), router, proxy, metrics)

    async def maintain() -> None:
        while True:
            await asyncio.sleep(maintenance_interval)
            try:
                await store.meta.flush_access()
                metrics.evictions.inc(len(await store.enforce_budget()))
            except Exception:
                log.exception("store maintenance failed")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await store.open()
        await store.sweep()  # what a crash left behind
        metrics.cache_max.set(store.max_bytes or 0)
        metrics.evictions.inc(len(await store.enforce_budget()))
        task = asyncio.get_running_loop().create_task(maintain())
        proxy.start()
        registry.ready = True
        try:
            yield
        finally:
            registry.ready = False
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await proxy.close()
            await store.close()

    async def metrics_endpoint(request: Request) -> Response:
        metrics.cache_bytes.set(await store.used_bytes())
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        if not registry.ready:
            return JSONResponse({"status": "starting"}, status_code=503)
        online = {name: up.breaker.online for name, up in proxy.upstreams.items()}
        return JSONResponse({"status": "ready", "upstreams_online": online})

    methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
    app = Starlette(
        routes=[
            Route("/v2/", registry.base, methods=["GET", "HEAD"]),
            Route("/v2/_catalog", registry.catalog, methods=["GET"]),
            Route("/v2/{rest:path}", registry.dispatch, methods=methods),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET", "HEAD"]),
            Route("/readyz", readyz, methods=["GET", "HEAD"]),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    # inside out: a slow body is BodyDeadline's 408 before it could look unexpected
    app.add_middleware(BodyDeadline, limits=body_limits or BodyLimits(), render=_body_timeout)
    app.add_middleware(PullPath, registry=registry)
    app.add_middleware(UnexpectedErrors)
    app.add_middleware(ApiVersionHeader)
    if access_log is not None:  # outermost: it sees the 408 of a body too slow
        app.add_middleware(AccessLog, logger=ACCESS_LOG, fmt=access_log)
    app.state.registry = registry
    return app
