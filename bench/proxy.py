"""Pull-through benchmark: the satellite's proxy beside docker-registry's `proxy:` mode.

    .venv/bin/python -m bench.proxy            # full run (~9 min on 2 cores)
    .venv/bin/python -m bench.proxy --quick    # smoke run (~2 min): 4 x 8 MiB, short phases
    .venv/bin/python -m bench.proxy --markdown out.md --json out.json --workdir DIR

One upstream (a plain Debian docker-registry) holds a generated image of 8 layers x 25 MiB
of incompressible data (tests.support.images, uncompressed tar layers), pushed with skopeo.
Every run starts the proxy under test on a fresh, empty storage directory (a cold cache).

1. cold pull: `skopeo copy docker://HOST/bench/big:v1 dir:DEST` through the satellite,
   through docker-registry's proxy, and directly from the upstream; runs interleaved,
   medians reported. The proxies talk to the upstream directly; the blob bytes each one
   fetched are summed from the upstream's access log. `--upstream-netns NS
   --upstream-address ADDR` runs the upstream in another network namespace (bench.wan
   puts it behind a rate-limited link that way);
2. 20 clients at once pull the same cold image (a client subprocess: 20 httpx clients,
   each GETs the manifest by tag then all blobs concurrently, hashing every body against
   its digest): bytes the proxy fetched from upstream, as a multiple of the image size,
   counted by a FaultRelay (tests.support.faultrelay) between each proxy and the upstream;
3. tag pulls with the upstream unreachable: warm the cache with one pull, blackhole the
   upstream (`relay.add_fault(Fault("/v2/", blackhole()))`), then N sequential
   `GET /v2/bench/big/manifests/v1` (OCI manifest Accept): p50/p99/max overall and after
   the satellite's circuit breaker opened, then a paced phase (one request every 100 ms
   for longer than the breaker's 5 s open period, so a half-open probe happens during
   it); docker-registry gets fewer requests, each capped by a client timeout. Then the
   same with the relay's port closed (connection refused) on a restarted proxy;
4. the first seconds of an outage (`--only outage`): a satellite with its default
   `tag_timeout` (3 s) has the tag cached, the link goes dark (blackhole), and 12 clients
   (a runtime pulling a dozen images) each GET the tag every 100 ms for 10 s: the worst
   pull, with `registry.stale_after = 0` (wait for the upstream, as before stale while
   revalidate) and with the default (0.25 s).

Parts 1-3 run the satellite with `registry.tag_timeout = 1` (the default is 3 s).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.registry import log, median
from bench.servers import CpuMeter
from tests.support.faultrelay import Fault, FaultRelay, blackhole
from tests.support.images import MEDIA_OCI_MANIFEST, ImageRef, build_image, sha256_bytes
from tests.support.net import LOOPBACK
from tests.support.satellite import SatelliteProcess, UpstreamTable
from tests.support.skopeo import Skopeo
from tests.support.upstream import UpstreamRegistry

MIB = 1024 * 1024
REPO = "bench/big"
TAG = "v1"
TAG_TIMEOUT = 1  # the satellite's registry.tag_timeout for this benchmark (default 3 s)
ACCEPT = ", ".join(
    [
        MEDIA_OCI_MANIFEST,
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)
JSON = dict[str, Any]

ALL_PARTS = ["pull", "crowd", "offline", "outage"]
SATELLITE = "satellite"
DOCKER_REGISTRY = "docker-registry proxy"
DIRECT = "direct (upstream)"


@dataclass(frozen=True)
class Params:
    layers: int
    layer_size: int
    pull_runs: int
    clients: int
    crowd_runs: int
    sat_tag_requests: int
    paced_requests: int
    paced_interval: float
    dr_tag_requests: int
    dr_client_timeout: float
    refused_requests: int


FULL = Params(
    layers=8,
    layer_size=25 * MIB,
    # cold pulls per row: with 5 a row's median moved by 0.1x of direct from one run to
    # the next on a quiet VM (direct pulls alone spanning 1.45-2.04 s)
    pull_runs=11,
    clients=20,
    crowd_runs=2,
    sat_tag_requests=200,
    paced_requests=70,
    paced_interval=0.1,
    dr_tag_requests=10,
    dr_client_timeout=35.0,
    refused_requests=50,
)
QUICK = Params(
    layers=4,
    layer_size=8 * MIB,
    pull_runs=3,
    clients=20,
    crowd_runs=1,
    sat_tag_requests=200,
    paced_requests=70,
    paced_interval=0.1,
    dr_tag_requests=3,
    dr_client_timeout=10.0,
    refused_requests=20,
)


def loadavg() -> float:
    return os.getloadavg()[0]


# --------------------------------------------------------------------------- targets


@dataclass
class Target:
    kind: str
    host: str
    relay: FaultRelay | None
    proc: SatelliteProcess | UpstreamRegistry | None
    root: Path


@contextlib.contextmanager
def open_target(
    kind: str,
    root: Path,
    upstream: UpstreamRegistry,
    *,
    relay: bool = True,
    registry: dict[str, str | int] | None = None,
) -> Iterator[Target]:
    """The thing a client pulls from, on a fresh (empty) storage dir under `root`; a
    proxy reaches the upstream through a FaultRelay unless `relay` is false."""
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    if kind == DIRECT:
        yield Target(kind, upstream.host, None, None, root)
        return
    link = FaultRelay(upstream.address, upstream.port) if relay else None
    if link is not None:
        link.start()
    upstream_url = link.url if link is not None else upstream.url
    proc: SatelliteProcess | UpstreamRegistry | None = None
    try:
        if kind == SATELLITE:
            proc = SatelliteProcess(
                root,
                push=False,
                registry={"tag_timeout": TAG_TIMEOUT} if registry is None else registry,
                upstreams=[UpstreamTable("up", upstream_url, default=True)],
                workers=0,  # the default: one serving process per core
            )
        elif kind == DOCKER_REGISTRY:
            proc = UpstreamRegistry(root, proxy_remote=upstream_url)
        else:
            raise ValueError(kind)
        proc.start()
        if link is not None:
            link.reset_counters()  # startup probes are not part of any measurement
        yield Target(kind, proc.host, link, proc, root)
    finally:
        if proc is not None:
            proc.stop()
        if link is not None:
            link.stop()
        shutil.rmtree(root, ignore_errors=True)


def relayed(relay: FaultRelay) -> Callable[[], int]:
    return lambda: relay.bytes_relayed_for("")


def settle(count: Callable[[], int] | None, *, quiet: float = 1.5, limit: float = 60.0) -> float:
    """Wait until a byte counter stops moving (background fills finishing)."""
    if count is None:
        return 0.0
    start = time.monotonic()
    last = count()
    still_since = time.monotonic()
    while time.monotonic() - start < limit:
        time.sleep(0.25)
        now = count()
        if now != last:
            last, still_since = now, time.monotonic()
        elif time.monotonic() - still_since >= quiet:
            break
    return time.monotonic() - start


# --------------------------------------------------------------------------- helpers


def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def image_bytes(image: ImageRef) -> tuple[int, int]:
    """(blob bytes: config + layers, manifest bytes)."""
    blobs = sum(image.blob_file(d).stat().st_size for d in image.blob_digests)
    return blobs, image.size


# --------------------------------------------------------------------------- 1. cold pull


def _crowd_subprocess(host: str, clients: int) -> JSON:
    """Run `clients` httpx pullers in a child process (no GIL shared with the relays)."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.proxy", "--_crowd", host, str(clients)],
        capture_output=True,
        timeout=900,
        check=False,
        cwd=Path(__file__).resolve().parents[1],
    )
    if done.returncode != 0:
        raise RuntimeError(f"client failed: {done.stderr.decode()[-2000:]}")
    out: JSON = json.loads(done.stdout)
    # client errors are results too (docker-registry's proxy answers some with 500):
    # they show as "clients ok" below 20 in the table, with the errors in the JSON
    return out


def cold_pull(kind: str, tool: str, root: Path, upstream: UpstreamRegistry, skopeo: Skopeo) -> JSON:
    """One cold pull with `tool` ("skopeo": copy to dir:, "httpx": bodies hashed, discarded).
    Proxies reach the upstream directly (no relay): the blob bytes they fetched are read
    from the upstream's access log."""
    with open_target(kind, root / "target", upstream, relay=False) as target:
        dest = root / "dest"
        shutil.rmtree(dest, ignore_errors=True)
        served_before = upstream.blobs_served()
        load = loadavg()
        proxy_pid = target.proc.pid if target.proc is not None else None
        upstream_pids = (upstream.pid,) if upstream.pid is not None else ()
        with CpuMeter(proxy_pid, upstream_pids) as meter:
            if tool == "skopeo":
                t0 = time.perf_counter()
                skopeo.copy(f"docker://{target.host}/{REPO}:{TAG}", f"dir:{dest}", timeout=600)
                elapsed = time.perf_counter() - t0
            else:
                pulled = _crowd_subprocess(target.host, 1)
                if pulled["ok_clients"] != 1:  # a failed pull is no time to compare
                    raise RuntimeError(f"httpx cold pull from {kind} failed: {pulled['errors']}")
                elapsed = pulled["seconds"]
        out: JSON = {"seconds": elapsed, "load1": load, "cpu": meter.use.as_json()}
        if target.proc is not None:
            settle(lambda: upstream.blobs_served()[0])
            served = upstream.blobs_served()
            out["upstream_blob_bytes"] = served[0] - served_before[0]
            out["upstream_blob_gets"] = served[1] - served_before[1]
        shutil.rmtree(dest, ignore_errors=True)
        return out


# --------------------------------------------------------------------------- 2. crowd


async def _one_client(host: str, verify: bool) -> JSON:
    base = f"http://{host}/v2/{REPO}"
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    async with httpx.AsyncClient(timeout=600, limits=limits, trust_env=False) as client:
        r = await client.get(f"{base}/manifests/{TAG}", headers={"Accept": ACCEPT})
        r.raise_for_status()
        manifest = r.json()
        blobs = [manifest["config"], *manifest["layers"]]

        async def fetch(desc: JSON) -> int:
            h = hashlib.sha256() if verify else None
            n = 0
            async with client.stream("GET", f"{base}/blobs/{desc['digest']}") as resp:
                resp.raise_for_status()
                async for chunk in resp.aiter_raw(1 << 20):
                    n += len(chunk)
                    if h is not None:
                        h.update(chunk)
            if n != desc["size"]:
                raise RuntimeError(f"{desc['digest']}: got {n} bytes, expected {desc['size']}")
            if h is not None and "sha256:" + h.hexdigest() != desc["digest"]:
                raise RuntimeError(f"{desc['digest']}: digest mismatch")
            return n

        sizes = await asyncio.gather(*(fetch(d) for d in blobs))
        return {"bytes": sum(sizes)}


async def _crowd(host: str, clients: int, verify: bool) -> JSON:
    t0 = time.perf_counter()
    done = await asyncio.gather(
        *(_one_client(host, verify) for _ in range(clients)), return_exceptions=True
    )
    elapsed = time.perf_counter() - t0
    errors = [repr(d) for d in done if isinstance(d, BaseException)]
    ok = [d for d in done if not isinstance(d, BaseException)]
    return {
        "seconds": elapsed,
        "ok_clients": len(ok),
        "errors": errors[:5],
        "client_bytes": sum(d["bytes"] for d in ok),
    }


def crowd(kind: str, root: Path, upstream: UpstreamRegistry, clients: int) -> JSON:
    """`clients` pulls of the cold image at once, from a client subprocess (so the clients
    do not share a GIL with the relays in this process)."""
    with open_target(kind, root / "target", upstream) as target:
        load = loadavg()
        out = _crowd_subprocess(target.host, clients)
        assert target.relay is not None
        out["settle_seconds"] = settle(relayed(target.relay))
        out["load1"] = load
        out["upstream_blob_bytes"] = target.relay.bytes_relayed_for("/blobs/")
        out["upstream_blob_gets"] = target.relay.count("/blobs/", method="GET")
        out["upstream_manifest_requests"] = target.relay.count("/manifests/")
        return out


# --------------------------------------------------------------------------- 3. offline tags


def warm(host: str) -> str:
    """One full pull (manifest + blobs, bodies discarded); returns the manifest digest."""
    result = asyncio.run(_crowd(host, 1, verify=True))
    if result["errors"]:
        raise RuntimeError(f"warm-up pull failed: {result['errors']}")
    with httpx.Client(timeout=30, trust_env=False) as client:
        r = client.get(f"http://{host}/v2/{REPO}/manifests/{TAG}", headers={"Accept": ACCEPT})
        r.raise_for_status()
        return sha256_bytes(r.content)


def tag_requests(
    host: str, n: int, timeout: float, expect_digest: str, *, interval: float = 0.0
) -> list[JSON]:
    """`n` sequential tag GETs on one keep-alive client; latency, status, right digest."""
    out: list[JSON] = []
    t_phase = time.perf_counter()
    with httpx.Client(timeout=timeout, trust_env=False) as client:
        for _ in range(n):
            t_start = time.perf_counter()
            rec: JSON = {"status": None, "ok": False, "t": t_start - t_phase}
            try:
                r = client.get(
                    f"http://{host}/v2/{REPO}/manifests/{TAG}", headers={"Accept": ACCEPT}
                )
                rec["status"] = r.status_code
                rec["ok"] = r.status_code == 200 and sha256_bytes(r.content) == expect_digest
            except httpx.TimeoutException:
                rec["status"] = "timeout"
            except httpx.HTTPError as exc:
                rec["status"] = type(exc).__name__
            rec["seconds"] = time.perf_counter() - t_start
            out.append(rec)
            if interval:
                time.sleep(max(0.0, interval - rec["seconds"]))
    return out


def summarize(records: Sequence[JSON]) -> JSON:
    lat = [r["seconds"] for r in records]
    statuses: dict[str, int] = {}
    for r in records:
        statuses[str(r["status"])] = statuses.get(str(r["status"]), 0) + 1
    return {
        "n": len(records),
        "p50_ms": pct(lat, 50) * 1000,
        "p99_ms": pct(lat, 99) * 1000,
        "max_ms": max(lat) * 1000 if lat else float("nan"),
        "ok": sum(1 for r in records if r["ok"]),
        "statuses": statuses,
        "slowest": [
            {"i": i, "t_s": round(r["t"], 3), "ms": round(r["seconds"] * 1000, 1)}
            for i, r in sorted(enumerate(records), key=lambda e: -e[1]["seconds"])[:3]
        ],
    }


def offline_tags(kind: str, root: Path, upstream: UpstreamRegistry, p: Params) -> JSON:
    out: JSON = {}
    with open_target(kind, root / "target", upstream) as target:
        assert target.relay is not None and target.proc is not None
        relay = target.relay
        digest = warm(target.host)
        settle(relayed(relay))

        # (a) blackhole: the link accepts connections and never answers
        relay.reset_counters()
        rule = relay.add_fault(Fault("/v2/", blackhole()))
        if kind == SATELLITE:
            seq = tag_requests(target.host, p.sat_tag_requests, 35.0, digest)
            forwarded = relay.count("/manifests/")
            out["blackhole"] = summarize(seq)
            out["blackhole"]["upstream_tag_requests"] = forwarded
            out["blackhole"]["first_ms"] = [round(r["seconds"] * 1000, 1) for r in seq[:5]]
            out["blackhole_after_breaker"] = summarize(seq[forwarded:])
            before = relay.count("/v2/")
            paced = tag_requests(
                target.host, p.paced_requests, 35.0, digest, interval=p.paced_interval
            )
            out["blackhole_paced"] = summarize(paced)
            out["blackhole_paced"]["upstream_requests_during"] = relay.count("/v2/") - before
            out["blackhole_paced"]["span_s"] = sum(
                max(r["seconds"], p.paced_interval) for r in paced
            )
        else:
            seq = tag_requests(target.host, p.dr_tag_requests, p.dr_client_timeout, digest)
            out["blackhole"] = summarize(seq)
            out["blackhole"]["upstream_tag_requests"] = relay.count("/manifests/")
            out["blackhole"]["upstream_requests"] = relay.requests
            out["blackhole"]["client_timeout_s"] = p.dr_client_timeout
        relay.remove_fault(rule)

        # (b) refused: the relay's port is closed; a restarted proxy (breaker reset)
        target.proc.stop()
        target.proc.start()
        relay.go_down()
        try:
            n = p.sat_tag_requests if kind == SATELLITE else p.refused_requests
            seq = tag_requests(target.host, n, p.dr_client_timeout, digest)
            out["refused"] = summarize(seq)
        finally:
            relay.come_up()
    return out


# --------------------------------------------------------------------------- 4. outage


OUTAGE_CLIENTS = 12
OUTAGE_SECONDS = 10.0
OUTAGE_INTERVAL = 0.1


async def _outage_client(
    client: httpx.AsyncClient, host: str, start: float, expect_digest: str
) -> list[JSON]:
    out: list[JSON] = []
    while time.perf_counter() < start + OUTAGE_SECONDS:
        t_start = time.perf_counter()
        rec: JSON = {"status": None, "ok": False, "t": t_start - start}
        try:
            r = await client.get(
                f"http://{host}/v2/{REPO}/manifests/{TAG}", headers={"Accept": ACCEPT}
            )
            rec["status"] = r.status_code
            rec["ok"] = r.status_code == 200 and sha256_bytes(r.content) == expect_digest
        except httpx.HTTPError as exc:
            rec["status"] = type(exc).__name__
        rec["seconds"] = time.perf_counter() - t_start
        out.append(rec)
        await asyncio.sleep(max(0.0, OUTAGE_INTERVAL - rec["seconds"]))
    return out


async def _outage_clients(host: str, expect_digest: str) -> list[JSON]:
    # every client is made before the clock starts: making one (its TLS context) blocks
    # the loop for tens of ms, which would show as latency of the others
    clients = [httpx.AsyncClient(timeout=35.0, trust_env=False) for _ in range(OUTAGE_CLIENTS)]
    try:
        start = time.perf_counter()
        per_client = await asyncio.gather(
            *(_outage_client(c, host, start, expect_digest) for c in clients)
        )
    finally:
        for c in clients:
            await c.aclose()
    return [rec for recs in per_client for rec in recs]


def outage(root: Path, upstream: UpstreamRegistry, stale_after: str) -> JSON:
    """Worst tag pull of a cached image in the first seconds of a blackholed link."""
    registry: dict[str, str | int] = {"stale_after": stale_after}  # default tag_timeout
    with open_target(SATELLITE, root, upstream, registry=registry) as target:
        assert target.relay is not None
        with httpx.Client(timeout=30, trust_env=False) as client:
            r = client.get(
                f"http://{target.host}/v2/{REPO}/manifests/{TAG}", headers={"Accept": ACCEPT}
            )
            r.raise_for_status()
            digest = sha256_bytes(r.content)
        target.relay.reset_counters()
        target.relay.add_fault(Fault("/v2/", blackhole()))
        records = asyncio.run(_outage_clients(target.host, digest))
        out = summarize(records)
        out["upstream_tag_requests"] = target.relay.count("/manifests/")
        out["stale_after_s"] = float(stale_after)
    return out


# --------------------------------------------------------------------------- report


def fmt_s(x: float) -> str:
    return f"{x:.2f}"


def render(results: JSON) -> str:
    p = results["params"]
    img = results["image"]
    lines: list[str] = []
    add = lines.append
    add(
        f"Image: {p['layers']} layers x {p['layer_size'] // MIB} MiB, blobs "
        f"{img['blob_bytes'] / 1e6:.1f} MB (config + layers), manifest {img['manifest_bytes']} B."
    )
    if "cold_pull" in results:
        _render_pulls(results, add)
    if "crowd" in results:
        _render_crowd(results, add)
    if "offline" in results:
        _render_offline(results, add)
    if "outage" in results:
        _render_outage(results, add)
    add("")
    add("### Goals")
    add("")
    for g in results["goals"]:
        add(f"- {g}")
    return "\n".join(lines) + "\n"


def _render_pulls(results: JSON, add: Callable[[str], None]) -> None:
    p = results["params"]
    img = results["image"]
    add("")
    add(f"### 1. Cold pull of the whole image ({p['pull_runs']} runs per row, interleaved)")
    add("")
    add(
        "| client | source | median s | runs (s) | × direct | proxy CPU s (median) | "
        "upstream blob bytes / image |"
    )
    add("|---|---|---:|---|---:|---:|---:|")
    for tool, label in (
        ("skopeo", "skopeo copy → dir:"),
        ("httpx", "httpx, blobs in parallel, hashed"),
    ):
        pulls = results["cold_pull"][tool]
        d = median([r["seconds"] for r in pulls[DIRECT]])
        for kind, runs in pulls.items():
            m = median([r["seconds"] for r in runs])
            ups = [r.get("upstream_blob_bytes") for r in runs]
            upx = (
                "–"
                if kind == DIRECT
                else ", ".join(f"{u / img['blob_bytes']:.2f}" for u in ups if u is not None)
            )
            cpu = "–" if kind == DIRECT else f"{median([r['cpu']['server_s'] for r in runs]):.2f}"
            times = ", ".join(
                fmt_s(r["seconds"]) + ("†" if r["cpu"]["disturbed"] else "") for r in runs
            )
            add(f"| {label} | {kind} | {fmt_s(m)} | {times} | {m / d:.2f} | {cpu} | {upx} |")
    add("")
    add(
        "† a run beside more than 0.1 core of foreign CPU use (neither the benchmark, its "
        "clients, the upstream nor the proxy under test); the JSON has every run's split."
    )


def _render_crowd(results: JSON, add: Callable[[str], None]) -> None:
    p = results["params"]
    img = results["image"]
    add("")
    add(f"### 2. {p['clients']} clients pulling the same cold image at once")
    add("")
    add("| proxy | upstream blob bytes | × image | upstream blob GETs | clients ok | wall s |")
    add("|---|---:|---:|---:|---:|---:|")
    for kind in (SATELLITE, DOCKER_REGISTRY):
        for r in results["crowd"][kind]:
            add(
                f"| {kind} | {r['upstream_blob_bytes']:,} | "
                f"{r['upstream_blob_bytes'] / img['blob_bytes']:.2f} | {r['upstream_blob_gets']} | "
                f"{r['ok_clients']}/{p['clients']} | {r['seconds']:.1f} |"
            )


def _render_offline(results: JSON, add: Callable[[str], None]) -> None:
    add("")
    add("### 3. Tag GET with the upstream unreachable (sequential, one keep-alive client)")
    add("")
    add(
        "| proxy | phase | n | p50 ms | p99 ms | max ms | 200 + right digest "
        "| upstream tag requests |"
    )
    add("|---|---|---:|---:|---:|---:|---:|---:|")
    names = {
        "blackhole": "blackhole, all requests",
        "blackhole_after_breaker": "blackhole, after breaker opened",
        "blackhole_paced": "blackhole, paced 1 per 100 ms (spans half-open probe)",
        "refused": "connection refused (restarted proxy)",
    }
    for kind in (SATELLITE, DOCKER_REGISTRY):
        for phase, label in names.items():
            s = results["offline"][kind].get(phase)
            if s is None:
                continue
            up = s.get("upstream_tag_requests", s.get("upstream_requests_during", ""))
            add(
                f"| {kind} | {label} | {s['n']} | {s['p50_ms']:.1f} | {s['p99_ms']:.1f} | "
                f"{s['max_ms']:.1f} | {s['ok']}/{s['n']} | {up} |"
            )


def _render_outage(results: JSON, add: Callable[[str], None]) -> None:
    add("")
    add(
        f"### 4. The first {OUTAGE_SECONDS:g} s of an outage: {OUTAGE_CLIENTS} clients each GET a "
        f"cached tag every {OUTAGE_INTERVAL * 1000:g} ms, link blackholed, default tag_timeout (3 s)"
    )
    add("")
    add(
        "| registry.stale_after | n | p50 ms | p99 ms | worst ms | 200 + right digest | upstream tag requests |"
    )
    add("|---|---:|---:|---:|---:|---:|---:|")
    for row in results["outage"].values():
        add(
            f"| {row['stale_after_s']:g} s | {row['n']} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | "
            f"{row['max_ms']:.1f} | {row['ok']}/{row['n']} | {row['upstream_tag_requests']} |"
        )


def goals(results: JSON) -> list[str]:
    """The goals of the parts that ran."""
    out = []
    for tool in ("skopeo", "httpx") if "cold_pull" in results else ():
        pulls = results["cold_pull"][tool]
        d = median([r["seconds"] for r in pulls[DIRECT]])
        sat = median([r["seconds"] for r in pulls[SATELLITE]])
        line = (
            f"cold pull ≤ 1.1× direct ({tool}): satellite {sat / d:.2f}× direct "
            f"({'MET' if sat / d <= 1.1 else 'MISSED'})"
        )
        out.append(line)
    if "crowd" in results:
        out.append(_crowd_goal(results))
    if "offline" in results:
        out.append(_offline_goal(results))
    if "outage" in results:
        out.append(outage_goal(results["outage"]))
    return out


def _crowd_goal(results: JSON) -> str:
    img = results["image"]
    xs = [r["upstream_blob_bytes"] / img["blob_bytes"] for r in results["crowd"][SATELLITE]]
    ok = all(abs(x - 1.0) < 1e-9 for x in xs)
    dxs = [r["upstream_blob_bytes"] / img["blob_bytes"] for r in results["crowd"][DOCKER_REGISTRY]]
    return (
        f"{results['params']['clients']} concurrent pulls fetch the image from upstream "
        "exactly once: "
        f"satellite {', '.join(f'{x:.2f}×' for x in xs)} ({'MET' if ok else 'MISSED'}); "
        f"docker-registry {', '.join(f'{x:.2f}×' for x in dxs)}"
    )


def _offline_goal(results: JSON) -> str:
    off = results["offline"][SATELLITE]
    after = off["blackhole_after_breaker"]["p99_ms"]
    paced = off["blackhole_paced"]["p99_ms"]
    return (
        f"offline tag p99 ≤ 50 ms after the breaker opens: satellite {after:.1f} ms over "
        f"{off['blackhole_after_breaker']['n']} back-to-back requests "
        f"({'MET' if after <= 50 else 'MISSED'}), {paced:.1f} ms over the paced phase "
        f"({'MET' if paced <= 50 else 'MISSED'}); before it opened, "
        f"{off['blackhole']['upstream_tag_requests']} request(s) paid the "
        f"{TAG_TIMEOUT} s tag timeout"
    )


def outage_goal(rows: JSON) -> str:
    worst = rows["stale_after_default"]["max_ms"]
    before = rows["stale_after_0"]["max_ms"]
    return (
        f"worst tag pull of a cached image in the first {OUTAGE_SECONDS:g} s of an outage "
        f"≤ 300 ms: {worst:.1f} ms ({'MET' if worst <= 300 else 'MISSED'}); "
        f"{before:.1f} ms without stale while revalidate"
    )


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.proxy", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller image, fewer runs")
    ap.add_argument("--workdir", type=Path, help="keep everything here (default: a temp dir)")
    ap.add_argument("--json", type=Path, help="write raw results as JSON")
    ap.add_argument("--markdown", type=Path, help="write the tables as Markdown")
    ap.add_argument("--only", choices=ALL_PARTS, action="append")
    ap.add_argument("--upstream-netns", help="run the upstream in this network namespace")
    ap.add_argument("--upstream-address", default=LOOPBACK, help="the upstream's address")
    ap.add_argument("--_crowd", nargs=2, metavar=("HOST", "CLIENTS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args._crowd:
        host, clients = args._crowd
        print(json.dumps(asyncio.run(_crowd(host, int(clients), verify=True))))
        return 0

    p = QUICK if args.quick else FULL
    parts = set(args.only or ALL_PARTS)
    tmp = None
    if args.workdir is None:
        tmp = tempfile.mkdtemp(prefix="satellite-bench-proxy-")
        work = Path(tmp)
    else:
        work = args.workdir
        work.mkdir(parents=True, exist_ok=True)
    results: JSON = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load1_start": loadavg(),
        },
        "params": asdict(p),
        "satellite_tag_timeout_s": TAG_TIMEOUT,
    }
    upstream = UpstreamRegistry(
        work / "upstream", address=args.upstream_address, netns=args.upstream_netns
    )
    try:
        log(f"building image ({p.layers} x {p.layer_size // MIB} MiB) in {work}")
        layout = work / "layout"
        shutil.rmtree(layout, ignore_errors=True)
        image = build_image(
            layout,
            f"big:{TAG}",
            layers=p.layers,
            layer_size=p.layer_size,
            seed="bench-proxy",
            compress=False,
        )
        blob_bytes, manifest_bytes = image_bytes(image)
        results["image"] = {
            "blob_bytes": blob_bytes,
            "manifest_bytes": manifest_bytes,
            "digest": image.digest,
        }
        upstream.start()
        skopeo = Skopeo(work / "skopeo", timeout=600)
        skopeo.copy(
            f"oci:{layout}:big:{TAG}",
            f"docker://{upstream.host}/{REPO}:{TAG}",
            "--preserve-digests",
        )
        log(f"pushed {blob_bytes / 1e6:.1f} MB to upstream {upstream.url}")

        if "pull" in parts:
            pulls: JSON = {
                "skopeo": {k: [] for k in (DIRECT, SATELLITE, DOCKER_REGISTRY)},
                "httpx": {k: [] for k in (DIRECT, SATELLITE, DOCKER_REGISTRY)},
            }
            for i in range(p.pull_runs):
                for tool, kinds in pulls.items():
                    order = list(kinds)
                    order = order[i % len(order) :] + order[: i % len(order)]  # rotate
                    for kind in order:
                        r = cold_pull(kind, tool, work / "pull", upstream, skopeo)
                        kinds[kind].append(r)
                        log(f"cold pull {i + 1}/{p.pull_runs} {tool} {kind}: {r}")
            results["cold_pull"] = pulls

        if "crowd" in parts:
            crowds: dict[str, list[JSON]] = {SATELLITE: [], DOCKER_REGISTRY: []}
            for i in range(p.crowd_runs):
                for kind in (SATELLITE, DOCKER_REGISTRY):
                    r = crowd(kind, work / "crowd", upstream, p.clients)
                    crowds[kind].append(r)
                    log(f"crowd {i + 1}/{p.crowd_runs} {kind}: {r}")
            results["crowd"] = crowds

        if "offline" in parts:
            offline: JSON = {}
            for kind in (SATELLITE, DOCKER_REGISTRY):
                offline[kind] = offline_tags(kind, work / "offline", upstream, p)
                log(f"offline {kind}: {json.dumps(offline[kind])}")
            results["offline"] = offline

        if "outage" in parts:
            results["outage"] = {
                "stale_after_0": outage(work / "outage", upstream, "0"),
                "stale_after_default": outage(work / "outage", upstream, "0.25"),
            }
            for name, row in results["outage"].items():
                log(f"outage {name}: {json.dumps(row)}")
            log(outage_goal(results["outage"]))
    finally:
        upstream.stop()
        results["machine"]["load1_end"] = loadavg()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    results["goals"] = goals(results)
    text = render(results)
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
