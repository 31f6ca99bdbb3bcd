"""A man in the middle between a satellite and Ground Control, for trust tests.

It forwards every request to Ground Control and records the state envelopes that pass.
A test sets ``relay.state_answer`` to a function that, given the satellite's request and
Ground Control's answer, returns the bytes to serve instead (a replayed old state,
another satellite's state, a flipped byte, a forgery); ``None`` from it lets the real
answer through. It runs under hypercorn in a thread of the test process, on loopback.

    with StateRelay(fleet.url) as relay:
        register the satellite with relay.url ...
        relay.state_answer = lambda request, real: old_envelope
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from hypercorn.asyncio import serve
from hypercorn.config import Config
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.support.net import LOOPBACK, free_port


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes


StateTamper = Callable[[Request, Answer], bytes | None]


class StateRelay:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.state_answer: StateTamper | None = None
        self.states_seen: list[bytes] = []
        self.tampered = 0
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    def _app(self) -> Starlette:
        async def forward(request: Request) -> Response:
            body = await request.body()
            headers = {
                k: v
                for k, v in request.headers.items()
                if k.lower() in ("authorization", "content-type")
            }
            async with httpx.AsyncClient(timeout=120, trust_env=False) as client:
                real = await client.request(
                    request.method,
                    f"{self.upstream}{request.url.path}",
                    params=request.query_params,
                    content=body,
                    headers=headers,
                )
            answer = Answer(real.status_code, real.content)
            passthrough = {k: v for k, v in real.headers.items() if k.lower().startswith("x-state")}
            if request.url.path.endswith("/state") and request.method == "GET":
                if answer.status == 200:
                    self.states_seen.append(answer.body)
                tamper = self.state_answer
                forged = tamper(request, answer) if tamper is not None else None
                if forged is not None:
                    self.tampered += 1
                    return Response(forged, 200, media_type="application/json")
            return Response(
                answer.body,
                answer.status,
                headers=passthrough,
                media_type=real.headers.get("content-type"),
            )

        return Starlette(
            routes=[Route("/{path:path}", forward, methods=["GET", "POST", "PUT", "PATCH"])]
        )

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._stop = asyncio.Event()
        config = Config()
        config.bind = [f"{LOOPBACK}:{self.port}"]
        config.accesslog = None
        config.graceful_timeout = 1

        async def main() -> None:
            assert self._stop is not None
            task = loop.create_task(
                serve(self._app(), config, shutdown_trigger=self._stop.wait)  # type: ignore[arg-type]
            )
            self._ready.set()
            await task
            # requests still held (a long-poll to Ground Control) end with the relay
            held = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for other in held:
                other.cancel()
            await asyncio.gather(*held, return_exceptions=True)

        loop.run_until_complete(main())
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()

    def __enter__(self) -> StateRelay:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10)
        for _ in range(100):  # bounded: until the port answers
            try:
                httpx.get(f"{self.url}/healthz", timeout=1)
                break
            except httpx.TransportError:
                threading.Event().wait(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop serving (idempotent): connections are refused from now on."""
        if self._thread is None:
            return
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        self._thread = None
