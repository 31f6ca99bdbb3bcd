"""The local admin surface: a small JSON API on ``<data dir>/admin.sock`` for the CLI.

Never on the network port: a unix socket, created 0600 (bound under a restrictive
umask, so there is no instant at which another user could connect). Routes:

    GET  /status    what `satellite status --json` prints
    POST /sync      fetch a state now and wait for the verdict (`satellite sync --now`)
    POST /gc        evict unpinned content now; ?dry_run=1 only lists it (`satellite gc`)
    POST /bundle    import a USB bundle, {"path": DIR} (`satellite bundle import`); with
                    ?progress=1 the answer streams one JSON line per progress update,
                    {"progress": {"done", "total", "what"}}, then {"result": {...}}, so
                    the CLI draws the daemon's progress on its own terminal
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from registry_proxy.progress import REDRAW, Progress, ProgressFeed

log = logging.getLogger("satellite.admin")

SOCKET_NAME = "admin.sock"
CLIENT_TIMEOUT = 120.0


class AdminUnavailable(Exception):
    """No daemon answers on the admin socket."""


class AdminBrokenOff(Exception):
    """The daemon took the request, but its answer broke off."""


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
    bundle: Callable[[Path, Progress | None], Coroutine[Any, Any, dict[str, Any]]] | None = None,
) -> Starlette:
    imports: set[asyncio.Task[dict[str, Any]]] = set()  # run on when a CLI goes away

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
        if request.query_params.get("progress") != "1":
            return JSONResponse(await bundle(path, None))
        feed = ProgressFeed()
        task = asyncio.get_running_loop().create_task(bundle(path, feed))
        imports.add(task)
        task.add_done_callback(imports.discard)
        return StreamingResponse(_progress_lines(task, feed), media_type="application/x-ndjson")

    return Starlette(
        routes=[
            Route("/status", get_status, methods=["GET"]),
            Route("/sync", post_sync, methods=["POST"]),
            Route("/gc", post_gc, methods=["POST"]),
            Route("/bundle", post_bundle, methods=["POST"]),
        ]
    )


async def _progress_lines(
    task: asyncio.Task[dict[str, Any]], feed: ProgressFeed
) -> AsyncIterator[bytes]:
    """The feed's counts while ``task`` runs (when they changed, at most ten times a
    second), then its result. A client that goes away does not stop the import."""
    last: dict[str, int | str] | None = None
    while True:
        await asyncio.wait({task}, timeout=REDRAW)
        now = feed.snapshot()
        if now != last:  # the last counts too (the import completed them)
            last = now
            yield json.dumps({"progress": now}).encode() + b"\n"
        if task.done():
            break
    try:
        result = task.result()
    except Exception as exc:  # the daemon logs it; the CLI gets one line
        log.exception("bundle import failed")
        result = {"outcome": "error", "message": f"{type(exc).__name__}: {exc}"}
    yield json.dumps({"result": result}).encode() + b"\n"


def _client(data_dir: Path, timeout: float | None) -> tuple[Path, httpx.Client]:
    """An HTTP client on the running daemon's admin socket (and the socket's path);
    ``AdminUnavailable`` when there is no socket."""
    sock = socket_path(data_dir)
    if not sock.exists():
        raise AdminUnavailable(f"no satellite running on {data_dir}")
    transport = httpx.HTTPTransport(uds=str(sock))
    return sock, httpx.Client(transport=transport, base_url="http://satellite", timeout=timeout)


def call(
    data_dir: Path,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    timeout: float | None = CLIENT_TIMEOUT,
) -> dict[str, Any]:
    """One request to the running daemon; ``AdminUnavailable`` when none answers."""
    sock, client = _client(data_dir, timeout)
    try:
        with client:
            response = client.request(method, path, json=body)
    except httpx.TransportError as exc:
        raise AdminUnavailable(f"no satellite answers on {sock}: {exc}") from exc
    with contextlib.suppress(ValueError):
        body = response.json()
        if response.status_code == 200 and isinstance(body, dict):
            return body
    raise AdminUnavailable(f"{sock}: unexpected answer {response.status_code}")


def call_with_progress(
    data_dir: Path,
    path: str,
    body: dict[str, Any],
    on_progress: Callable[[int, int, str], None],
) -> dict[str, Any]:
    """A POST whose answer streams progress lines (``?progress=1``): each goes to
    ``on_progress`` (done, total, what); returns the final result. No time limit: an
    import takes as long as its bytes take, and the daemon reports while it runs."""
    sock, client = _client(data_dir, None)
    taken = False  # from here on, the daemon is importing: never import beside it
    try:
        with (
            client,
            client.stream("POST", path, params={"progress": "1"}, json=body) as response,
        ):
            if response.status_code != 200:
                raise AdminUnavailable(f"{sock}: unexpected answer {response.status_code}")
            taken = True
            for line in response.iter_lines():
                message = json.loads(line) if line.strip() else {}
                if "progress" in message:
                    p = message["progress"]
                    on_progress(int(p["done"]), int(p["total"]), str(p.get("what", "")))
                elif isinstance(message.get("result"), dict):
                    result: dict[str, Any] = message["result"]
                    return result
    except httpx.TransportError as exc:
        if taken:
            raise AdminBrokenOff(f"{sock}: the answer broke off: {exc}") from exc
        raise AdminUnavailable(f"no satellite answers on {sock}: {exc}") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise AdminBrokenOff(f"{sock}: unexpected answer: {exc}") from exc
    raise AdminBrokenOff(f"{sock}: the answer ended without a result")


def dumps(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True)
