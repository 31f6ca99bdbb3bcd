"""Registry benchmarks: Satellite side by side with nginx and Debian's docker-registry.

    .venv/bin/python -m bench.registry            # full run (~10 min on 2 cores)
    .venv/bin/python -m bench.registry --pin      # the same with each server pinned to one core
    .venv/bin/python -m bench.registry --quick    # smoke run: smaller blobs, short runs
    .venv/bin/python -m bench.registry --markdown out.md --json out.json

Every server runs as its users run it: nginx with `worker_processes auto` (one worker per
core), docker-registry free to use every core, the satellite with its default config (one
serving process per core); the scheduler places servers and load generators. `--pin` is
the constrained variant: each server pinned to CPU 0 (every thread; nginx with one worker,
the satellite with one process) and each load generator to CPU 1, so every server gets
exactly one core and never competes with its client.

What runs (all on 127.0.0.1, all servers started by this script in a temp dir):

1. single stream: GET of a ~1 GiB cached layer blob, one connection, with two clients:
   bench.blobload (splices the body into /dev/null: no copy, so the client is not the
   bottleneck) and `curl -o /dev/null` (copies every byte, as real clients do). Three
   consecutive runs, each of a few interleaved rounds, each judged on its own medians;
2. 50 concurrent downloads of a ~100 MiB blob: bench.blobload -c50 with a fixed number of
   downloads per connection (aggregate MB/s, and each download's time: p50 and p99, so
   a download left waiting shows), and `wrk -t2 -c50` for a fixed duration; the peak RSS
   of each server's process tree while it runs (VmRSS sampled every 50 ms, and the
   kernel's VmHWM after `clear_refs`);
3. manifest GET by tag (`wrk -t2 -c64 --latency`, with the OCI manifest Accept header) and
   manifest HEAD by tag (bench.httpload, 64 keep-alive connections: wrk hangs on HEAD).

Every run records the CPU seconds of the server under test (all its processes), of the
benchmark itself (this script, its load generators, the idle servers) and of everything
else on the machine ("foreign"), plus the load average before and after; each section
starts and ends with a 2 s quiet window that measures the foreign use alone. A run beside
more than 0.1 core of foreign use (or 0.05 core of hypervisor steal) is marked. From the
server's CPU: CPU seconds per GB served, and CPU milliseconds per manifest request.

The same image (an OCI layout built by tests.support.images) is pushed with skopeo into the
satellite and into docker-registry; nginx serves the very same blob files from the layout
with sendfile. MB/s and GB are 10^6 and 10^9 bytes.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.httpload import percentile
from bench.servers import (
    CpuMeter,
    NginxProcess,
    QuietRegistry,
    RssSampler,
    pin,
    quiet_window,
)
from tests.support.images import MEDIA_OCI_MANIFEST, build_big_image, build_image
from tests.support.satellite import SatelliteProcess
from tests.support.skopeo import Skopeo

MIB = 1024 * 1024
SERVER_CPU = 0
LOAD_CPU = 1
JSON = dict[str, Any]


@dataclass(frozen=True)
class Params:
    big_size: int
    mid_size: int
    single_runs: int  # consecutive runs of the single-stream benchmark, each judged alone
    single_rounds: int  # rounds per run (2 zero-copy downloads + 1 curl per server each)
    concurrent_count: int  # downloads per connection in a zero-copy run (50 connections)
    concurrent_s: int  # duration of a wrk run
    concurrent_runs: int
    manifest_s: int
    manifest_runs: int


FULL = Params(
    big_size=1024 * MIB,
    mid_size=100 * MIB,
    single_runs=3,
    single_rounds=3,
    concurrent_count=10,
    concurrent_s=10,
    concurrent_runs=3,
    manifest_s=10,
    manifest_runs=3,
)
QUICK = Params(
    big_size=256 * MIB,
    mid_size=32 * MIB,
    single_runs=2,
    single_rounds=1,
    concurrent_count=3,
    concurrent_s=3,
    concurrent_runs=1,
    manifest_s=3,
    manifest_runs=1,
)


# --------------------------------------------------------------------------- helpers


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Loader:
    """Runs load-generator commands, pinned to LOAD_CPU unless pinning is off."""

    def __init__(self, pinned: bool) -> None:
        self.pinned = pinned

    def argv(self, args: Sequence[str]) -> list[str]:
        return ["taskset", "-c", str(LOAD_CPU), *args] if self.pinned else list(args)

    def run(self, args: Sequence[str], timeout: float) -> str:
        done = subprocess.run(
            self.argv(args),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
            env={**os.environ, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"},
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args)} failed ({done.returncode}): {done.stderr[-2000:]}"
            )
        return done.stdout


def curl_speed(loader: Loader, url: str, expect_size: int) -> float:
    """One `curl -o /dev/null` download; returns MB/s (10^6 B/s); checks the byte count."""
    out = loader.run(
        [
            "curl",
            "-s",
            "-f",
            "--noproxy",
            "*",
            "-o",
            "/dev/null",
            "-w",
            "%{speed_download} %{size_download} %{http_code}",
            url,
        ],
        timeout=300,
    )
    speed, size, code = out.split()
    if int(float(size)) != expect_size or code != "200":
        raise RuntimeError(f"{url}: got {size} bytes with HTTP {code}, expected {expect_size}")
    return float(speed) / 1e6


_UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}
_TIME = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _bytes(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)([KMGT]?B)", text)
    if m is None:
        raise ValueError(text)
    return float(m[1]) * _UNITS[m[2]]


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if m is None:
        raise ValueError(text)
    return float(m[1]) * _TIME[m[2]]


def parse_wrk(out: str) -> JSON:
    res: JSON = {"raw": out}
    if m := re.search(r"(\d+) requests in ([\d.]+)(\w+), ([\d.]+\w+) read", out):
        res["requests"] = int(m[1])
        res["read_bytes"] = _bytes(m[4])
    if m := re.search(r"Requests/sec:\s+([\d.]+)", out):
        res["rps"] = float(m[1])
    if m := re.search(r"Transfer/sec:\s+([\d.]+\w+)", out):
        res["mb_s"] = _bytes(m[1]) / 1e6
    for pct in ("50", "90", "99"):
        if m := re.search(rf"^\s+{pct}%\s+([\d.]+\w+)", out, re.M):
            res[f"p{pct}_ms"] = _ms(m[1])
    res["non2xx"] = int(m[1]) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        res["socket_errors"] = sum(int(x) for x in m.groups())
    else:
        res["socket_errors"] = 0
    return res


def wrk(
    loader: Loader, url: str, *, threads: int, conns: int, duration: int, extra: Sequence[str] = ()
) -> JSON:
    out = loader.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{conns}",
            f"-d{duration}s",
            "--timeout",
            "60s",
            "--latency",
            *extra,
            url,
        ],
        timeout=duration + 90,
    )
    return parse_wrk(out)


def httpload(
    loader: Loader, url: str, *, method: str, conns: int, duration: int, headers: Sequence[str]
) -> JSON:
    args = [
        sys.executable,
        "-m",
        "bench.httpload",
        "--url",
        url,
        "--method",
        method,
        "-c",
        str(conns),
        "-d",
        str(duration),
    ]
    for h in headers:
        args += ["-H", h]
    result: JSON = json.loads(loader.run(args, timeout=duration + 60))
    return result


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def machine_info() -> JSON:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break

    def version(argv: list[str]) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return "?"
        return (
            (done.stdout + done.stderr).strip().splitlines()[0]
            if (done.stdout + done.stderr).strip()
            else "?"
        )

    def pkg(name: str) -> str:
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as v

        try:
            return v(name)
        except PackageNotFoundError:
            return "?"

    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "hypercorn": pkg("hypercorn"),
        "starlette": pkg("starlette"),
        "h11": pkg("h11"),
        "nginx": version(["nginx", "-v"]),
        "docker_registry": version(["docker-registry", "--version"]),
        "wrk": version(["wrk", "--version"]),
        "curl": version(["curl", "--version"]),
    }


# --------------------------------------------------------------------------- setup


@dataclass
class Target:
    name: str
    pid: int
    big_url: str
    mid_url: str
    manifest_url: str | None


@contextlib.contextmanager
def servers(work: Path, params: Params, pinned: bool) -> Iterator[tuple[list[Target], JSON]]:
    layout = work / "layout"
    log(
        f"building images in {layout} (big {params.big_size // MIB} MiB, mid {params.mid_size // MIB} MiB)"
    )
    t0 = time.monotonic()
    big = build_big_image(layout, "big:v1", params.big_size, seed="bench-big")
    mid = build_big_image(layout, "mid:v1", params.mid_size, seed="bench-mid")
    small = build_image(layout, "small:v1", layers=3, layer_size=64 * 1024, seed="bench-small")
    big_digest, mid_digest = big.layer_digests[0], mid.layer_digests[0]
    big_size = big.blob_file(big_digest).stat().st_size
    mid_size = mid.blob_file(mid_digest).stat().st_size
    log(f"built in {time.monotonic() - t0:.0f}s")

    stack = contextlib.ExitStack()
    with stack:
        registry = QuietRegistry(work / "docker-registry")
        stack.callback(registry.stop)
        registry.start()
        # its default config (one serving process per core); pinned, one process (it
        # gets one core anyway), as nginx gets one worker
        satellite = SatelliteProcess(work / "satellite", push=True, workers=1 if pinned else 0)
        stack.callback(satellite.stop)
        satellite.start()
        # pinned: one worker (it gets one core anyway); otherwise nginx's `auto`
        nginx = NginxProcess(
            work / "nginx", layout / "blobs" / "sha256", workers=1 if pinned else "auto"
        )
        stack.callback(nginx.stop)
        nginx.start()

        skopeo = Skopeo(work / "skopeo", timeout=600)
        for host in (registry.host, satellite.host):
            for tag in ("big:v1", "mid:v1", "small:v1"):
                t0 = time.monotonic()
                repo, _, ref = tag.partition(":")
                # --preserve-digests: without it skopeo gzips the uncompressed layer on push
                skopeo.copy(
                    f"oci:{layout}:{tag}",
                    f"docker://{host}/bench/{repo}:{ref}",
                    "--preserve-digests",
                )
                log(f"pushed {tag} to {host} in {time.monotonic() - t0:.1f}s")

        def blob(url: str, name: str, digest: str) -> str:
            return f"{url}/v2/bench/{name}/blobs/{digest}"

        assert registry.pid is not None and satellite.pid is not None and nginx.pid is not None
        targets = [
            Target(
                "nginx (sendfile)",
                nginx.pid,
                f"{nginx.url}/{big_digest.removeprefix('sha256:')}",
                f"{nginx.url}/{mid_digest.removeprefix('sha256:')}",
                None,
            ),
            Target(
                "satellite",
                satellite.pid,
                blob(satellite.url, "big", big_digest),
                blob(satellite.url, "mid", mid_digest),
                f"{satellite.url}/v2/bench/small/manifests/v1",
            ),
            Target(
                "docker-registry",
                registry.pid,
                blob(registry.url, "big", big_digest),
                blob(registry.url, "mid", mid_digest),
                f"{registry.url}/v2/bench/small/manifests/v1",
            ),
        ]
        if pinned:
            for t in targets:
                pin(t.pid, {SERVER_CPU})
        info = {
            "big_blob": {"digest": big_digest, "size": big_size},
            "mid_blob": {"digest": mid_digest, "size": mid_size},
            "manifest": {
                "digest": small.digest,
                "size": small.size,
                "media_type": MEDIA_OCI_MANIFEST,
            },
            "nginx_empty_url": f"{nginx.url}/empty",
            "pids": {t.name: t.pid for t in targets},
        }
        yield targets, info


# --------------------------------------------------------------------------- benchmarks

GB = 1e9
NGINX = "nginx (sendfile)"
CEILING = "nginx `return 200` (client ceiling)"


def blobload(
    loader: Loader, url: str, *, conns: int, duration: float = 600, count: int = 1_000_000
) -> JSON:
    args = [sys.executable, "-m", "bench.blobload", "--url", url, "-c", str(conns)]
    args += ["-d", str(duration), "-n", str(count)]
    result: JSON = json.loads(loader.run(args, timeout=duration + 180))
    if result["errors"]:
        raise RuntimeError(f"{url}: {result['errors'][:3]}")
    return result


def metered(t: Target, targets: list[Target]) -> CpuMeter:
    """A CpuMeter for a run against `t` (the other servers count as the benchmark's)."""
    return CpuMeter(t.pid, tuple(x.pid for x in targets if x is not t))


def quiet(targets: list[Target]) -> JSON:
    use = quiet_window(tuple(t.pid for t in targets))
    log(
        f"quiet window: load {use.load_after:.2f}, foreign {use.foreign_cores:.2f} cores, "
        f"steal {use.steal_cores:.2f}"
    )
    return use.as_json()


def mark(use: JSON) -> str:
    """The mark of a figure measured beside foreign load."""
    return "†" if use["disturbed"] else ""


def _mark_run(run: JSON) -> str:
    return mark(run["cpu"]) if "cpu" in run else ""


def bench_single(loader: Loader, targets: list[Target], info: JSON, p: Params) -> JSON:
    size = info["big_blob"]["size"]
    log(f"[1] single stream, {size / MIB:.0f} MiB blob: warm-up")
    for t in targets:
        curl_speed(loader, t.big_url, size)
    runs: list[JSON] = []
    for run in range(p.single_runs):
        splice: dict[str, list[float]] = {t.name: [] for t in targets}
        curl: dict[str, list[float]] = {t.name: [] for t in targets}
        cpu: dict[str, list[JSON]] = {t.name: [] for t in targets}
        for _ in range(p.single_rounds):
            for t in targets:  # interleaved, so drift hits every server alike
                with metered(t, targets) as meter:
                    res = blobload(loader, t.big_url, conns=1, count=2)
                    speed = curl_speed(loader, t.big_url, size)
                splice[t.name] += res["per_download_mb_s"]
                curl[t.name].append(speed)
                cpu[t.name].append({**meter.use.as_json(), "bytes": 3 * size})
        out: JSON = {
            "splice_mb_s": splice,
            "curl_mb_s": curl,
            "cpu": cpu,
            "splice_median_mb_s": {k: median(v) for k, v in splice.items()},
            "curl_median_mb_s": {k: median(v) for k, v in curl.items()},
            "cpu_s_per_gb": {k: _cpu_per_gb(v) for k, v in cpu.items()},
            "disturbed": sum(u["disturbed"] for v in cpu.values() for u in v),
        }
        runs.append(out)
        log(
            f"[1] run {run + 1}/{p.single_runs} medians (splice, curl MB/s): "
            + ", ".join(
                f"{k} {out['splice_median_mb_s'][k]:.0f} {out['curl_median_mb_s'][k]:.0f}"
                for k in splice
            )
            + f"; {out['disturbed']} rounds beside foreign load"
        )
    return {"blob_size": size, "runs": runs}


def _cpu_per_gb(uses: list[JSON]) -> float:
    data = sum(u["bytes"] for u in uses)
    return sum(u["server_s"] for u in uses) / (data / GB) if data else float("nan")


def bench_concurrent(loader: Loader, targets: list[Target], info: JSON, p: Params) -> JSON:
    size = info["mid_blob"]["size"]
    out: dict[str, JSON] = {t.name: {"splice": [], "wrk": []} for t in targets}
    log(f"[2] 50 concurrent downloads of a {size / MIB:.0f} MiB blob")
    for t in targets:
        curl_speed(loader, t.mid_url, size)
        out[t.name]["idle_rss_mb"] = RssSampler.current_mb(t.pid)
    for i in range(p.concurrent_runs):
        for t in targets:
            for client in ("splice", "wrk"):
                with RssSampler(t.pid) as rss, metered(t, targets) as meter:
                    if client == "splice":
                        r = blobload(loader, t.mid_url, conns=50, count=p.concurrent_count)
                        res = {
                            "mb_s": r["aggregate_mb_s"],
                            "requests": r["completed"],
                            "bytes": r["bytes"],
                            "download_s": r["download_s"],
                            "per_download_s": r["per_download_s"],
                        }
                    else:
                        res = wrk(loader, t.mid_url, threads=2, conns=50, duration=p.concurrent_s)
                        res.pop("raw")
                        res["bytes"] = res.get("read_bytes", 0)
                res["peak_rss_mb"] = rss.peak_mb
                res["hwm_mb"] = rss.hwm_mb
                res["cpu"] = meter.use.as_json()
                res["cpu_s_per_gb"] = meter.use.server_s / (res["bytes"] / GB)
                out[t.name][client].append(res)
                lat = res.get("download_s", {})
                log(
                    f"[2] run {i + 1} {client} {t.name}: {res.get('mb_s', 0):.0f} MB/s, "
                    f"{res.get('requests', 0)} done"
                    + (f", download p50 {lat['p50']:.2f} s p99 {lat['p99']:.2f} s" if lat else "")
                    + f", CPU {res['cpu_s_per_gb']:.3f} s/GB, peak RSS {rss.peak_mb:.0f} MB "
                    f"(HWM {rss.hwm_mb:.0f}), foreign {meter.use.foreign_cores:.2f} cores"
                )
                time.sleep(1)
    for d in out.values():
        for client in ("splice", "wrk"):
            d[f"{client}_median_mb_s"] = median([r.get("mb_s", 0.0) for r in d[client]])
            d[f"{client}_cpu_s_per_gb"] = median([r["cpu_s_per_gb"] for r in d[client]])
        times = sorted(x for r in d["splice"] for x in r.pop("per_download_s"))
        d["download_s"] = {"p50": percentile(times, 50), "p99": percentile(times, 99)}
        d["max_peak_rss_mb"] = max(
            max(r["peak_rss_mb"], r["hwm_mb"]) for c in ("splice", "wrk") for r in d[c]
        )
    return out


def bench_manifests(loader: Loader, targets: list[Target], info: JSON, p: Params) -> JSON:
    accept = f"Accept: {MEDIA_OCI_MANIFEST}"
    regs = [t for t in targets if t.manifest_url is not None]
    out: JSON = {"GET (wrk)": {}, "HEAD (httpload)": {}}
    for t in regs:  # warm-up and a correctness check of the response
        assert t.manifest_url is not None
        head = httpload(
            loader, t.manifest_url, method="HEAD", conns=4, duration=1, headers=[accept]
        )
        if set(head["statuses"]) != {"200"}:
            raise RuntimeError(f"{t.name} HEAD manifest: {head['statuses']} {head['errors']}")
    for i in range(p.manifest_runs):
        for t in regs:
            assert t.manifest_url is not None
            for key in out:
                with metered(t, targets) as meter:
                    if key == "GET (wrk)":
                        res = wrk(
                            loader,
                            t.manifest_url,
                            threads=2,
                            conns=64,
                            duration=p.manifest_s,
                            extra=["-H", accept],
                        )
                        res.pop("raw")
                    else:
                        res = httpload(
                            loader,
                            t.manifest_url,
                            method="HEAD",
                            conns=64,
                            duration=p.manifest_s,
                            headers=[accept],
                        )
                res["cpu"] = meter.use.as_json()
                requests = res.get("requests", 0)
                res["cpu_ms_per_request"] = (
                    meter.use.server_s * 1000 / requests if requests else float("nan")
                )
                out[key].setdefault(t.name, []).append(res)
                log(
                    f"[3] run {i + 1} {key} {t.name}: {_rps(res):.0f} req/s "
                    f"p99 {_p99(res):.1f} ms, {_bad(res)} errors/non-200, "
                    f"CPU {res['cpu_ms_per_request']:.3f} ms/request, "
                    f"foreign {meter.use.foreign_cores:.2f} cores"
                )
                time.sleep(1)
    # the load generator's own ceiling: the same clients against nginx `return 200`
    empty = info["nginx_empty_url"]
    res = wrk(loader, empty, threads=2, conns=64, duration=p.manifest_s)
    res.pop("raw")
    out["GET (wrk)"][CEILING] = [res]
    res = httpload(loader, empty, method="HEAD", conns=64, duration=p.manifest_s, headers=[])
    out["HEAD (httpload)"][CEILING] = [res]
    log(
        "[3] client ceilings: "
        + ", ".join(f"{k} {_rps(v[CEILING][0]):.0f}" for k, v in out.items())
    )
    return out


# --------------------------------------------------------------------------- report


def _rps(r: JSON) -> float:
    return float(r.get("rps", 0.0))


def _p50(r: JSON) -> float:
    return float(r["latency_ms"]["p50"]) if "latency_ms" in r else float(r.get("p50_ms", "nan"))


def _p99(r: JSON) -> float:
    return float(r["latency_ms"]["p99"]) if "latency_ms" in r else float(r.get("p99_ms", "nan"))


def _bad(r: JSON) -> int:
    if "statuses" in r:
        return sum(v for k, v in r["statuses"].items() if k != "200") + len(r["errors"])
    return int(r["non2xx"]) + int(r["socket_errors"])


def _median_run(runs: list[JSON]) -> JSON:
    """The run with the median req/s (its p99 is reported with it)."""
    ordered = sorted(runs, key=_rps)
    return ordered[len(ordered) // 2]


def _load_line(results: JSON, key: str) -> str:
    q = results.get("quiet", {}).get(key)
    if not q:
        return ""
    b, a = q["before"], q["after"]
    return (
        f"Machine before: load {b['load_after']:.2f}, foreign {b['foreign_cores']:.2f} cores, "
        f"steal {b['steal_cores']:.2f}; after: load {a['load_after']:.2f}, foreign "
        f"{a['foreign_cores']:.2f} cores, steal {a['steal_cores']:.2f} (2 s quiet windows). "
        "† marks a figure from a run beside more than 0.1 core of foreign CPU use "
        "or 0.05 core of hypervisor steal."
    )


def markdown(results: JSON) -> str:
    lines: list[str] = [
        f"Servers {'pinned (each to CPU 0, clients to CPU 1)' if results['pinned'] else 'unpinned (as users run them)'}; "
        f"{results['date']}.",
        "",
    ]
    for key, fn in (
        ("single", _md_single),
        ("concurrent", _md_concurrent),
        ("manifests", _md_manifests),
    ):
        if key in results:
            lines += [*fn(results), _load_line(results, key), ""]
    return "\n".join(lines) + "\n"


def _md_single(results: JSON) -> list[str]:
    s = results["single"]
    lines = [
        f"### 1. Single stream GET, {s['blob_size'] / MIB:.0f} MiB blob, {len(s['runs'])} consecutive runs",
        "",
        "| run | server | zero-copy client: median MB/s | vs nginx | curl -o /dev/null: median MB/s | vs nginx | server CPU s/GB | rounds beside foreign load |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for i, run in enumerate(s["runs"], 1):
        ngs, ngc = run["splice_median_mb_s"][NGINX], run["curl_median_mb_s"][NGINX]
        for name in run["curl_median_mb_s"]:
            sp, cu = run["splice_median_mb_s"][name], run["curl_median_mb_s"][name]
            bad = sum(u["disturbed"] for u in run["cpu"][name])
            lines.append(
                f"| {i} | {name} | {sp:.0f} | {sp / ngs:.2f}× | {cu:.0f} | {cu / ngc:.2f}× | "
                f"{run['cpu_s_per_gb'][name]:.3f} | {bad} of {len(run['cpu'][name])} |"
            )
    return [*lines, ""]


def _md_concurrent(results: JSON) -> list[str]:
    c = results["concurrent"]
    ng = c[NGINX]
    lines = [
        f"### 2. 50 concurrent downloads, {results['info']['mid_blob']['size'] / MIB:.0f} MiB blob",
        "",
        f"Zero-copy client: 50 connections × {results['params']['concurrent_count']} downloads "
        f"each per run; wrk: {results['params']['concurrent_s']} s per run.",
        "",
        "| server | zero-copy: aggregate MB/s (median) | vs nginx | per-download time p50 / p99 s (all runs) | p99 vs nginx | wrk -t2 -c50: MB/s (median) | vs nginx | server CPU s/GB (zero-copy; wrk) | vs nginx | runs MB/s (zero-copy; wrk) | RSS idle → peak MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for name, d in c.items():
        runs = ", ".join(f"{r['mb_s']:.0f}{mark(r['cpu'])}" for r in d["splice"])
        runs += "; " + ", ".join(f"{r.get('mb_s', 0):.0f}{mark(r['cpu'])}" for r in d["wrk"])
        lat = d["download_s"]
        lines.append(
            f"| {name} | {d['splice_median_mb_s']:.0f} | {d['splice_median_mb_s'] / ng['splice_median_mb_s']:.2f}× | "
            f"{lat['p50']:.2f} / {lat['p99']:.2f} | {lat['p99'] / ng['download_s']['p99']:.2f}× | "
            f"{d['wrk_median_mb_s']:.0f} | {d['wrk_median_mb_s'] / ng['wrk_median_mb_s']:.2f}× | "
            f"{d['splice_cpu_s_per_gb']:.3f}; {d['wrk_cpu_s_per_gb']:.3f} | "
            f"{d['splice_cpu_s_per_gb'] / ng['splice_cpu_s_per_gb']:.2f}×; "
            f"{d['wrk_cpu_s_per_gb'] / ng['wrk_cpu_s_per_gb']:.2f}× | {runs} | "
            f"{d['idle_rss_mb']:.0f} → {d['max_peak_rss_mb']:.0f} |"
        )
    return [*lines, ""]


def _md_manifests(results: JSON) -> list[str]:
    m = results["manifests"]
    lines = [
        "### 3. Manifest by tag, 64 connections",
        "",
        "| request (client) | server | req/s (median run) | p50 ms | p99 ms | runs req/s | server CPU ms/request | errors / non-200 |",
        "|---|---|---:|---:|---:|---|---:|---|",
    ]
    for kind, per in m.items():
        for name, runs in per.items():
            r = _median_run(runs)
            cpu = f"{r['cpu_ms_per_request']:.3f}" if "cpu_ms_per_request" in r else "–"
            lines.append(
                f"| {kind} | {name} | {_rps(r):.0f} | {_p50(r):.1f} | {_p99(r):.1f} | "
                f"{', '.join(f'{_rps(x):.0f}{_mark_run(x)}' for x in runs)} | "
                f"{cpu} | {_bad(r)} |"
            )
    return [*lines, ""]


def goals(results: JSON) -> str:
    s, c, m = results["single"], results["concurrent"], results["manifests"]
    sat, ng = c["satellite"], c[NGINX]

    def ok(b: bool) -> str:
        return "**met**" if b else "**missed**"

    single = [
        (
            run["splice_median_mb_s"]["satellite"] / run["splice_median_mb_s"][NGINX],
            run["curl_median_mb_s"]["satellite"] / run["curl_median_mb_s"][NGINX],
        )
        for run in s["runs"]
    ]
    g_single = all(a >= 1.0 and b >= 1.0 for a, b in single)
    agg = sat["splice_median_mb_s"] / ng["splice_median_mb_s"]
    agg_wrk = sat["wrk_median_mb_s"] / ng["wrk_median_mb_s"]
    p99 = sat["download_s"]["p99"] / ng["download_s"]["p99"]
    cpu = sat["splice_cpu_s_per_gb"] / ng["splice_cpu_s_per_gb"]
    cpu_wrk = sat["wrk_cpu_s_per_gb"] / ng["wrk_cpu_s_per_gb"]
    rss = sat["max_peak_rss_mb"]
    get_sat = _median_run(m["GET (wrk)"]["satellite"])
    get_reg = _median_run(m["GET (wrk)"]["docker-registry"])
    g_get = _rps(get_sat) / _rps(get_reg)
    p99_ratio = _p99(get_sat) / _p99(get_reg)
    per_req = get_sat["cpu_ms_per_request"]
    runs = "; ".join(f"run {i}: {a:.2f}× / {b:.2f}×" for i, (a, b) in enumerate(single, 1))
    return (
        "\n".join(
            [
                "| goal | target | measured | verdict |",
                "|---|---|---|---|",
                f"| manifest GET by tag, 64 conns (wrk) | ≥ 3× docker-registry, p99 ≤ 1/5 of its p99 | {g_get:.2f}× ({_rps(get_sat):.0f} vs {_rps(get_reg):.0f} req/s); p99 {_p99(get_sat):.1f} vs {_p99(get_reg):.1f} ms ({p99_ratio:.2f}×) | {ok(g_get >= 3)} / {ok(p99_ratio <= 0.2)} |",
                f"| 1 GiB single stream | ≥ 1.0× nginx in each of 3 consecutive runs, zero-copy client and curl | {runs} (zero-copy / curl) | {ok(g_single and len(single) >= 3)} |",
                f"| 50 × 100 MiB | ≥ 1.0× nginx aggregate, per-download p99 ≤ 1.2× nginx's | zero-copy {agg:.2f}× (wrk {agg_wrk:.2f}×); p99 {sat['download_s']['p99']:.2f} vs {ng['download_s']['p99']:.2f} s ({p99:.2f}×) | {ok(agg >= 1.0)} / {ok(p99 <= 1.2)} |",
                f"| server CPU per GB | ≤ 1.3× nginx's | 50 concurrent: zero-copy {cpu:.2f}×, wrk {cpu_wrk:.2f}× | {ok(cpu <= 1.3)} (zero-copy) / {ok(cpu_wrk <= 1.3)} (wrk) |",
                f"| CPU per manifest request | down from ~0.6 ms | {per_req:.3f} ms (GET by tag, median run) | {ok(per_req < 0.6)} |",
                f"| RSS of all satellite processes | ≤ 150 MB | peak {rss:.0f} MB | {ok(rss <= 150)} |",
            ]
        )
        + "\n"
    )


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench.registry", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller blobs and shorter runs")
    ap.add_argument(
        "--pin",
        action="store_true",
        help="pin each server to CPU 0 and each load generator to CPU 1 (nginx with one worker)",
    )
    ap.add_argument("--only", choices=["single", "concurrent", "manifests"], action="append")
    ap.add_argument(
        "--workdir", type=Path, help="keep everything here (default: a temp dir, removed)"
    )
    ap.add_argument("--json", type=Path, help="write all results as JSON here")
    ap.add_argument("--markdown", type=Path, help="write the result tables here")
    args = ap.parse_args(argv)
    params = QUICK if args.quick else FULL
    pinned = args.pin and (os.cpu_count() or 1) >= 2
    for tool in ("curl", "wrk", "nginx", "docker-registry", "skopeo", "taskset"):
        if shutil.which(tool) is None:
            print(f"bench.registry: `{tool}` is not installed", file=sys.stderr)
            return 2
    only = set(args.only or ["single", "concurrent", "manifests"])
    started = dt.datetime.now(dt.UTC)
    results: JSON = {
        "command": " ".join(
            [".venv/bin/python -m bench.registry", *(argv if argv is not None else sys.argv[1:])]
        ),
        "date": started.isoformat(timespec="seconds"),
        "params": params.__dict__,
        "pinned": {"servers": SERVER_CPU, "load": LOAD_CPU} if pinned else None,
        "machine": machine_info(),
        "load_at_start": os.getloadavg(),
        "quiet": {},
    }
    tmp: tempfile.TemporaryDirectory[str] | None = None
    if args.workdir is not None:
        work = args.workdir.resolve()
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="satellite-bench-")
        work = Path(tmp.name)
    loader = Loader(pinned)
    try:
        with servers(work, params, pinned) as (targets, info):
            results["info"] = info
            steps: list[tuple[str, Callable[[Loader, list[Target], JSON, Params], JSON]]] = [
                ("single", bench_single),
                ("concurrent", bench_concurrent),
                ("manifests", bench_manifests),
            ]
            for key, fn in steps:
                if key in only:
                    before = quiet(targets)
                    results[key] = fn(loader, targets, info, params)
                    results["quiet"][key] = {"before": before, "after": quiet(targets)}
    finally:
        if tmp is not None:
            tmp.cleanup()
    results["elapsed_s"] = round((dt.datetime.now(dt.UTC) - started).total_seconds())
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    text = markdown(results)
    if only == {"single", "concurrent", "manifests"}:
        text += "\n" + goals(results)
    print(text)
    if args.markdown and text:
        args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
