"""A deadline on request bodies: a client that stops sending does not hold a connection.

The body must arrive at ``min_rate`` bytes/s or more, averaged over consecutive windows of
``window`` seconds (the first window is the grace period); optionally the whole body
within ``timeout`` seconds. A rate floor rather than a fixed total: a 5 GiB layer over a
slow but steady link is legitimate, one byte every few seconds is not. Only time spent
waiting for the client counts: the app writing a chunk to disk is not the client's fault.

A client found too slow is answered ``408`` with the app's own error body and
``Connection: close``; a client that goes away in the middle of its body is an INFO line,
not an error. Both programs (the satellite's registry and Ground Control) wrap their app
in :class:`BodyDeadline`; GET and HEAD requests pass untouched, so the hot path pays
nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from registry_proxy.edge import send_answer

log = logging.getLogger("satellite.http")
_NO_BODY_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class BodyLimits:
    min_rate: int = 1024  # bytes/s averaged over each window; 0: no rate floor
    window: float = 30.0  # seconds; also the grace before the first check
    timeout: float = 0.0  # seconds for the whole body; 0: no overall limit

    @property
    def active(self) -> bool:
        return self.min_rate > 0 or self.timeout > 0


class BodyTooSlow(Exception):
    """Raised from ``receive`` when a deadline passes; the middleware answers 408."""


class _Meter:
    """Virtual time (time spent waiting for the client) and the bytes of each window."""

    def __init__(self, limits: BodyLimits) -> None:
        self.limits = limits
        self.required = limits.min_rate * limits.window
        self.elapsed = 0.0
        self.window_end = limits.window
        self.window_bytes = 0

    def budget(self) -> float | None:
        """Seconds the next wait may last before a limit is broken (None: no limit)."""
        budget = None
        if self.limits.min_rate > 0:
            end = self.window_end
            if self.window_bytes >= self.required:
                end += self.limits.window  # this window is paid; the next one is not
            budget = end - self.elapsed
        if self.limits.timeout > 0:
            left = self.limits.timeout - self.elapsed
            budget = left if budget is None else min(budget, left)
        return max(budget, 0.0) if budget is not None else None

    def advance(self, seconds: float, received: int) -> str | None:
        """Counts a wait that brought `received` bytes; the broken limit, if any."""
        self.elapsed += seconds
        limits = self.limits
        if limits.timeout > 0 and self.elapsed > limits.timeout:
            return f"the request body took longer than {limits.timeout:g} s"
        if limits.min_rate > 0:
            while self.elapsed >= self.window_end:
                if self.window_bytes < self.required:
                    return (
                        f"the request body arrived slower than {limits.min_rate} bytes/s "
                        f"over {limits.window:g} s"
                    )
                self.window_end += limits.window
                self.window_bytes = 0
        self.window_bytes += received
        return None


RenderError = Callable[[str], tuple[bytes, str]]  # message -> (body, content type)


class BodyDeadline:
    def __init__(
        self,
        app: ASGIApp,
        *,
        limits: BodyLimits,
        render: RenderError,
        logger: logging.Logger = log,
    ) -> None:
        self.app = app
        self.limits = limits
        self.render = render
        self.log = logger

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in _NO_BODY_METHODS or not self.limits.active:
            await self.app(scope, receive, send)
            return
        meter = _Meter(self.limits)
        loop = asyncio.get_running_loop()
        body_done = False
        too_slow: str | None = None
        started = False

        async def timed_receive() -> Message:
            nonlocal body_done, too_slow
            if body_done:  # e.g. a response listening for the client's disconnect
                return await receive()
            budget = meter.budget()
            began = loop.time()
            try:
                async with asyncio.timeout(budget):
                    message = await receive()
            except TimeoutError:
                too_slow = meter.advance(loop.time() - began, 0) or "the request body stalled"
                raise BodyTooSlow(too_slow) from None
            received = 0
            if message["type"] == "http.request":
                received = len(message.get("body", b""))
                body_done = not message.get("more_body", False)
            else:
                body_done = True  # http.disconnect
            broken = meter.advance(loop.time() - began, received)
            if broken is not None and not body_done:
                too_slow = broken
                raise BodyTooSlow(broken)
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            if too_slow is not None:
                return  # the app's own answer to the exception; the 408 goes instead
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, timed_receive, watched_send)
        except BodyTooSlow:
            pass
        except ClientDisconnect:
            self.log.info(
                "client %s went away while sending the body of %s %s",
                _client(scope),
                scope["method"],
                scope["path"],
            )
            return
        if too_slow is None:
            return
        self.log.info(
            "client %s too slow: %s; %s %s answered 408",
            _client(scope),
            too_slow,
            scope["method"],
            scope["path"],
        )
        if started:
            return  # the response is under way; the server closes the connection
        body, content_type = self.render(too_slow)
        await send_answer(send, 408, body, content_type, [(b"connection", b"close")])


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "-"
