"""Serves an ASGI app under hypercorn, started programmatically, until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Sequence

from hypercorn.asyncio import serve
from hypercorn.config import Config as HypercornConfig
from starlette.types import ASGIApp

from appliance import zerocopy
from registry_proxy import framing

log = logging.getLogger("satellite")


def hypercorn_config(host: str, port: int) -> HypercornConfig:
    cfg = HypercornConfig()
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
) -> None:
    """Runs until SIGTERM or SIGINT, then stops accepting and drains in-flight requests.

    ``side_servers`` (the admin socket) run beside the main app and stop with it."""
    if zero_copy:
        zerocopy.install()
    framing.install()  # after zerocopy: it subclasses the protocol class in place
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("listening on http://%s:%d", host, port)
    servers = [serve(app, hypercorn_config(host, port), shutdown_trigger=stop.wait)]  # type: ignore[arg-type]
    servers += [serve(side, cfg, shutdown_trigger=stop.wait) for side, cfg in side_servers]  # type: ignore[arg-type]
    await asyncio.gather(*servers)
    log.info("stopped")
