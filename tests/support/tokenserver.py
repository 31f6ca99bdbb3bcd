"""Small HTTP servers on loopback for the upstream client's tests.

- `serve_app(app)`: any ASGI app on hypercorn at 127.0.0.1:<free port>, in the running
  event loop, for as long as an `async with` lasts (optionally with TLS).
- `TokenService` + `BearerRegistry`: a token service and a registry-like app that
  demands its tokens, following distribution's token spec ("Docker Registry v2
  authentication via central service"): a request without a valid token gets
  `401` + `WWW-Authenticate: Bearer realm=...,service=...,scope=...`; the client fetches
  `GET realm?service=...&scope=repository:<name>:pull` (Basic credentials optional or
  required) and retries with `Authorization: Bearer <token>`. Both record what they saw.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from hypercorn.asyncio import serve
from hypercorn.config import Config
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from tests.support.images import sha256_bytes
from tests.support.net import LOOPBACK, free_port

STARTUP_ATTEMPTS = 200  # x 0.025 s


@dataclass(frozen=True)
class TLSFiles:
    certfile: Path
    keyfile: Path


@asynccontextmanager
async def serve_app(app: ASGIApp, *, tls: TLSFiles | None = None) -> AsyncIterator[str]:
    """Serve `app` on 127.0.0.1; yields its base URL (`http://127.0.0.1:PORT`)."""
    port = free_port()
    config = Config()
    config.bind = [f"{LOOPBACK}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("tests.hypercorn")
    config.graceful_timeout = 1.0
    config.include_server_header = False
    if tls is not None:
        config.certfile = str(tls.certfile)
        config.keyfile = str(tls.keyfile)
    stop = asyncio.Event()
    task = asyncio.create_task(serve(app, config, shutdown_trigger=stop.wait))  # type: ignore[arg-type]
    try:
        for _ in range(STARTUP_ATTEMPTS):
            if task.done():
                task.result()  # raises what went wrong
                raise RuntimeError("hypercorn exited before serving")
            try:
                _, writer = await asyncio.open_connection(LOOPBACK, port)
            except OSError:
                await asyncio.sleep(0.025)
                continue
            writer.close()
            await writer.wait_closed()
            break
        else:
            raise RuntimeError(f"hypercorn did not listen on {LOOPBACK}:{port}")
        yield f"{'https' if tls else 'http'}://{LOOPBACK}:{port}"
    finally:
        stop.set()
        try:
            await asyncio.wait_for(task, 10)
        except TimeoutError:
            task.cancel()


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@dataclass
class TokenRequest:
    service: str | None
    scope: str | None
    authorization: str | None


@dataclass
class TokenService:
    """`GET /token?service=&scope=` → `{"token"|"access_token": ..., "expires_in": ...}`."""

    service: str = "satellite test, a service name with a comma"
    credentials: tuple[str, str] | None = None  # required when set
    token_field: str = "token"
    expires_in: int | None = 60
    requests: list[TokenRequest] = field(default_factory=list)
    issued: dict[str, str] = field(default_factory=dict)  # token -> scope
    _counter: itertools.count[int] = field(default_factory=itertools.count)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/token", self._token)])

    async def _token(self, request: Request) -> Response:
        authorization = request.headers.get("authorization")
        self.requests.append(
            TokenRequest(
                request.query_params.get("service"),
                request.query_params.get("scope"),
                authorization,
            )
        )
        if self.credentials is not None and authorization != _basic(*self.credentials):
            return JSONResponse({"details": "bad credentials"}, status_code=401)
        scope = request.query_params.get("scope", "")
        token = f"tok-{next(self._counter)}-" + hashlib.sha256(scope.encode()).hexdigest()[:12]
        self.issued[token] = scope
        body: dict[str, object] = {self.token_field: token}
        if self.expires_in is not None:
            body["expires_in"] = self.expires_in
        return JSONResponse(body)

    def scopes(self) -> list[str | None]:
        return [r.scope for r in self.requests]


_REGISTRY_PATH = re.compile(r"^/v2/(?P<name>.+)/(?P<kind>manifests|blobs)/(?P<ref>[^/]+)$")


@dataclass
class RegistryRequest:
    method: str
    path: str
    authorization: str | None


@dataclass
class BearerRegistry:
    """Manifests and blobs behind Bearer tokens issued by `tokens` (at `realm`)."""

    tokens: TokenService
    realm: str
    manifests: dict[tuple[str, str], tuple[bytes, str]] = field(default_factory=dict)
    blobs: dict[tuple[str, str], bytes] = field(default_factory=dict)
    accept_tokens: bool = True  # False: every token is refused (a misbehaving upstream)
    requests: list[RegistryRequest] = field(default_factory=list)

    def add_manifest(self, repo: str, tag: str, body: bytes, media_type: str) -> str:
        digest = sha256_bytes(body)
        self.manifests[(repo, tag)] = (body, media_type)
        self.manifests[(repo, digest)] = (body, media_type)
        return digest

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v2/", self._base, methods=["GET"]),
                Route("/v2/{rest:path}", self._content, methods=["GET", "HEAD"]),
            ]
        )

    def _challenge(self, scope: str | None) -> Response:
        value = f'Bearer realm="{self.realm}",service="{self.tokens.service}"'
        if scope:
            value += f',scope="{scope}"'
        body = {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}
        return JSONResponse(body, status_code=401, headers={"WWW-Authenticate": value})

    def _authorized(self, request: Request, scope: str | None) -> bool:
        authorization = request.headers.get("authorization", "")
        if not self.accept_tokens or not authorization.startswith("Bearer "):
            return False
        granted = self.tokens.issued.get(authorization.removeprefix("Bearer "))
        return granted is not None and (scope is None or granted == scope)

    def _record(self, request: Request) -> None:
        self.requests.append(
            RegistryRequest(request.method, request.url.path, request.headers.get("authorization"))
        )

    async def _base(self, request: Request) -> Response:
        self._record(request)
        if not self._authorized(request, None):
            return self._challenge(None)
        return JSONResponse({})

    async def _content(self, request: Request) -> Response:
        self._record(request)
        match = _REGISTRY_PATH.match(request.url.path)
        if match is None:
            return JSONResponse({"errors": [{"code": "UNSUPPORTED"}]}, status_code=404)
        name, kind, ref = match["name"], match["kind"], match["ref"]
        scope = f"repository:{name}:pull"
        if not self._authorized(request, scope):
            return self._challenge(scope)
        if kind == "manifests":
            found = self.manifests.get((name, ref))
            if found is None:
                return JSONResponse(
                    {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]},
                    status_code=404,
                )
            body, media_type = found
            digest = sha256_bytes(body)
            headers = {"Docker-Content-Digest": digest, "Content-Type": media_type}
            if request.method == "HEAD":
                return Response(headers={**headers, "Content-Length": str(len(body))})
            return Response(body, headers=headers)
        blob = self.blobs.get((name, ref))
        if blob is None:
            return JSONResponse({"errors": [{"code": "BLOB_UNKNOWN"}]}, status_code=404)
        return Response(blob, media_type="application/octet-stream")
