"""Start-to-ready time of `satellite run` on a data dir holding N blobs, as systemd sees it:
from the process start to READY=1 on a NOTIFY_SOCKET datagram socket (the store is open
and the port bound), and to the first `GET /v2/` answered.

    .venv/bin/python -m bench.startup [--blobs 10000] [--runs 5]

The blobs are pushed once through the satellite's own upload API (monolithic POSTs of
small distinct blobs), so the data dir is what a real one of that size looks like.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from tests.support.images import sha256_bytes
from tests.support.satellite import SatelliteProcess


def fill(sat: SatelliteProcess, count: int) -> None:
    with httpx.Client(base_url=sat.url, timeout=30, trust_env=False) as http:
        for i in range(count):
            data = f"blob {i}\n".encode() * 8
            digest = sha256_bytes(data)
            response = http.post(f"/v2/bench/startup/blobs/uploads/?digest={digest}", content=data)
            if response.status_code != 201:
                raise RuntimeError(f"upload {i}: {response.status_code} {response.text[:200]}")


def measure(sat: SatelliteProcess, notify_dir: Path) -> tuple[float, float]:
    """(seconds to READY=1, seconds to the first GET /v2/ 200) of one start."""
    address = str(notify_dir / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(address)
    listener.settimeout(60)
    env = {**sat._env(), "NOTIFY_SOCKET": address}
    log = (sat.root / "startup.log").open("ab")
    started = time.monotonic()
    proc = subprocess.Popen(sat.command(), env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(100):
            if b"READY=1" in listener.recv(4096):
                break
        ready = time.monotonic() - started
        with httpx.Client(trust_env=False, timeout=10) as http:
            assert http.get(f"{sat.url}/v2/").status_code == 200
        answered = time.monotonic() - started
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        listener.close()
        os.unlink(address)
        log.close()
    return ready, answered


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--blobs", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="startup.", dir="/tmp") as tmp:
        sat = SatelliteProcess(Path(tmp) / "sat")
        sat.start()
        fill(sat, args.blobs)
        sat.stop()
        blobs = sum(1 for p in (sat.data_dir / "blobs").rglob("*") if p.is_file())
        results = [measure(sat, Path(tmp)) for _ in range(args.runs)]
    ready = [r for r, _ in results]
    answered = [a for _, a in results]
    print(f"data dir with {blobs} blobs, {args.runs} starts")
    print(
        f"start -> READY=1:        median {statistics.median(ready):.3f} s, max {max(ready):.3f} s"
    )
    print(
        f"start -> first GET /v2/: median {statistics.median(answered):.3f} s, "
        f"max {max(answered):.3f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
