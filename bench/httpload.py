"""A small HTTP/1.1 keep-alive load generator (asyncio), for HEAD (which wrk cannot do).

wrk 4.1 and h2load hang on HEAD responses that carry a Content-Length (they wait for the
body). This client knows that a HEAD response has no body, whatever its headers say.

    .venv/bin/python -m bench.httpload --url http://127.0.0.1:5000/v2/x/manifests/v1 \
        --method HEAD --connections 64 --duration 10 -H 'Accept: application/...'

Each of N connections sends one request, waits for the whole response, then sends the
next one (no pipelining), until the duration has passed or the request budget is spent.
Every request's latency (send → last byte of the response) is recorded. The result is
printed as one JSON object: requests, errors, statuses, req/s, latency percentiles (ms).

It uses asyncio Protocols (not streams) to keep the client's own cost per request low;
on this 2-core machine it is pinned to one core by the caller (see bench/registry.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from urllib.parse import urlsplit


class _Conn(asyncio.Protocol):
    def __init__(self, run: _Run) -> None:
        self.run = run
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.sent_at = 0.0
        self.need: int | None = None  # total bytes of the current response, once known
        self.close_after = False
        self.in_flight = False
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._send()

    def _send(self) -> None:
        run = self.run
        if run.stopping or run.issued >= run.max_requests:
            assert self.transport is not None
            self.transport.close()
            return
        run.issued += 1
        self.in_flight = True
        self.need = None
        self.sent_at = time.perf_counter()
        assert self.transport is not None
        self.transport.write(run.request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            if self.need is None:
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(self.buf[:end]).lower()
                status = int(head[9:12])
                body = 0
                if not self.run.head and status not in (204, 304):
                    idx = head.find(b"\r\ncontent-length:")
                    if idx < 0:
                        self.run.fail("response without content-length (chunked unsupported)")
                        assert self.transport is not None
                        self.transport.close()
                        return
                    line_end = head.find(b"\r\n", idx + 2)
                    body = int(head[idx + 17 : line_end if line_end >= 0 else len(head)])
                self.need = end + 4 + body
                self.status = status
                self.close_after = b"\r\nconnection: close" in head
            if len(self.buf) < self.need:
                return
            del self.buf[: self.need]
            now = time.perf_counter()
            self.run.record(self.status, now - self.sent_at)
            self.in_flight = False
            if self.close_after:  # the server ends this connection: the slot reconnects
                assert self.transport is not None
                self.transport.close()
                return
            self._send()
            if not self.buf:
                return

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self.run.fail(f"{type(exc).__name__}: {exc}")
        elif self.in_flight and not self.run.stopping:
            self.run.fail("connection closed by the server with a request in flight")
        if not self.closed.done():
            self.closed.set_result(None)


class _Run:
    def __init__(self, request: bytes, head: bool, max_requests: int) -> None:
        self.request = request
        self.head = head
        self.max_requests = max_requests
        self.issued = 0
        self.stopping = False
        self.latencies: list[float] = []
        self.statuses: dict[int, int] = {}
        self.errors: list[str] = []
        self.reconnects = 0

    def record(self, status: int, latency: float) -> None:
        self.latencies.append(latency)
        self.statuses[status] = self.statuses.get(status, 0) + 1

    def fail(self, message: str) -> None:
        if len(self.errors) < 20:
            self.errors.append(message)


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(p / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


async def run_load(
    url: str,
    *,
    method: str = "HEAD",
    connections: int = 64,
    duration: float = 10.0,
    max_requests: int = 5_000_000,
    headers: list[str] | None = None,
) -> dict[str, object]:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 80
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    lines = [f"{method} {path} HTTP/1.1", f"Host: {parts.netloc}", "User-Agent: bench-httpload"]
    lines += headers or []
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    run = _Run(request, method == "HEAD", max_requests)
    loop = asyncio.get_running_loop()
    current: list[_Conn | None] = [None] * connections

    async def slot(i: int) -> None:
        # one connection at a time; a new one when the server closes the last one
        # (hypercorn closes after keep_alive_max_requests, 1000 by default, as wrk does)
        for attempt in range(100_000):
            if run.stopping or run.issued >= run.max_requests:
                return
            if attempt:
                run.reconnects += 1
            _, proto = await loop.create_connection(lambda: _Conn(run), host, port)
            current[i] = proto
            await proto.closed

    started = time.perf_counter()
    tasks = [asyncio.create_task(slot(i)) for i in range(connections)]
    await asyncio.sleep(duration)
    run.stopping = True
    elapsed = time.perf_counter() - started
    # in-flight requests finish (bounded wait); they are not counted in req/s
    done = len(run.latencies)
    await asyncio.wait(tasks, timeout=10)
    for c in current:
        if c is not None and c.transport is not None:
            c.transport.close()
    for t in tasks:
        t.cancel()
    lat = sorted(run.latencies[:done])
    ms = [x * 1000 for x in lat]
    return {
        "url": url,
        "method": method,
        "connections": connections,
        "duration_s": round(elapsed, 3),
        "requests": done,
        "statuses": {str(k): v for k, v in run.statuses.items()},
        "errors": run.errors,
        "reconnects": run.reconnects,
        "rps": done / elapsed if elapsed > 0 else 0.0,
        "latency_ms": {
            "p50": percentile(ms, 50),
            "p90": percentile(ms, 90),
            "p99": percentile(ms, 99),
            "max": ms[-1] if ms else float("nan"),
            "mean": sum(ms) / len(ms) if ms else float("nan"),
        },
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.httpload", description=__doc__.split("\n")[0])
    p.add_argument("--url", required=True)
    p.add_argument("--method", default="HEAD", choices=["HEAD", "GET"])
    p.add_argument("--connections", "-c", type=int, default=64)
    p.add_argument("--duration", "-d", type=float, default=10.0)
    p.add_argument("--max-requests", type=int, default=5_000_000)
    p.add_argument("-H", "--header", action="append", default=[])
    args = p.parse_args(argv)
    result = asyncio.run(
        run_load(
            args.url,
            method=args.method,
            connections=args.connections,
            duration=args.duration,
            max_requests=args.max_requests,
            headers=args.header,
        )
    )
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
