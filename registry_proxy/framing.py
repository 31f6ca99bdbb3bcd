"""Strict HTTP/1.1 request framing for hypercorn: one reading of a request's bytes.

h11, hypercorn's HTTP/1.1 parser, is lenient where a proxy in front of the server may
not be, and two parsers that disagree on where a request ends are how requests are
smuggled. It frames a request that carries both Content-Length and Transfer-Encoding by
the latter and keeps the connection open, and it accepts a bare LF as a line ending (in
the request head and in a chunked body's trailer section; chunk-size lines and the CRLF
after each chunk it already reads strictly).
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
from h11._readers import ChunkedReader

log = logging.getLogger("satellite.framing")

SUPPORTED = ("0.17.", "0.18.")
# the h11 releases whose ChunkedReader state (``_reading_trailer``, ``_bytes_in_chunk``,
# ``_bytes_to_discard``) the trailer check reads; tests/e2e/test_request_framing.py
# notices when a release stops behaving so
H11_SUPPORTED = ("0.14.", "0.15.", "0.16.")
_BARE_LF = re.compile(rb"(?<!\r)\n")
_HEAD_END = re.compile(rb"\n\r?\n")  # where h11 ends a request head (and a trailer)
_LAST_CHUNK = re.compile(rb"0+[ \t]*(;.*)?")  # a chunk-size line of size zero


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
        elif self.their_state is h11.SEND_BODY:
            self._check_trailer()
        event = super().next_event()
        if isinstance(event, h11.Request):
            names = {name for name, _ in event.headers}
            if b"content-length" in names and b"transfer-encoding" in names:
                raise h11.RemoteProtocolError(
                    "both Content-Length and Transfer-Encoding in one request", 400
                )
        return event

    def _check_trailer(self) -> None:
        """Refuses a bare LF in a chunked body's trailer section, before h11 reads it.

        Looked at only where h11's chunked reader stands at a line: at the trailer, or at
        a chunk-size line (a last chunk, size 0, is followed by the trailer)."""
        reader = getattr(self, "_reader", None)
        if not isinstance(reader, ChunkedReader):
            return
        pending = self.trailing_data[0]
        if not reader._reading_trailer:
            if reader._bytes_in_chunk:
                return  # inside a chunk's data: any byte goes
            footer = reader._bytes_to_discard  # the CRLF after a chunk, still to come
            if not pending.startswith(footer):
                return  # h11 refuses a malformed footer itself
            pending = pending[len(footer) :]
            line_end = pending.find(b"\r\n")
            if line_end < 0 or not _LAST_CHUNK.fullmatch(pending[:line_end]):
                return  # h11 reads (and validates) the chunk-size line itself
            pending = pending[line_end + 2 :]
        if pending.startswith(b"\r\n"):
            return  # no trailer fields
        end = _HEAD_END.search(pending)
        section = pending if end is None else pending[: end.end()]
        if _BARE_LF.search(section) is not None:
            raise h11.RemoteProtocolError("bare LF in the chunked body's trailer", 400)


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
    if not version("h11").startswith(H11_SUPPORTED):
        log.warning("h11 %s is not one strict framing was written for", version("h11"))
        return False
    current: type = vars(hypercorn.protocol)["H11Protocol"]
    if not issubclass(current, StrictH11):
        strict = type(f"Strict{current.__name__}", (StrictH11, current), {})
        # the name hypercorn looks the class up by when it accepts a connection
        setattr(hypercorn.protocol, "H11Protocol", strict)  # noqa: B010
    return True
