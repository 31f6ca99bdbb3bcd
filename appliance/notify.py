"""systemd's notify protocol (sd_notify(3)), spoken from the daemon's event loop.

`READY=1` is sent once the store is open and the listening socket is bound (the app's
lifespan startup has completed on a socket bound before it), `STATUS=` whenever the
daemon has something new to say, `WATCHDOG=1` every half `WATCHDOG_USEC` from a task on
the event loop itself, so a wedged loop misses its pings and systemd restarts the
service, and `STOPPING=1` when SIGTERM starts the graceful stop.

Without `NOTIFY_SOCKET` (not under systemd, or `Type=` other than notify) every call
is a no-op, so the daemon calls them unconditionally:

    serve_until_signalled(app, host, port)    # READY, WATCHDOG, STOPPING via notify.current()
    notify.current().set_status(state_version=12, outbox_depth=3)   # from anywhere in the daemon
    # STATUS=serving on 0.0.0.0:8585; state_version=12 outbox_depth=3
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("satellite.notify")


class Notifier:
    """One process's channel to systemd; all methods are cheap and never raise."""

    def __init__(self, socket_path: str | None, watchdog_usec: int | None = None) -> None:
        self._address: str | bytes | None = None
        if socket_path:
            # a leading "@" names a socket in the abstract namespace
            self._address = (
                b"\0" + socket_path[1:].encode() if socket_path.startswith("@") else socket_path
            )
        self.watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None
        self._phase = "starting"
        self._fields: dict[str, str] = {}
        self._sock: socket.socket | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """From `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` (the watchdog is ours only
        when WATCHDOG_PID is unset or names this process, as sd_watchdog_enabled(3) says)."""
        env = os.environ if environ is None else environ
        usec: int | None = None
        pid = env.get("WATCHDOG_PID")
        if env.get("WATCHDOG_USEC", "").isdigit() and (pid is None or pid == str(os.getpid())):
            usec = int(env["WATCHDOG_USEC"])
        return cls(env.get("NOTIFY_SOCKET") or None, usec)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between pings: half the timeout, as systemd recommends."""
        return None if self.watchdog_usec is None else self.watchdog_usec / 2_000_000

    @property
    def status_text(self) -> str:
        fields = " ".join(f"{key}={value}" for key, value in self._fields.items())
        return f"{self._phase}; {fields}" if fields else self._phase

    def send(self, *assignments: str) -> bool:
        """One datagram of `KEY=VALUE` lines; False when there is no socket or it failed."""
        if self._address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(assignments).encode(), self._address)
        except OSError as exc:
            # systemd gone or the socket full: the service goes on; the watchdog decides
            log.warning("sd_notify failed: %s", exc)
            return False
        return True

    def ready(self, phase: str) -> None:
        self._phase = phase
        self.send("READY=1", f"STATUS={self.status_text}")

    def set_status(self, phase: str | None = None, **fields: object) -> None:
        """Updates the STATUS= line: a phase, and fields (None removes one) kept in order."""
        if phase is not None:
            self._phase = phase
        for key, value in fields.items():
            if value is None:
                self._fields.pop(key, None)
            else:
                self._fields[key] = str(value)
        self.send(f"STATUS={self.status_text}")

    def replace_fields(self, fields: Mapping[str, str]) -> None:
        """The STATUS= line's fields, all at once (a supervisor's, from its worker's)."""
        self._fields = dict(fields)
        self.send(f"STATUS={self.status_text}")

    def stopping(self) -> None:
        self._phase = "stopping"
        self.send("STOPPING=1", f"STATUS={self.status_text}")

    async def watchdog(self) -> None:
        """Pings while the event loop turns; runs until cancelled (or returns at once when
        systemd set no watchdog)."""
        interval = self.watchdog_interval
        if interval is None or not self.enabled:
            return
        while True:
            self.send("WATCHDOG=1")
            await asyncio.sleep(interval)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


_current: Notifier | None = None


def current() -> Notifier:
    """The process's notifier, made from the environment at the first call: sd_notify is
    per process, so the server and the parts of the daemon that report share this one."""
    global _current
    if _current is None:
        _current = Notifier.from_environ()
    return _current


def use(notifier: Notifier) -> None:
    """Makes ``notifier`` the process's (a forked worker's, which tells its supervisor)."""
    global _current
    _current = notifier


def on_startup_complete(app: ASGIApp, callback: Callable[[], None]) -> ASGIApp:
    """`app`, calling `callback` right after its lifespan startup completed (the store is
    open then); every other scope passes straight through."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await app(scope, receive, send)
            return

        async def watching(message: Message) -> None:
            await send(message)
            if message["type"] == "lifespan.startup.complete":
                callback()

        await app(scope, receive, watching)

    return wrapped


def listening_socket(
    host: str, port: int, backlog: int = 1024, *, reuse_port: bool = False, listen: bool = True
) -> int:
    """A bound, listening TCP socket's descriptor, for hypercorn's `fd://` bind: the port
    accepts (queues) connections from here on, before the app is ready to serve them.
    ``reuse_port``: one of several serving processes' sockets on the same port (the kernel
    spreads connections over them); ``listen=False`` only holds the port (a socket that
    does not listen gets no connections)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        if listen:
            sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    # hypercorn's socket object owns the descriptor from here on
    return sock.detach()
