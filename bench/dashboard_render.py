"""The fleet dashboard at 10,000 satellites: how long each page takes to render.

    .venv/bin/python -m bench.dashboard_render [--backend sqlite|postgresql]
        [--satellites 10000] [--groups 20] [--requests 30] [--screenshots DIR]

What it does, on 127.0.0.1 only:

1. starts ``groundcontrol serve`` as a real process on a fresh SQLite file or a
   throwaway PostgreSQL 15 cluster (bench.groundcontrol_checkins' helpers);
2. writes a fleet directly into the database: N registered satellites in ``--groups``
   groups, each with labels and a last report (3 images, ~1 KB) in a spread of states
   (online, stale, offline, behind, failing), and for one satellite a week of check-ins
   (the kept maximum, 1,000) and 20 signed states;
3. asks each page ``--requests`` times, one request at a time after two warm-up requests,
   with an operator's Bearer token, and reports the median and the 95th percentile of the
   wall time from request to last byte.

``--screenshots DIR`` then signs in with headless chromium and keeps a screenshot of each
page of that fleet (the images in docs/groundcontrol.md).

The peer in the same run is ``GET /api/v1/status``, the one answer that still reads every
satellite (what the fleet page did before it paged in SQL). The goal: every dashboard page
rendered in ≤ 300 ms (median of the requests) at 10,000 satellites, on both backends;
the 95th percentile is reported beside it (on a shared machine it follows the load).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.groundcontrol_checkins import postgres, server
from groundcontrol.auth import hash_token, new_operator_token
from groundcontrol.db import open_database
from groundcontrol.status import contact_kind, contact_runs
from groundcontrol.store import Queries

GOAL_MS = 300
CHECKINS_KEPT = 1000
STATES_KEPT = 20


def compact(value: Any) -> str:
    """JSON as the store writes it (sorted keys, no spaces): label search depends on it."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _report(name: str, seq: int, sent: float, version: int, failing: bool) -> dict[str, Any]:
    images = [
        {
            "repository": f"library/app{i}",
            "digest": "sha256:" + f"{i:x}" * 64,
            "status": "failed" if failing and i == 2 else "present",
            "error": "pull failed: connection reset by peer" if failing and i == 2 else None,
        }
        for i in range(1, 4)
    ]
    return {
        "satellite": name,
        "seq": seq,
        "sent_at": datetime.fromtimestamp(sent, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "state_version": version,
        "images": images,
        "cache_bytes_used": 30 * 2**30 + seq,
        "cache_bytes_max": 50 * 2**30,
        "errors": [],
        "offline_seconds": 0.0,
        "state_expired": False,
        "outbox_depth": seq % 7,
    }


async def seed(database: str, satellites: int, groups: int, now: int) -> tuple[str, str]:
    """The fleet; returns (an operator token, the satellite with a week of check-ins)."""
    token_id, token = new_operator_token()
    detailed = "sat-00000"
    db = await open_database(database)
    try:
        async with db.transaction() as tx:
            await tx.execute(
                "INSERT INTO api_tokens (id, name, token_hash, created_at) VALUES (?, ?, ?, ?)",
                token_id,
                "bench",
                hash_token(token),
                now,
            )
            for g in range(groups):
                await tx.execute(
                    "INSERT INTO groups (name, description, images, created_at, updated_at) "
                    "VALUES (?, '', ?, ?, ?)",
                    f"group-{g:02d}",
                    json.dumps(
                        [{"reference": f"library/app{i}:v1", "platforms": []} for i in (1, 2, 3)]
                    ),
                    now,
                    now,
                )
                await tx.execute(
                    "INSERT INTO group_history (id, group_name, at, change, images, published, "
                    "min_version, max_version) VALUES (?, ?, ?, '+library/app1:v1', ?, ?, 2, 2)",
                    f"{g:020d}",
                    f"group-{g:02d}",
                    now - 3600,
                    compact([{"reference": "library/app1:v1", "platforms": []}]),
                    satellites // groups,
                )
            for i in range(satellites):
                name = f"sat-{i:05d}"
                kind = i % 10  # 6 online, 1 stale, 1 offline, 1 behind, 1 failing
                seen = now - {7: 1200, 8: 86400}.get(kind, 30)
                applied = 1 if kind == 9 else 2
                report = _report(name, 1000, seen, applied, failing=kind == 6)
                await tx.execute(
                    "INSERT INTO satellites (name, labels, config, created_at, updated_at, "
                    "public_key, keyid, credential_hash, registered_at, published_version, "
                    "applied_version, last_seen, last_seq, last_report, failing_images) "
                    "VALUES (?, ?, '{}', ?, ?, 'k', 'k', ?, ?, 2, ?, ?, 1000, ?, ?)",
                    name,
                    compact({"region": ["north", "south", "east", "west"][i % 4], "store": str(i)}),
                    now,
                    now,
                    f"cred-{i}",
                    now - 30 * 86400,
                    applied,
                    seen,
                    compact(report),
                    1 if kind == 6 else 0,
                )
                await tx.execute(
                    "INSERT INTO satellite_groups (satellite, group_name) VALUES (?, ?)",
                    name,
                    f"group-{(i // 10) % groups:02d}",  # every group gets every kind
                )
            # a week of check-ins for one satellite, with an outage and late reports
            points: list[tuple[int, str]] = []
            for seq in range(1, CHECKINS_KEPT + 1):
                sent = now - 7 * 86400 + seq * 604  # the last one some 13 minutes ago
                received = sent + (7200 if 400 < seq < 450 else 1)
                if 200 < seq < 260:
                    continue  # dark for ten hours
                report = _report(detailed, seq, sent, 2, failing=False)
                await tx.execute(
                    "INSERT INTO checkins (satellite, seq, received_at, state_version, report, "
                    "envelope) VALUES (?, ?, ?, 2, ?, '{}')",
                    detailed,
                    seq,
                    received,
                    json.dumps(report),
                )
                points.append((sent, contact_kind(sent, received, 600)))
            # and its contact history, as ingest would have kept it
            await Queries(tx).record_contacts(detailed, contact_runs(points, 3600), 3600, 0)
            # its own group without images: its states are signed through the API below
            # (the other groups' images would need a registry to resolve)
            await tx.execute(
                "INSERT INTO groups (name, description, images, created_at, updated_at) "
                "VALUES ('bench-detail', '', '[]', ?, ?)",
                now,
                now,
            )
            await tx.execute(
                "UPDATE satellite_groups SET group_name = 'bench-detail' WHERE satellite = ?",
                detailed,
            )
    finally:
        await db.close()
    return token, detailed


async def applied_latest(database: str, name: str) -> None:
    """The detailed satellite applied its two newest states (its last 100 check-ins)."""
    db = await open_database(database)
    try:
        async with db.transaction() as tx:
            row = await tx.fetchone("SELECT published_version FROM satellites WHERE name = ?", name)
            assert row is not None
            latest = int(row["published_version"])
            await tx.execute(
                "UPDATE satellites SET applied_version = ? WHERE name = ?", latest, name
            )
            await tx.execute(
                "UPDATE checkins SET state_version = ? WHERE satellite = ? AND seq > ?",
                latest - 1,
                name,
                CHECKINS_KEPT - 100,
            )
            await tx.execute(
                "UPDATE checkins SET state_version = ? WHERE satellite = ? AND seq > ?",
                latest,
                name,
                CHECKINS_KEPT - 30,
            )
    finally:
        await db.close()


async def measure(url: str, token: str, paths: list[str], requests: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120, trust_env=False
    ) as client:
        for path in paths:
            times = []
            size = 0
            for i in range(requests + 2):
                start = time.perf_counter()
                r = await client.get(path)
                elapsed = time.perf_counter() - start
                if r.status_code != 200:
                    raise RuntimeError(f"{path}: {r.status_code} {r.text[:300]}")
                size = len(r.content)
                if i >= 2:
                    times.append(elapsed * 1000)
            times.sort()
            out[path] = {
                "median_ms": round(statistics.median(times), 1),
                "p95_ms": round(times[math.ceil(len(times) * 0.95) - 1], 1),
                "bytes": size,
            }
    return out


def screenshots(url: str, token: str, detailed: str, out: Path, workdir: Path) -> None:
    from tests.groundcontrol.browser import Browser

    with Browser(workdir) as browser:
        browser.get(f"{url}/dashboard/login")
        browser.type("input[name=token]", token)
        browser.click("#login button")
        browser.wait_url(f"{url}/dashboard")
        browser.get(f"{url}/dashboard?q=north&sort=-last_seen")
        browser.screenshot(out / "dashboard-fleet.png")
        browser.get(f"{url}/dashboard/groups/group-07")
        browser.screenshot(out / "dashboard-group.png")
        browser.get(f"{url}/dashboard/satellites/{detailed}")
        browser.click("#publish button")
        browser.wait_title(f"{detailed} · Ground Control")
        browser.screenshot(out / "dashboard-satellite.png")
        browser.get(f"{url}/dashboard/satellites/{detailed}/revoke")
        browser.screenshot(out / "dashboard-revoke.png")
        browser.get(f"{url}/dashboard/audit")
        browser.screenshot(out / "dashboard-audit.png")


def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="gc-dash-bench-"))
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, workdir, True)
        if args.backend == "postgresql":
            database = stack.enter_context(postgres(False))
        else:
            database = f"sqlite:///{workdir / 'gc.db'}"
        gc = server(workdir, database)  # applies the migrations, creates the trust root
        stack.callback(gc.stop)
        gc.wait()
        now = int(time.time())
        t0 = time.perf_counter()
        token, detailed = asyncio.run(seed(database, args.satellites, args.groups, now))
        seed_s = time.perf_counter() - t0
        # the detailed satellite gets real signed states through the API
        with httpx.Client(
            base_url=gc.url, headers={"Authorization": f"Bearer {token}"}, timeout=120
        ) as client:
            for _ in range(STATES_KEPT):
                r = client.post(f"/api/v1/satellites/{detailed}/publish")
                r.raise_for_status()
        asyncio.run(applied_latest(database, detailed))
        paths = [
            "/dashboard",
            "/dashboard?page=150",
            "/dashboard?q=north",
            "/dashboard?q=region%3Dwest&sort=-last_seen",
            "/dashboard?status=failing",
            "/dashboard?group=group-07&status=offline",
            "/dashboard/groups/group-07",
            f"/dashboard/satellites/{detailed}",
            "/dashboard/audit",
            "/api/v1/dashboard",
            "/api/v1/status",  # the peer: every satellite read and derived in Python
        ]
        pages = asyncio.run(measure(gc.url, token, paths, args.requests))
        if args.screenshots:
            screenshots(gc.url, token, detailed, Path(args.screenshots), workdir)
    dashboard = {p: v for p, v in pages.items() if p.startswith("/dashboard")}
    worst = max(v["median_ms"] for v in dashboard.values())
    return {
        "backend": args.backend,
        "satellites": args.satellites,
        "groups": args.groups,
        "requests_per_page": args.requests,
        "seed_seconds": round(seed_s, 1),
        "pages": pages,
        "worst_dashboard_median_ms": worst,
        "worst_dashboard_p95_ms": max(v["p95_ms"] for v in dashboard.values()),
        "goal_ms": GOAL_MS,
        "met": worst <= GOAL_MS,
        "load_average_1m": round(os.getloadavg()[0], 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.dashboard_render", description=__doc__)
    p.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    p.add_argument("--satellites", type=int, default=10_000)
    p.add_argument("--groups", type=int, default=20)
    p.add_argument("--requests", type=int, default=30, help="timed requests per page")
    p.add_argument("--screenshots", metavar="DIR", help="keep a screenshot of each page in DIR")
    result = run(p.parse_args(argv))
    print(json.dumps(result, indent=2))
    return 0 if result["met"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
