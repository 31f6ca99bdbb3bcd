"""Strict HTTP/1.1 request framing for hypercorn: one reading of a request's bytes.

h11, hypercorn's HTTP/1.1 parser, is lenient where a proxy in front of the server may
not be, and two parsers that disagree on where a request ends are how requests are
smuggled. It frames a request that carries both Content-Length and Transfer-Encoding by
the latter and keeps the connection open, and it accepts a bare LF as a line ending.
RFC 9112 lets a server refuse both (§6.3: such a request "ought to be handled as an
error" and the connection closed; §2.2: a bare LF MAY be accepted, so MAY be refused).
A ``StrictConnection`` refuses them the way h11 refuses any malformed request: hypercorn
answers 400 with ``Connection: close`` and closes the connection.

An ASGI middleware cannot do this: by the time the app sees a request, the line endings
are gone and the body is already framed. ``install()`` therefore makes hypercorn's
HTTP/1.1 protocol use a ``StrictConnection``, subclassing whichever protocol class is in
place (appliance/zerocopy.py installs its own first). HTTP/2 framing is binary and
unaffected.
"""

from __future__ import annotations

import logging
import re
from importlib.metadata import version
from typing import Any

import h11
import hypercorn.protocol

log = logging.getLogger("satellite.framing")

SUPPORTED = ("0.17.", "0.18.")
_BARE_LF = re.compile(rb"(?<!\r)\n")
_HEAD_END = re.compile(rb"\n\r?\n")  # where h11 ends a request head


class StrictConnection(h11.Connection):
    """An h11 server connection that refuses requests with ambiguous framing."""

    def next_event(self) -> Any:
        if self.their_state is h11.IDLE:
            # the bytes of the next request head (h11 has not parsed them yet)
            pending = self.trailing_data[0]
            end = _HEAD_END.search(pending)
            head = pending if end is None else pending[: end.end()]
            if _BARE_LF.search(head) is not None:
                raise h11.RemoteProtocolError("bare LF in the request head", 400)
        event = super().next_event()
        if isinstance(event, h11.Request):
            names = {name for name, _ in event.headers}
            if b"content-length" in names and b"transfer-encoding" in names:
                raise h11.RemoteProtocolError(
                    "both Content-Length and Transfer-Encoding in one request", 400
                )
        return event


class StrictH11:
    """Mixed into hypercorn's H11Protocol: the same protocol over a StrictConnection."""

    config: Any
    connection: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connection = StrictConnection(
            h11.SERVER, max_incomplete_event_size=self.config.h11_max_incomplete_size
        )


def install() -> bool:
    """Makes hypercorn's HTTP/1.1 path frame requests strictly; True when installed."""
    installed = version("hypercorn")
    if not installed.startswith(SUPPORTED):
        log.warning("hypercorn %s is not one strict framing was written for", installed)
        return False
    current: type = vars(hypercorn.protocol)["H11Protocol"]
    if not issubclass(current, StrictH11):
        strict = type(f"Strict{current.__name__}", (StrictH11, current), {})
        # the name hypercorn looks the class up by when it accepts a connection
        setattr(hypercorn.protocol, "H11Protocol", strict)  # noqa: B010
    return True
