"""Ground Control check-in ingest: signed check-ins per second through the real HTTP API.

    .venv/bin/python -m bench.groundcontrol_checkins [--backend sqlite|postgresql]
        [--satellites 10000] [--batch 20] [--batches 1] [--concurrency 32] [--servers 1]
    .venv/bin/python -m bench.groundcontrol_checkins --drain 10000 [--batch 100] [--backend ...]

``--drain N`` is the other shape of load: one satellite back from an outage empties an
outbox of N queued check-ins, in batches of ``--batch``, one request at a time as its
outbox sends them (each batch waits for the previous one's acknowledgement; with
``--concurrency K``, K batches are in flight). It is ``--satellites 1 --batches N/batch
--concurrency 1`` plus the warm-up batch.

What it does, on 127.0.0.1 only:

1. starts ``groundcontrol serve`` (hypercorn) as real processes (``--servers 2`` starts
   two on one PostgreSQL; the client spreads its connections over them), on a fresh SQLite
   file or a throwaway PostgreSQL 15 cluster (``initdb``/``pg_ctl`` as in
   tests/support/postgres.py, with the server's default durability: fsync and
   synchronous_commit on, unless ``--pg-unsafe``);
2. registers N satellites directly in the database (each with its own Ed25519 device key
   and a credential, as ``POST /api/v1/register`` would leave them);
3. pre-signs every check-in (``contract.sign_checkin``) and pre-serialises every request
   body, so the client's signing and JSON costs are outside the measurement;
4. sends the batches over ``--concurrency`` keep-alive httpx connections and measures the
   wall time from the first request to the last answer; every check-in must come back
   ``accepted``.

Reports check-ins ingested per second (and requests per second). The goals: ≥ 2,000/s on
PostgreSQL, ≥ 1,000/s on SQLite, on a 2-core machine where client and server share CPUs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from groundcontrol.auth import hash_token, new_satellite_credential
from groundcontrol.contract import (
    CheckIn,
    ImageStatus,
    generate_key,
    keyid,
    public_key_b64,
    sign_checkin,
)
from groundcontrol.db import open_database
from tests.support.groundcontrol import GroundControlProcess
from tests.support.postgres import postgres_cluster

ROOT = Path(__file__).resolve().parents[1]
IMAGES = tuple(
    ImageStatus(repository=f"library/app{i}", digest="sha256:" + f"{i:x}" * 64, status="present")
    for i in range(1, 4)
)


# --- PostgreSQL ------------------------------------------------------------------------


@contextlib.contextmanager
def postgres(unsafe: bool) -> Iterator[str]:
    """A throwaway cluster (tests.support.postgres, fsync on unless `unsafe`); yields the
    URL of a fresh database."""
    with postgres_cluster(durable=not unsafe) as cluster:
        yield asyncio.run(cluster.create_database("gcbench"))


# --- Ground Control processes ------------------------------------------------------------


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a process so far (Linux /proc): a figure that, unlike the
    wall time, a busy shared machine inflates little."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server(workdir: Path, database: str) -> GroundControlProcess:
    args = ("--data-dir", str(workdir / "gc"), "--database", database)
    return GroundControlProcess(workdir, *args, startup_timeout=60).launch()


# --- the simulated fleet -------------------------------------------------------------------


Row = tuple[str, str, str, str, int]


@dataclass
class Sat:
    name: str
    credential: str
    bodies: list[bytes]


def build_fleet(n: int, batch: int, batches: int, now: float) -> tuple[list[Sat], list[Row]]:
    """Keys, credentials and pre-signed, pre-serialised request bodies; and DB rows."""
    sent = datetime.fromtimestamp(int(now), UTC)
    sats, rows = [], []
    for i in range(n):
        name = f"sat-{i:05d}"
        key = generate_key()
        credential = new_satellite_credential()
        bodies = []
        seq = 0
        for _ in range(batches):
            envelopes = []
            for _ in range(batch):
                seq += 1
                report = CheckIn(
                    satellite=name,
                    seq=seq,
                    sent_at=sent,
                    state_version=0,
                    images=IMAGES,
                    cache_bytes_used=123_456_789,
                    cache_bytes_max=50 * 2**30,
                    errors=(),
                    offline_seconds=0.0,
                    state_expired=False,
                )
                envelopes.append(json.loads(sign_checkin(report, key).to_json()))
            bodies.append(json.dumps({"checkins": envelopes}).encode())
        sats.append(Sat(name, credential, bodies))
        pub = key.public_key()
        rows.append((name, public_key_b64(pub), keyid(pub), hash_token(credential), int(now)))
    return sats, rows


async def register_directly(database: str, rows: list[Row]) -> None:
    db = await open_database(database)
    try:
        async with db.transaction() as tx:
            for name, pub, kid, cred_hash, now in rows:
                await tx.execute(
                    "INSERT INTO satellites (name, labels, config, created_at, updated_at, "
                    "public_key, keyid, credential_hash, registered_at) "
                    "VALUES (?, '{}', '{}', ?, ?, ?, ?, ?, ?)",
                    name,
                    now,
                    now,
                    pub,
                    kid,
                    cred_hash,
                    now,
                )
    finally:
        await db.close()


async def drive(
    urls: list[str], sats: list[Sat], batch: int, concurrency: int
) -> tuple[float, int, int]:
    """(seconds, check-ins accepted, requests) for sending every body once."""
    jobs: asyncio.Queue[tuple[str, str, bytes]] = asyncio.Queue()
    rounds = max(len(s.bodies) for s in sats)
    for r in range(rounds):  # round-robin: each satellite's batches stay in order
        for s in sats:
            if r < len(s.bodies):
                jobs.put_nowait((s.name, s.credential, s.bodies[r]))
    accepted = requests = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    clients = [
        httpx.AsyncClient(base_url=u, limits=limits, timeout=120, trust_env=False) for u in urls
    ]

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal accepted, requests
        while True:
            try:
                name, credential, body = jobs.get_nowait()
            except asyncio.QueueEmpty:
                return
            r = await client.post(
                f"/api/v1/satellites/{name}/checkins",
                content=body,
                headers={
                    "Authorization": f"Bearer {credential}",
                    "Content-Type": "application/json",
                },
            )
            if r.status_code != 200:
                raise RuntimeError(f"{name}: {r.status_code} {r.text[:300]}")
            data = r.json()
            if data["rejected"] or len(data["accepted"]) != batch:
                raise RuntimeError(f"{name}: not all accepted: {r.text[:300]}")
            accepted += len(data["accepted"])
            requests += 1

    try:
        start = time.perf_counter()
        await asyncio.gather(*(worker(clients[i % len(clients)]) for i in range(concurrency)))
        elapsed = time.perf_counter() - start
    finally:
        for c in clients:
            await c.aclose()
    return elapsed, accepted, requests


def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="gc-bench-"))
    servers: list[GroundControlProcess] = []
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, workdir, True)
        if args.backend == "postgresql":
            database = stack.enter_context(postgres(args.pg_unsafe))
        else:
            database = f"sqlite:///{workdir / 'gc.db'}"
        t0 = time.perf_counter()
        print(f"signing {args.satellites} x {args.batch * args.batches} check-ins ...", flush=True)
        sats, rows = build_fleet(args.satellites, args.batch, args.batches, time.time())
        sign_s = time.perf_counter() - t0
        first = server(workdir, database)  # applies the migrations, creates the trust root
        servers.append(first)

        def stop_servers() -> None:
            for server in servers:
                server.stop()

        stack.callback(stop_servers)
        first.wait()
        for _ in range(args.servers - 1):
            servers.append(server(workdir, database))
        for s in servers[1:]:
            s.wait()
        asyncio.run(register_directly(database, rows))
        # warm up: the first batch of a few satellites, not counted (connections, caches,
        # first-call costs); their remaining batches, if any, are measured
        warm = [Sat(w.name, w.credential, w.bodies[:1]) for w in sats[: args.concurrency]]
        asyncio.run(drive([s.url for s in servers], warm, args.batch, args.concurrency))
        for w in sats[: args.concurrency]:
            w.bodies = w.bodies[1:]
        measured = [s for s in sats if s.bodies]
        if args.profile:
            pyspy = [
                subprocess.Popen(
                    [
                        str(Path(sys.executable).parent / "py-spy"),
                        "record",
                        "-o",
                        f"{args.profile}-{i}.txt",
                        "-f",
                        "raw",
                        "-p",
                        str(s.pid),
                        "-r",
                        "200",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                for i, s in enumerate(servers)
            ]
            time.sleep(1)
        cpu_before = sum(cpu_seconds(s.pid) for s in servers)
        elapsed, accepted, requests = asyncio.run(
            drive([s.url for s in servers], measured, args.batch, args.concurrency)
        )
        server_cpu = sum(cpu_seconds(s.pid) for s in servers) - cpu_before
        if args.profile:
            for p in pyspy:
                p.send_signal(2)
                p.wait(timeout=60)
    return {
        "mode": "drain" if args.drain is not None else "fleet",
        "backend": args.backend + (" (fsync off)" if args.pg_unsafe else ""),
        "servers": args.servers,
        "satellites": args.satellites,
        "batch": args.batch,
        "concurrency": args.concurrency,
        "checkins": accepted,
        "requests": requests,
        "seconds": round(elapsed, 2),
        "checkins_per_s": round(accepted / elapsed),
        "requests_per_s": round(requests / elapsed, 1),
        "presign_seconds": round(sign_s, 1),
        # the servers' CPU per check-in, and the rate one fully available core would give
        "server_cpu_us_per_checkin": round(server_cpu / accepted * 1e6),
        "checkins_per_server_cpu_s": round(accepted / server_cpu) if server_cpu else None,
        "load_average_1m": round(os.getloadavg()[0], 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.groundcontrol_checkins", description=__doc__)
    p.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    p.add_argument("--satellites", type=int, default=10_000)
    p.add_argument("--batch", type=int, default=20, help="check-ins per POST (default 20)")
    p.add_argument("--batches", type=int, default=1, help="POSTs per satellite (default 1)")
    p.add_argument("--concurrency", type=int, default=32, help="concurrent connections")
    p.add_argument("--servers", type=int, default=1, help="groundcontrol serve processes")
    p.add_argument("--pg-unsafe", action="store_true", help="PostgreSQL with fsync off")
    p.add_argument("--profile", metavar="PREFIX", help="py-spy raw profiles of the servers")
    p.add_argument(
        "--drain",
        type=int,
        metavar="N",
        help="one satellite drains N queued check-ins in sequential batches of --batch",
    )
    args = p.parse_args(argv)
    if args.drain is not None:
        if args.drain % args.batch:
            p.error("--drain must be a multiple of --batch")
        # one more batch than measured: the first one is the warm-up
        args.satellites, args.servers = 1, 1
        if args.concurrency == p.get_default("concurrency"):
            args.concurrency = 1  # unless asked for: batches in flight at once
        args.batches = args.drain // args.batch + 1
    if args.servers > 1 and args.backend != "postgresql":
        p.error("--servers > 1 needs --backend postgresql")
    result = run(args)
    print(json.dumps(result, indent=2))
    goal = 2000 if args.backend == "postgresql" else 1000
    verdict = "met" if result["checkins_per_s"] >= goal else "MISSED"
    print(f"goal >= {goal}/s: {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
