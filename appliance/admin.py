"""The local admin surface: a small JSON API on ``<data dir>/admin.sock`` for the CLI.

Never on the network port: a unix socket, created 0600 (bound under a restrictive
umask, so there is no instant at which another user could connect). Routes:

    GET  /status    what `satellite status --json` prints
    POST /sync      fetch a state now and wait for the verdict (`satellite sync --now`)
    POST /gc        evict unpinned content now; ?dry_run=1 only lists it (`satellite gc`)
    POST /bundle    import a USB bundle, {"path": DIR} (`satellite bundle import`)
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

SOCKET_NAME = "admin.sock"
CLIENT_TIMEOUT = 120.0


class AdminUnavailable(Exception):
    """No daemon answers on the admin socket."""


def socket_path(data_dir: Path) -> Path:
    return data_dir / SOCKET_NAME


def bind_socket(path: Path) -> socket.socket:
    """A listening unix socket at ``path``, mode 0600. A socket file left by a crashed
    daemon is replaced; one that a live daemon answers on is not."""
    if path.exists() or path.is_symlink():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.settimeout(1.0)
            probe.connect(str(path))
        except OSError:
            path.unlink()
        else:
            raise OSError(f"{path}: another satellite is running on this data dir")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(16)
    sock.set_inheritable(True)
    return sock


def admin_app(
    status: Callable[[], Awaitable[dict[str, Any]]],
    sync: Callable[[], Awaitable[dict[str, Any]]],
    gc: Callable[[bool], Awaitable[dict[str, Any]]],
    bundle: Callable[[Path], Awaitable[dict[str, Any]]] | None = None,
) -> Starlette:
    async def get_status(request: Request) -> Response:
        return JSONResponse(await status())

    async def post_sync(request: Request) -> Response:
        return JSONResponse(await sync())

    async def post_gc(request: Request) -> Response:
        return JSONResponse(await gc(request.query_params.get("dry_run") == "1"))

    async def post_bundle(request: Request) -> Response:
        try:
            body = json.loads(await request.body())
            path = Path(body["path"])
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": 'expected {"path": DIR}'}, status_code=400)
        if bundle is None or not path.is_absolute():
            return JSONResponse({"error": "not registered, or not an absolute path"}, 400)
        return JSONResponse(await bundle(path))

    return Starlette(
        routes=[
            Route("/status", get_status, methods=["GET"]),
            Route("/sync", post_sync, methods=["POST"]),
            Route("/gc", post_gc, methods=["POST"]),
            Route("/bundle", post_bundle, methods=["POST"]),
        ]
    )


def call(
    data_dir: Path,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    timeout: float | None = CLIENT_TIMEOUT,
) -> dict[str, Any]:
    """One request to the running daemon; ``AdminUnavailable`` when none answers."""
    sock = socket_path(data_dir)
    if not sock.exists():
        raise AdminUnavailable(f"no satellite running on {data_dir}")
    transport = httpx.HTTPTransport(uds=str(sock))
    try:
        with httpx.Client(
            transport=transport, base_url="http://satellite", timeout=timeout
        ) as client:
            response = client.request(method, path, json=body)
    except httpx.TransportError as exc:
        raise AdminUnavailable(f"no satellite answers on {sock}: {exc}") from exc
    with contextlib.suppress(ValueError):
        body = response.json()
        if response.status_code == 200 and isinstance(body, dict):
            return body
    raise AdminUnavailable(f"{sock}: unexpected answer {response.status_code}")


def dumps(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True)
