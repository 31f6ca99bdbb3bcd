"""Every failure of the registry answered at one edge, with an OCI error body
(``{"errors": [{"code", "message", "detail"}]}``, no body after HEAD):

- ``RegistryError`` raised anywhere below: its code and status (registry_proxy/errors.py);
- the framework's own answers (a path no route knows, a method a route does not take):
  ``NOT_FOUND`` 404 and ``UNSUPPORTED`` 405, instead of Starlette's plain text;
- any other exception before the response started: logged with a request id and
  answered 500 ``UNKNOWN`` with that id in the detail and the ``X-Request-Id`` header.
  Once a response has started it cannot be answered: the exception goes on to the
  server, which cuts the connection so that the client never takes a partial body for
  a whole one.
"""

from __future__ import annotations

import json
import logging
import secrets

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from registry_proxy.errors import RegistryError

log = logging.getLogger("satellite.registry")

_FRAMEWORK_CODES = {404: "NOT_FOUND", 405: "UNSUPPORTED"}


def error_response(exc: RegistryError, method: str) -> Response:
    if method == "HEAD":
        return Response(status_code=exc.status, headers=exc.headers)
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def registry_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RegistryError)
    return error_response(exc, request.method)


async def framework_error(request: Request, exc: Exception) -> Response:
    """Starlette's HTTPException (no route, method not allowed) as the protocol's error."""
    assert isinstance(exc, HTTPException)
    code = _FRAMEWORK_CODES.get(exc.status_code, "UNKNOWN")
    message = {404: "no such endpoint", 405: f"{request.method} is not allowed here"}.get(
        exc.status_code, exc.detail
    )
    error = RegistryError(code, message, status=exc.status_code, headers=dict(exc.headers or {}))
    return error_response(error, request.method)


EXCEPTION_HANDLERS = {RegistryError: registry_error, HTTPException: framework_error}


class PureAsgi:
    """A middleware on plain ASGI messages: nothing buffered, no task per request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app


async def send_answer(
    send: Send,
    status: int,
    body: bytes,
    content_type: str | None,
    headers: list[tuple[bytes, bytes]],
) -> None:
    """A whole response that a middleware gives itself (an error the app could not
    give): ``content_type`` None for a response without a body (after HEAD)."""
    if content_type is not None:
        headers = [
            *headers,
            (b"content-type", content_type.encode()),
            (b"content-length", str(len(body)).encode()),
        ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class UnexpectedErrors(PureAsgi):
    """Answers an exception that escaped every handler."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            if started:
                raise
            request_id = secrets.token_hex(8)
            log.exception(
                "request %s failed: %s %s", request_id, scope.get("method"), scope.get("path")
            )
            error = RegistryError(
                "UNKNOWN",
                "internal error",
                {"request_id": request_id},
                headers={"X-Request-Id": request_id},
            )
            headers = [(b"x-request-id", request_id.encode())]
            if scope.get("method") == "HEAD":
                await send_answer(send, 500, b"", None, headers)
            else:
                body = json.dumps(error.body()).encode()
                await send_answer(send, 500, body, "application/json", headers)
