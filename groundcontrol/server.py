"""``groundcontrol serve``: the app on hypercorn, started programmatically.

SIGTERM and SIGINT trip the shutdown trigger; held state long-polls are answered at once,
hypercorn stops accepting, lets requests in flight finish (bounded by
``graceful_timeout``), and the app's lifespan closes the database.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from typing import Any

from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config as HypercornConfig
from starlette.applications import Starlette

from groundcontrol.app import create_app
from groundcontrol.config import Config
from groundcontrol.errors import GroundControlError
from registry_proxy import framing
from registry_proxy.accesslog import AccessLog
from registry_proxy.deadline import BodyDeadline, BodyLimits
from registry_proxy.units import parse_listen


def _body_timeout(message: str) -> tuple[bytes, str]:
    error = GroundControlError(message, code="request_timeout")
    return json.dumps(error.to_dict()).encode(), "application/json"


def wrap(app: Starlette, config: Config) -> Starlette:
    """Reads request bodies under the configured deadline (a public route such as
    registration must not be held open by a client that trickles its body) and writes
    one access-log line per request, in the satellite's shape."""
    limits = BodyLimits(config.body_min_rate, config.body_rate_window, config.body_timeout)
    app.add_middleware(
        BodyDeadline,
        limits=limits,
        render=_body_timeout,
        logger=logging.getLogger("groundcontrol.http"),
    )
    app.add_middleware(AccessLog, logger=logging.getLogger("groundcontrol.access"))
    return app


def hypercorn_config(config: Config) -> HypercornConfig:
    host, port = parse_listen(config.listen)
    hc = HypercornConfig()
    hc.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    hc.graceful_timeout = 10
    hc.accesslog = None  # the app writes its own (registry_proxy.accesslog)
    hc.errorlog = logging.getLogger("groundcontrol.error")
    return hc


async def serve(config: Config) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    framing.install()
    app: Any = wrap(create_app(config, listen=True), config)  # hypercorn's types are narrower

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
