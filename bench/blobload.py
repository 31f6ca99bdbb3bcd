"""A download client that does not copy the body: HTTP/1.1 GETs whose bodies are splice()d
from the socket through a pipe into /dev/null.

    .venv/bin/python -m bench.blobload --url URL -c 1 --count 7      # per-download MB/s
    .venv/bin/python -m bench.blobload --url URL -c 50 --duration 15  # aggregate MB/s

Why: on loopback, the receiver's copy of every byte into user memory is the most expensive
step of a sendfile transfer, so `curl -o /dev/null` (or wrk, with its 8 KiB reads) runs its
core at ~90-100% against nginx and becomes the bottleneck. splice(2) moves the socket's
pages into a pipe and /dev/null drops them, so the client's cost per byte is close to
zero and the figure measures the server. curl figures are reported next to these (what a
copying client sees).

One thread per connection (blocking sockets; os.splice releases the GIL), keep-alive, no
pipelining. Bytes of a download cut short by the end of the duration are counted (as
wrk's Transfer/sec does); completed downloads are reported separately, with the time each
took (request sent → last byte) and their p50/p99: under concurrency, whether every
download gets its share. Output: one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import socket
import statistics
import sys
import threading
import time
from urllib.parse import urlsplit

from bench.httpload import percentile

PIPE_SIZE = 1 << 20
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


class _Worker(threading.Thread):
    def __init__(self, host: str, port: int, request: bytes, stop_at: float, count: int) -> None:
        super().__init__(daemon=True)
        self.addr = (host, port)
        self.request = request
        self.stop_at = stop_at
        self.count = count
        self.bytes = 0
        self.completed = 0
        self.speeds: list[float] = []  # MB/s of each completed download
        self.times: list[float] = []  # seconds of each completed download
        self.error: str | None = None

    def run(self) -> None:
        try:
            self._run()
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"

    def _run(self) -> None:
        pipe_r, pipe_w = os.pipe()
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            try:
                fcntl.fcntl(pipe_w, F_SETPIPE_SZ, PIPE_SIZE)
                chunk = PIPE_SIZE
            except OSError:
                chunk = 64 * 1024
            sock = socket.create_connection(self.addr)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            try:
                for _ in range(self.count):
                    if time.monotonic() >= self.stop_at:
                        break
                    if not self._download(sock, pipe_r, pipe_w, devnull, chunk):
                        break
            finally:
                sock.close()
        finally:
            for fd in (pipe_r, pipe_w, devnull):
                os.close(fd)

    def _download(
        self, sock: socket.socket, pipe_r: int, pipe_w: int, devnull: int, chunk: int
    ) -> bool:
        started = time.perf_counter()
        sock.sendall(self.request)
        buf = b""
        for _ in range(1000):
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("connection closed before the response headers")
            buf += data
            if b"\r\n\r\n" in buf:
                break
        head, _, rest = buf.partition(b"\r\n\r\n")
        status = int(head[9:12])
        if status != 200:
            raise RuntimeError(f"HTTP {status}: {head[:300]!r}")
        length = None
        for line in head.lower().split(b"\r\n")[1:]:
            if line.startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        if length is None:
            raise RuntimeError("no content-length in the response")
        self.bytes += len(rest)
        remaining = length - len(rest)
        fd = sock.fileno()
        while remaining > 0:
            n = os.splice(fd, pipe_w, min(chunk, remaining))
            if n == 0:
                raise ConnectionError(f"connection closed with {remaining} bytes to go")
            m = n
            while m > 0:
                m -= os.splice(pipe_r, devnull, m)
            remaining -= n
            self.bytes += n
            if time.monotonic() >= self.stop_at and remaining > 0:
                return False  # cut short: bytes counted, download not
        elapsed = time.perf_counter() - started
        self.completed += 1
        self.speeds.append(length / elapsed / 1e6)
        self.times.append(elapsed)
        return True


def run(url: str, *, connections: int, duration: float, count: int) -> dict[str, object]:
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUser-Agent: bench-blobload\r\n"
        "Accept: */*\r\n\r\n"
    ).encode("latin-1")
    started = time.monotonic()
    workers = [
        _Worker(parts.hostname or "127.0.0.1", parts.port or 80, request, started + duration, count)
        for _ in range(connections)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=duration + 120)
    elapsed = time.monotonic() - started
    total = sum(w.bytes for w in workers)
    speeds = [s for w in workers for s in w.speeds]
    times = sorted(t for w in workers for t in w.times)
    return {
        "url": url,
        "connections": connections,
        "elapsed_s": round(elapsed, 3),
        "bytes": total,
        "completed": sum(w.completed for w in workers),
        "aggregate_mb_s": total / elapsed / 1e6 if elapsed > 0 else 0.0,
        "per_download_mb_s": speeds,
        "median_download_mb_s": statistics.median(speeds) if speeds else None,
        "per_download_s": [round(t, 4) for t in times],
        "download_s": {
            "p50": percentile(times, 50),
            "p99": percentile(times, 99),
            "max": times[-1] if times else float("nan"),
        },
        "errors": [w.error for w in workers if w.error],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.blobload", description=__doc__.split("\n")[0])
    p.add_argument("--url", required=True)
    p.add_argument("--connections", "-c", type=int, default=1)
    p.add_argument("--duration", "-d", type=float, default=600.0, help="seconds (upper bound)")
    p.add_argument("--count", "-n", type=int, default=1_000_000, help="downloads per connection")
    args = p.parse_args(argv)
    result = run(args.url, connections=args.connections, duration=args.duration, count=args.count)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
