"""Serves an ASGI app under hypercorn, started programmatically, until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Sequence

from hypercorn.asyncio import serve
from hypercorn.config import Config as HypercornConfig
from starlette.types import ASGIApp

from appliance import notify, zerocopy
from registry_proxy import framing

log = logging.getLogger("satellite")


class ServerConfig(HypercornConfig):
    """hypercorn's config, with the headers it adds to every response (``Date``) built
    once a second instead of per response (formatting the date was 2 to 3% of a manifest
    request's CPU)."""

    _cached: tuple[str, int, list[tuple[bytes, bytes]]] | None = None

    def response_headers(self, protocol: str) -> list[tuple[bytes, bytes]]:
        second = int(time.time())
        cached = self._cached
        if cached is None or cached[0] != protocol or cached[1] != second:
            cached = self._cached = (protocol, second, super().response_headers(protocol))
        return list(cached[2])


def hypercorn_config(host: str, port: int) -> HypercornConfig:
    cfg = ServerConfig()
    cfg.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    cfg.accesslog = None
    cfg.errorlog = logging.getLogger("hypercorn.error")
    cfg.keep_alive_timeout = 75
    # hypercorn closes a connection after 1,000 requests by default; runtimes keep a few
    # connections open for a whole pull, and a reconnect storm shows up as tail latency
    cfg.keep_alive_max_requests = 1_000_000
    cfg.graceful_timeout = 10
    cfg.include_server_header = False
    return cfg


async def serve_until_signalled(
    app: ASGIApp,
    host: str,
    port: int,
    *,
    zero_copy: bool = True,
    side_servers: Sequence[tuple[ASGIApp, HypercornConfig]] = (),
    notifier: notify.Notifier | None = None,
    reuse_port: bool = False,
) -> None:
    """Runs until SIGTERM or SIGINT, then stops accepting and drains in-flight requests.
    Under systemd (Type=notify) it says READY=1 once the store is open on a bound port,
    pings the watchdog from this event loop and says STOPPING=1 on the signal.
    ``side_servers`` (the admin socket) run beside the main app and stop with it.
    ``reuse_port``: one of several serving processes (appliance/workers.py)."""
    if not zero_copy:
        log.info("zero-copy blob sends: off (server.zero_copy = false)")
    elif zerocopy.install():
        log.info("zero-copy blob sends: on (sendfile under hypercorn's HTTP/1.1)")
    else:
        log.warning("zero-copy blob sends: off (this hypercorn is not supported)")
    framing.install()  # after zerocopy: it subclasses the protocol class in place
    notifier = notifier or notify.current()
    stop = asyncio.Event()

    def on_signal() -> None:
        notifier.stopping()
        stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    config = hypercorn_config(host, port)
    fd = notify.listening_socket(host, port, config.backlog, reuse_port=reuse_port)
    config.bind = [f"fd://{fd}"]
    app = notify.on_startup_complete(app, lambda: notifier.ready(f"serving on {host}:{port}"))
    watchdog = loop.create_task(notifier.watchdog())
    log.info("listening on http://%s:%d", host, port)
    servers = [serve(app, config, shutdown_trigger=stop.wait)]  # type: ignore[arg-type]
    servers += [serve(side, cfg, shutdown_trigger=stop.wait) for side, cfg in side_servers]  # type: ignore[arg-type]
    try:
        await asyncio.gather(*servers)
    finally:
        watchdog.cancel()
        await asyncio.gather(watchdog, return_exceptions=True)
        notifier.close()
    log.info("stopped")
