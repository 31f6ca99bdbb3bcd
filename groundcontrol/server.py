"""``groundcontrol serve``: the app on hypercorn, started programmatically.

SIGTERM and SIGINT trip the shutdown trigger; held state long-polls are answered at once,
hypercorn stops accepting, lets requests in flight finish (bounded by
``graceful_timeout``), and the app's lifespan closes the database.
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
    app: Any = create_app(config, listen=True)  # ASGI; hypercorn's own types are narrower

    async def shutdown_trigger() -> None:
        await stop.wait()
        # answer held long-polls now: hypercorn waits for requests in flight to finish
        services = getattr(app.state, "services", None)
        if services is not None:
            services.watch.close()

    try:
        await hypercorn_serve(app, hypercorn_config(config), shutdown_trigger=shutdown_trigger)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
