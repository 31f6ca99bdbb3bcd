"""One access-log line per HTTP request, the same shape for the satellite and Ground Control.

    plain:  127.0.0.1 GET /v2/library/app/manifests/v1 200 1480 2.1ms hit
    json:   {"time": "...", "client": "127.0.0.1", "method": "GET", "path": "/v2/...",
             "status": 200, "bytes": 1480, "duration_ms": 2.1, "upstream": "hit"}

Fields: client address, method, request target as sent (path and query, never decoded,
so an encoded newline cannot forge a line), status (0: no response was sent), body bytes
sent, time from the request to the end of the response, and where a pull-through answer
came from (``hit``, ``miss``, ``stale``; ``-`` for anything else), which a handler notes
in ``scope[UPSTREAM_SCOPE_KEY]``.

A pure ASGI middleware: it watches the messages go by (no buffering) and formats one line
when the app returns; nothing else happens per request. Lines go to a ``logging`` logger
at INFO, so ``[log] level = "warning"`` silences them too.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import UTC, datetime
from typing import Literal

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from registry_proxy.responses import ZERO_COPY

UPSTREAM_SCOPE_KEY = "satellite.upstream"
Format = Literal["plain", "json"]
FORMATS: tuple[Format, ...] = ("plain", "json")


class AccessLog:
    def __init__(self, app: ASGIApp, *, logger: logging.Logger, fmt: Format = "plain") -> None:
        self.app = app
        self.logger = logger
        self.json = fmt == "json"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.logger.isEnabledFor(logging.INFO):
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 0
        sent = 0

        async def watch(message: Message) -> None:
            nonlocal status, sent
            kind = message["type"]
            if kind == "http.response.body":
                sent += len(message.get("body", b""))
            elif kind == "http.response.start":
                status = message["status"]
            elif kind == ZERO_COPY:
                sent += message["count"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except BaseException:
            status = status or 500  # what the server answers for an app that failed
            raise
        finally:
            duration_ms = (time.perf_counter() - start) * 1000
            self.logger.info(self._line(scope, status, sent, duration_ms))

    def _line(self, scope: Scope, status: int, sent: int, duration_ms: float) -> str:
        client = scope.get("client")
        host = client[0] if client else "-"
        raw: bytes | None = scope.get("raw_path")
        target = raw.decode("ascii", "backslashreplace") if raw else scope["path"]
        query: bytes = scope.get("query_string", b"")
        if query:
            target += "?" + query.decode("ascii", "backslashreplace")
        upstream = scope.get(UPSTREAM_SCOPE_KEY, "-")
        if self.json:
            return json.dumps(
                {
                    "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                    "client": host,
                    "method": scope["method"],
                    "path": target,
                    "status": status,
                    "bytes": sent,
                    "duration_ms": round(duration_ms, 1),
                    "upstream": upstream,
                }
            )
        if not target.isprintable() or " " in target:
            target = target.encode("unicode_escape").decode("ascii").replace(" ", "\\x20")
        return f"{host} {scope['method']} {target} {status} {sent} {duration_ms:.1f}ms {upstream}"


def configure(logger: logging.Logger, fmt: Format) -> None:
    """Access lines in JSON are whole JSON lines on stderr (no logging prefix); plain
    lines go through the root handlers like every other log line."""
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logger.propagate = True
    if fmt == "json":
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
