"""Publish-to-verified latency: how long until a fleet follows what the operator published.

    .venv/bin/python -m bench.fleet_follow [--backend sqlite|postgresql] [--satellites 200]
        [--rounds 5] [--poll-interval 60] [--skip-polling] [--idle 60]

What it does, on 127.0.0.1 only:

1. starts a docker-registry as the central registry with two tiny images (``bench/app:a``
   and ``bench/app:b``: a config blob and a manifest each, pushed over the OCI API), and
   ``groundcontrol serve`` on a fresh SQLite file or a throwaway PostgreSQL cluster;
2. creates a group and N satellites in it, and registers each with the real
   ``appliance.register.register`` (its own device key, identity dir and fleet database);
3. runs N real ``FleetAgent``s in this process (long-poll on, as ``satellite run`` does),
   each with its own identity, key, TrustedState and outbox; the registry beside each agent
   is left out (its consumer only notes the time a state was applied);
4. each round switches the group's image between ``:a`` and ``:b`` (one request publishes N
   states) and measures, per satellite, the time from the request to the moment its agent
   had verified and persisted the new version; then the same with long-poll off and
   plain polling every ``--poll-interval`` seconds (one round), as a fleet without
   long-poll would see it;
5. with ``--idle S``: a real ``satellite run`` process, registered, following Ground
   Control for S seconds with nothing happening: its CPU use and RSS.

Goals (issue "The satellite joins its fleet"): p99 ≤ 2 s with long-poll; idle satellite
RSS ≤ 80 MB and CPU ≤ 1 %.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client import CollectorRegistry

from appliance.fleet import FleetAgent, Intervals
from appliance.fleetdb import FleetDB
from appliance.fleetmetrics import FleetMetrics
from appliance.gcclient import GroundControlClient
from appliance.identity import UpstreamCredential, load_identity
from appliance.register import register
from groundcontrol.contract import ImageStatus, StateDocument, TrustedState
from tests.support.groundcontrol import GroundControlProcess, groundcontrol_env
from tests.support.images import sha256_bytes
from tests.support.postgres import postgres_cluster
from tests.support.upstream import UpstreamRegistry

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def push_tiny_image(registry: str, repo: str, tag: str) -> None:
    config = json.dumps({"architecture": "amd64", "os": "linux", "tag": tag}).encode()
    digest = sha256_bytes(config)
    with httpx.Client(base_url=registry, timeout=30) as client:
        start = client.post(f"/v2/{repo}/blobs/uploads/")
        location = start.headers["location"]
        sep = "&" if "?" in location else "?"
        client.put(f"{location}{sep}digest={digest}", content=config).raise_for_status()
        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": digest,
                "size": len(config),
            },
            "layers": [],
        }
        client.put(
            f"/v2/{repo}/manifests/{tag}",
            content=json.dumps(manifest).encode(),
            headers={"Content-Type": MANIFEST},
        ).raise_for_status()


@dataclass
class TimingConsumer:
    """The StateConsumer of a bench agent: notes when each version was applied."""

    applied: dict[int, float] = field(default_factory=dict)
    event: asyncio.Event = field(default_factory=asyncio.Event)

    async def apply_state(self, doc: StateDocument) -> None:
        self.applied[doc.version] = time.monotonic()
        self.event.set()

    def apply_credentials(self, credentials: Sequence[UpstreamCredential]) -> None:
        pass

    async def image_statuses(self, doc: StateDocument) -> list[ImageStatus]:
        return []

    async def cache_usage(self) -> tuple[int, int]:
        return 0, 0


@contextlib.contextmanager
def database(backend: str, workdir: Path) -> Iterator[list[str]]:
    if backend == "sqlite":
        yield []
        return
    with postgres_cluster() as cluster:
        url = asyncio.run(cluster.create_database("follow"))
        yield ["--database", url]


def gc_cli(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "groundcontrol", *args],
        cwd=ROOT,
        env=groundcontrol_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout.strip()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def start_agents(
    url: str, tokens: dict[str, str], workdir: Path, long_poll: bool, poll: float
) -> list[tuple[FleetAgent, TimingConsumer]]:
    agents = []
    for name, token in tokens.items():
        data_dir = workdir / "sats" / name
        if load_identity(data_dir) is None:
            await register(data_dir, url, token)
        identity = load_identity(data_dir)
        assert identity is not None
        db = await FleetDB(identity.db_path).open()
        stored = await db.load_trust()
        trust = TrustedState.load(
            identity.satellite, stored.root_chain, stored.state_envelope, stored.highest_version
        )
        consumer = TimingConsumer()
        agent = FleetAgent(
            identity=identity,
            db=db,
            trust=trust,
            client=GroundControlClient(url, identity.credential()),
            consumer=consumer,
            metrics=FleetMetrics(CollectorRegistry()),
            intervals=Intervals(state=poll, checkin=600.0, long_poll=55.0 if long_poll else 0.0),
        )
        if not long_poll:
            agent.link.long_poll = False
        await agent.start()
        agents.append((agent, consumer))
    return agents


async def stop_agents(agents: list[tuple[FleetAgent, TimingConsumer]]) -> None:
    for agent, _ in agents:
        await agent.close()
        await agent.client.aclose()
        await agent.db.close()


async def quiet(agents: list[tuple[FleetAgent, TimingConsumer]], bound: float = 60.0) -> None:
    """Waits until the fleet is quiet: every outbox sent (the check-ins of the previous
    round ingested) and every agent back in its long-poll. Each round measures one publish
    reaching an idle fleet, not the tail of the round before it."""
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        depths = [(await a.db.outbox_stats()).depth for a, _ in agents]
        if not any(depths):
            break
        await asyncio.sleep(0.2)
    else:
        log(f"the fleet did not drain its outboxes within {bound:g} s; measuring anyway")
    await asyncio.sleep(1.0)  # every agent back in its long-poll


async def measure(
    gc_url: str,
    token: str,
    central: str,
    agents: list[tuple[FleetAgent, TimingConsumer]],
    rounds: int,
    limit: float,
    tag_round: list[int],
) -> list[float]:
    latencies: list[float] = []
    async with httpx.AsyncClient(
        base_url=gc_url, headers={"Authorization": f"Bearer {token}"}, timeout=120
    ) as api:
        for _ in range(rounds):
            await quiet(agents)
            tag_round[0] += 1
            tag = "ab"[tag_round[0] % 2]
            targets = {id(c): a.trust.version + 1 for a, c in agents}
            started = time.monotonic()
            response = await api.put(
                "/api/v1/groups/bench",
                json={"images": [f"bench/app:{tag}"]},
            )
            if response.status_code >= 300:
                raise SystemExit(f"publish failed: {response.status_code} {response.text}")
            log(
                f"round {tag_round[0]}: the publish request took {time.monotonic() - started:.3f} s"
            )
            deadline = started + limit
            while time.monotonic() < deadline:
                if all(targets[id(c)] in c.applied for _, c in agents):
                    break
                await asyncio.sleep(0.05)
            missing = [a.identity.satellite for a, c in agents if targets[id(c)] not in c.applied]
            if missing:
                raise SystemExit(f"{len(missing)} satellite(s) never followed: {missing[:5]}")
            latencies += [c.applied[targets[id(c)]] - started for _, c in agents]
    return latencies


def summary(label: str, values: list[float]) -> dict[str, Any]:
    row = {
        "mode": label,
        "n": len(values),
        "p50_s": round(statistics.median(values), 3),
        "p99_s": round(percentile(values, 0.99), 3),
        "max_s": round(max(values), 3),
    }
    log(f"{label}: n={row['n']} p50={row['p50_s']} s p99={row['p99_s']} s max={row['max_s']} s")
    return row


def idle_satellite(gc_url: str, token: str, workdir: Path, seconds: float) -> dict[str, Any]:
    from tests.support.fleet import run_satellite_cli
    from tests.support.satellite import SatelliteProcess

    sat = SatelliteProcess(workdir / "idle-sat", push=False)
    run_satellite_cli(
        "register", "--ground-control", gc_url, "--token", token,
        "--data-dir", str(sat.data_dir),
    )  # fmt: skip
    sat.start()
    try:
        time.sleep(5)  # past start-up
        pid = sat.pid
        assert pid is not None
        ticks = os.sysconf("SC_CLK_TCK")

        def cpu() -> float:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / ticks

        before, t0 = cpu(), time.monotonic()
        time.sleep(seconds)
        used, elapsed = cpu() - before, time.monotonic() - t0
        status = Path(f"/proc/{pid}/status").read_text()
        rss_kb = int(
            next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1]
        )
    finally:
        sat.stop()
    row = {
        "idle_seconds": round(elapsed, 1),
        "cpu_percent": round(100 * used / elapsed, 3),
        "rss_mb": round(rss_kb / 1024, 1),
    }
    log(f"idle satellite: {row}")
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--satellites", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--poll-interval", type=float, default=60.0)
    parser.add_argument("--skip-polling", action="store_true")
    parser.add_argument("--idle", type=float, default=0.0, help="seconds of idle measurement")
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-follow-"))
    results: dict[str, Any] = {
        "backend": args.backend,
        "satellites": args.satellites,
        "load_average_before": os.getloadavg(),
    }
    central = UpstreamRegistry(workdir / "central").start()
    try:
        for tag in "ab":
            push_tiny_image(central.url, "bench/app", tag)
        config = workdir / "gc.toml"
        config.write_text(f'[registry]\nurl = "{central.url}"\n[join]\nrate_limit = 100000\n')
        with database(args.backend, workdir) as db_args:
            gc = GroundControlProcess(
                workdir, "--data-dir", str(workdir / "gc"), "--config", str(config), *db_args
            ).launch()
            gc.wait()
            try:
                token = gc_cli("admin", "token", "create", "bench", "--data-dir",
                               str(workdir / "gc"), *db_args)  # fmt: skip
                remote = ["--url", gc.url, "--token", token]
                gc_cli("group", "create", "bench", "--image", "bench/app:a", *remote)
                tokens = {}
                for i in range(args.satellites):
                    name = f"sat-{i:04d}"
                    out = gc_cli("satellite", "create", name, "--group", "bench", *remote)
                    tokens[name] = out.splitlines()[0].strip()
                log(f"{len(tokens)} satellites created")
                results.update(
                    asyncio.run(_follow(gc.url, token, central.url, tokens, workdir, args))
                )
                if args.idle:
                    idle_token = gc_cli("satellite", "create", "idle", "--group", "bench", *remote)
                    results["idle"] = idle_satellite(
                        gc.url, idle_token.splitlines()[0].strip(), workdir, args.idle
                    )
            finally:
                gc.stop()
    finally:
        central.stop()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    results["load_average_after"] = os.getloadavg()
    print(json.dumps(results, indent=2))
    return 0


async def _follow(
    gc_url: str,
    token: str,
    central: str,
    tokens: dict[str, str],
    workdir: Path,
    args: argparse.Namespace,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    tag_round = [0]
    agents = await start_agents(gc_url, tokens, workdir, True, args.poll_interval)
    try:
        latencies = await measure(gc_url, token, central, agents, args.rounds, 30.0, tag_round)
        out["long_poll"] = summary("long-poll", latencies)
    finally:
        await stop_agents(agents)
    if not args.skip_polling:
        agents = await start_agents(gc_url, tokens, workdir, False, args.poll_interval)
        try:
            await asyncio.sleep(2.0)
            latencies = await measure(
                gc_url, token, central, agents, 1, 2.5 * args.poll_interval, tag_round
            )
            out["polling"] = summary(f"polling every {args.poll_interval:g} s", latencies)
        finally:
            await stop_agents(agents)
    return out


if __name__ == "__main__":
    sys.exit(main())
