"""One access-log line per HTTP request, the same shape for the satellite and Ground Control.

    plain:  2026-11-28 12:33:42,131 INFO satellite.access: 127.0.0.1 GET
            /v2/library/app/manifests/v1 200 1480 2.1ms hit          (one line)
    json:   {"time": "2026-11-28T12:33:42.131Z", "client": "127.0.0.1", "method": "GET",
             "path": "/v2/...", "status": 200, "bytes": 1480, "duration_ms": 2.1,
             "upstream": "hit"}                                     (one line)

Fields: client address, method, request target as sent (path and query, never decoded,
so an encoded newline cannot forge a line), status (0: no response was sent), body bytes
sent, time from the request to the end of the response, and where a pull-through answer
came from (``hit``, ``miss``, ``stale``; ``-`` for anything else), which a handler notes
in ``scope[UPSTREAM_SCOPE_KEY]``.

A pure ASGI middleware: it watches the messages go by (no buffering) and formats one line
when the app returns; nothing else happens per request. The lines bypass ``logging``'s
handlers, whose record, formatter and flush per line cost ten times the formatting: they
are written to stderr with one write per turn of the event loop, in the shape of the
program's other log lines (plain: ``TIME INFO satellite.access: ...``; json: one object
per line). The logger still decides whether they are written at all (INFO and below), so
``[log] level = "warning"`` silences them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from typing import Literal, TextIO

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from registry_proxy.responses import ZERO_COPY

UPSTREAM_SCOPE_KEY = "satellite.upstream"
Format = Literal["plain", "json"]
FORMATS: tuple[Format, ...] = ("plain", "json")


class AccessLog:
    def __init__(
        self,
        app: ASGIApp,
        *,
        logger: logging.Logger,
        fmt: Format = "plain",
        stream: TextIO | None = None,
    ) -> None:
        self.app = app
        self.logger = logger
        self.json = fmt == "json"
        self.sink = _Sink(stream)
        self._second = -1
        self._second_text = ""

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
            self.sink.write(self._line(scope, status, sent, duration_ms))

    def _now(self) -> tuple[str, int]:
        """The time to the second (formatted once a second) and the milliseconds: local
        as in the program's other log lines (plain), ISO 8601 in UTC (json)."""
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            if self.json:
                self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            else:
                self._second_text = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        return self._second_text, int((now - second) * 1000)

    def _line(self, scope: Scope, status: int, sent: int, duration_ms: float) -> str:
        client = scope.get("client")
        host = client[0] if client else "-"
        raw: bytes | None = scope.get("raw_path")
        target = raw.decode("ascii", "backslashreplace") if raw else scope["path"]
        query: bytes = scope.get("query_string", b"")
        if query:
            target += "?" + query.decode("ascii", "backslashreplace")
        upstream = scope.get(UPSTREAM_SCOPE_KEY, "-")
        second, millis = self._now()
        if self.json:  # by hand: json.dumps of a dict costs more than the rest together
            return (
                f'{{"time": "{second}.{millis:03d}Z", "client": {json.dumps(host)}, '
                f'"method": {json.dumps(scope["method"])}, "path": {json.dumps(target)}, '
                f'"status": {status}, "bytes": {sent}, "duration_ms": {duration_ms:.1f}, '
                f'"upstream": "{upstream}"}}\n'
            )
        if not target.isprintable() or " " in target:
            target = target.encode("unicode_escape").decode("ascii").replace(" ", "\\x20")
        return (
            f"{second},{millis:03d} INFO {self.logger.name}: {host} {scope['method']} "
            f"{target} {status} {sent} {duration_ms:.1f}ms {upstream}\n"
        )


class _Sink:
    """Lines written in batches: one write per turn of the event loop, not one per line."""

    def __init__(self, stream: TextIO | None) -> None:
        self.stream = stream
        self.pending: list[str] = []

    def write(self, line: str) -> None:
        self.pending.append(line)
        if len(self.pending) == 1:
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        lines, self.pending = self.pending, []
        stream = self.stream or sys.stderr  # looked up late: tests and daemons swap it
        try:
            stream.write("".join(lines))
            stream.flush()
        except (OSError, ValueError):
            pass  # a closed or full stderr must not fail requests
