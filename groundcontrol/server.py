"""``groundcontrol serve``: the app on hypercorn, started programmatically.

SIGTERM and SIGINT trip the shutdown trigger; hypercorn stops accepting, lets requests in
flight finish (bounded by ``graceful_timeout``), and the app's lifespan closes the database.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config as HypercornConfig

from groundcontrol.app import create_app
from groundcontrol.config import Config, parse_listen
from registry_proxy import framing


def hypercorn_config(config: Config) -> HypercornConfig:
    host, port = parse_listen(config.listen)
    hc = HypercornConfig()
    hc.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    hc.graceful_timeout = 10
    hc.accesslog = logging.getLogger("groundcontrol.access")
    hc.errorlog = logging.getLogger("groundcontrol.error")
    return hc


async def serve(config: Config) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    framing.install()
    try:
        app: Any = create_app(config)  # an ASGI app; hypercorn's own types are narrower
        await hypercorn_serve(app, hypercorn_config(config), shutdown_trigger=stop.wait)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
