"""Registry benchmarks: Satellite side by side with nginx and Debian's docker-registry.

    .venv/bin/python -m bench.registry            # full run (~8 min on 2 cores)
    .venv/bin/python -m bench.registry --quick    # smoke run: smaller blobs, short runs
    .venv/bin/python -m bench.registry --markdown out.md --json out.json

What runs (all on 127.0.0.1, all servers started by this script in a temp dir):

1. single stream: GET of a ~1 GiB cached layer blob, one connection, with two clients:
   bench.blobload (splices the body into /dev/null: no copy, so the client is not the
   bottleneck) and `curl -o /dev/null` (copies every byte, as real clients do); medians
   of N downloads, servers interleaved;
2. 50 concurrent downloads of a ~100 MiB blob for a fixed duration, with bench.blobload
   -c50 and with `wrk -t2 -c50`: aggregate MB/s, and the peak RSS of each server's
   process tree while it runs (VmRSS sampled every 50 ms, and the kernel's VmHWM after
   `clear_refs`);
3. manifest GET by tag (`wrk -t2 -c64 --latency`, with the OCI manifest Accept header) and
   manifest HEAD by tag (bench.httpload, 64 keep-alive connections: wrk hangs on HEAD).

The same image (an OCI layout built by tests.support.images) is pushed with skopeo into the
satellite and into docker-registry; nginx serves the very same blob files from the layout
with sendfile. By default every server is pinned to CPU 0 and every load generator to
CPU 1 (`--no-pin` to let the scheduler choose): on 2 cores the client otherwise competes
with the server. MB/s means 10^6 bytes per second.
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

from bench.servers import NginxProcess, QuietRegistry, RssSampler, pin
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
    single_runs: int
    concurrent_s: int
    concurrent_runs: int
    manifest_s: int
    manifest_runs: int


FULL = Params(
    big_size=1024 * MIB,
    mid_size=100 * MIB,
    single_runs=7,
    concurrent_s=15,
    concurrent_runs=3,
    manifest_s=10,
    manifest_runs=3,
)
QUICK = Params(
    big_size=256 * MIB,
    mid_size=32 * MIB,
    single_runs=3,
    concurrent_s=4,
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
        satellite = SatelliteProcess(work / "satellite", push=True)
        stack.callback(satellite.stop)
        satellite.start()
        nginx = NginxProcess(work / "nginx", layout / "blobs" / "sha256")
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


def blobload(
    loader: Loader, url: str, *, conns: int, duration: float = 600, count: int = 1_000_000
) -> JSON:
    args = [sys.executable, "-m", "bench.blobload", "--url", url, "-c", str(conns)]
    args += ["-d", str(duration), "-n", str(count)]
    result: JSON = json.loads(loader.run(args, timeout=duration + 180))
    if result["errors"]:
        raise RuntimeError(f"{url}: {result['errors'][:3]}")
    return result


def bench_single(loader: Loader, targets: list[Target], info: JSON, p: Params) -> JSON:
    size = info["big_blob"]["size"]
    log(f"[1] single stream, {size / MIB:.0f} MiB blob: warm-up")
    for t in targets:
        curl_speed(loader, t.big_url, size)
    splice: dict[str, list[float]] = {t.name: [] for t in targets}
    curl: dict[str, list[float]] = {t.name: [] for t in targets}
    for i in range(p.single_runs):
        for t in targets:  # interleaved, so drift hits every server alike
            res = blobload(loader, t.big_url, conns=1, count=2)
            splice[t.name] += res["per_download_mb_s"]
            curl[t.name].append(curl_speed(loader, t.big_url, size))
        log(
            f"[1] round {i + 1}/{p.single_runs} (splice last, curl): "
            + ", ".join(f"{k} {splice[k][-1]:.0f} {v[-1]:.0f}" for k, v in curl.items())
        )
    return {
        "blob_size": size,
        "splice_runs_mb_s": splice,
        "splice_median_mb_s": {k: median(v) for k, v in splice.items()},
        # each round is 2 downloads on one new connection: the first one is the slower
        # mode on this machine, so both positions are reported (docs/benchmarks.md)
        "splice_first_median_mb_s": {k: median(v[0::2]) for k, v in splice.items()},
        "splice_later_median_mb_s": {k: median(v[1::2]) for k, v in splice.items()},
        "curl_runs_mb_s": curl,
        "curl_median_mb_s": {k: median(v) for k, v in curl.items()},
    }


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
                with RssSampler(t.pid) as rss:
                    if client == "splice":
                        r = blobload(loader, t.mid_url, conns=50, duration=p.concurrent_s)
                        res = {"mb_s": r["aggregate_mb_s"], "requests": r["completed"]}
                    else:
                        res = wrk(loader, t.mid_url, threads=2, conns=50, duration=p.concurrent_s)
                        res.pop("raw")
                res["peak_rss_mb"] = rss.peak_mb
                res["hwm_mb"] = rss.hwm_mb
                out[t.name][client].append(res)
                log(
                    f"[2] run {i + 1} {client} {t.name}: {res.get('mb_s', 0):.0f} MB/s, "
                    f"{res.get('requests', 0)} done, peak RSS {rss.peak_mb:.0f} MB (HWM {rss.hwm_mb:.0f})"
                )
                time.sleep(1)
    for d in out.values():
        for client in ("splice", "wrk"):
            d[f"{client}_median_mb_s"] = median([r.get("mb_s", 0.0) for r in d[client]])
        d["max_peak_rss_mb"] = max(
            max(r["peak_rss_mb"], r["hwm_mb"]) for c in ("splice", "wrk") for r in d[c]
        )
    return out


def bench_manifests(loader: Loader, targets: list[Target], info: JSON, p: Params) -> JSON:
    accept = f"Accept: {MEDIA_OCI_MANIFEST}"
    regs = [t for t in targets if t.manifest_url is not None]
    out: JSON = {"GET (wrk)": {}, "HEAD (httpload)": {}, "GET (httpload)": {}}
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
            res = wrk(
                loader,
                t.manifest_url,
                threads=2,
                conns=64,
                duration=p.manifest_s,
                extra=["-H", accept],
            )
            res.pop("raw")
            out["GET (wrk)"].setdefault(t.name, []).append(res)
            log(
                f"[3] run {i + 1} GET wrk {t.name}: {res.get('rps', 0):.0f} req/s p99 {res.get('p99_ms', 0):.1f} ms, non2xx {res['non2xx']}"
            )
            time.sleep(1)
            for method, key in (("HEAD", "HEAD (httpload)"), ("GET", "GET (httpload)")):
                res = httpload(
                    loader,
                    t.manifest_url,
                    method=method,
                    conns=64,
                    duration=p.manifest_s,
                    headers=[accept],
                )
                out[key].setdefault(t.name, []).append(res)
                log(
                    f"[3] run {i + 1} {method} httpload {t.name}: {res['rps']:.0f} req/s "
                    f"p99 {res['latency_ms']['p99']:.1f} ms statuses {res['statuses']} errors {len(res['errors'])} "
                    f"reconnects {res.get('reconnects', 0)}"
                )
                time.sleep(1)
    # the load generator's own ceiling: the same clients against nginx `return 200`
    empty = info["nginx_empty_url"]
    res = wrk(loader, empty, threads=2, conns=64, duration=p.manifest_s)
    res.pop("raw")
    out["GET (wrk)"].setdefault("nginx `return 200` (client ceiling)", []).append(res)
    for method, key in (("HEAD", "HEAD (httpload)"), ("GET", "GET (httpload)")):
        res = httpload(loader, empty, method=method, conns=64, duration=p.manifest_s, headers=[])
        out[key].setdefault("nginx `return 200` (client ceiling)", []).append(res)
    log(
        "[3] client ceilings: "
        + json.dumps(
            {
                k: [r.get("rps") for r in v.get("nginx `return 200` (client ceiling)", [])]
                for k, v in out.items()
            }
        )
    )
    return out


# --------------------------------------------------------------------------- report


def _rps(r: JSON) -> float:
    return float(r.get("rps", 0.0))


def _p99(r: JSON) -> float:
    return (
        float(r["latency_ms"]["p99"]) if "latency_ms" in r else float(r.get("p99_ms", float("nan")))
    )


def _median_run(runs: list[JSON]) -> JSON:
    """The run with the median req/s (its p99 is reported with it)."""
    ordered = sorted(runs, key=_rps)
    return ordered[len(ordered) // 2]


def markdown(results: JSON) -> str:
    lines: list[str] = []
    if "single" in results:
        lines += _md_single(results)
    if "concurrent" in results:
        lines += _md_concurrent(results)
    if "manifests" in results:
        lines += _md_manifests(results)
    return "\n".join(lines) + "\n"


def _md_single(results: JSON) -> list[str]:
    lines: list[str] = []
    nginx = "nginx (sendfile)"
    s = results["single"]
    ngs, ngc = s["splice_median_mb_s"][nginx], s["curl_median_mb_s"][nginx]
    lines += [
        f"### 1. Single stream GET, {s['blob_size'] / MIB:.0f} MiB blob",
        "",
        "| server | zero-copy client: median MB/s | vs nginx | first / later download on a connection: median MB/s | curl -o /dev/null: median MB/s | vs nginx | curl runs MB/s |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name in s["curl_median_mb_s"]:
        sp, cu = s["splice_median_mb_s"][name], s["curl_median_mb_s"][name]
        first, later = s["splice_first_median_mb_s"][name], s["splice_later_median_mb_s"][name]
        runs = ", ".join(f"{x:.0f}" for x in s["curl_runs_mb_s"][name])
        lines.append(
            f"| {name} | {sp:.0f} | {sp / ngs:.2f}× | {first:.0f} / {later:.0f} "
            f"| {cu:.0f} | {cu / ngc:.2f}× | {runs} |"
        )
    return [*lines, ""]


def _md_concurrent(results: JSON) -> list[str]:
    lines: list[str] = []
    nginx = "nginx (sendfile)"
    c = results["concurrent"]
    ng_s, ng_w = c[nginx]["splice_median_mb_s"], c[nginx]["wrk_median_mb_s"]
    lines += [
        f"### 2. 50 concurrent downloads, {results['info']['mid_blob']['size'] / MIB:.0f} MiB blob",
        "",
        "| server | zero-copy client: aggregate MB/s (median) | vs nginx | wrk -t2 -c50: aggregate MB/s (median) | vs nginx | downloads completed per run (zero-copy; wrk) | RSS idle → peak MB |",
        "|---|---:|---:|---:|---:|---|---:|",
    ]
    for name, d in c.items():
        ds = ", ".join(str(r.get("requests", 0)) for r in d["splice"])
        dw = ", ".join(str(r.get("requests", 0)) for r in d["wrk"])
        lines.append(
            f"| {name} | {d['splice_median_mb_s']:.0f} | {d['splice_median_mb_s'] / ng_s:.2f}× | "
            f"{d['wrk_median_mb_s']:.0f} | {d['wrk_median_mb_s'] / ng_w:.2f}× | {ds}; {dw} | "
            f"{d['idle_rss_mb']:.0f} → {d['max_peak_rss_mb']:.0f} |"
        )
    return [*lines, ""]


def _md_manifests(results: JSON) -> list[str]:
    lines: list[str] = []
    m = results["manifests"]
    lines += [
        "### 3. Manifest by tag, 64 connections",
        "",
        "| request (client) | server | req/s (median run) | p50 ms | p99 ms | runs req/s | errors / non-200 |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for kind, per in m.items():
        for name, runs in per.items():
            r = _median_run(runs)
            p50 = r["latency_ms"]["p50"] if "latency_ms" in r else r.get("p50_ms", float("nan"))
            if "statuses" in r:
                bad = sum(v for k, v in r["statuses"].items() if k != "200") + len(r["errors"])
            else:
                bad = r["non2xx"] + r["socket_errors"]
            lines.append(
                f"| {kind} | {name} | {_rps(r):.0f} | {p50:.1f} | {_p99(r):.1f} | "
                f"{', '.join(f'{_rps(x):.0f}' for x in runs)} | {bad} |"
            )
    return [*lines, ""]


def goals(results: JSON) -> str:
    nginx = "nginx (sendfile)"
    s = results["single"]
    c = results["concurrent"]
    m = results["manifests"]
    g1s = s["splice_median_mb_s"]["satellite"] / s["splice_median_mb_s"][nginx]
    g1c = s["curl_median_mb_s"]["satellite"] / s["curl_median_mb_s"][nginx]
    g1f, g1l = (
        s[f"splice_{pos}_median_mb_s"]["satellite"] / s[f"splice_{pos}_median_mb_s"][nginx]
        for pos in ("first", "later")
    )
    g2s = c["satellite"]["splice_median_mb_s"] / c[nginx]["splice_median_mb_s"]
    g2w = c["satellite"]["wrk_median_mb_s"] / c[nginx]["wrk_median_mb_s"]
    rss = c["satellite"]["max_peak_rss_mb"]
    head_sat = _median_run(m["HEAD (httpload)"]["satellite"])
    head_reg = _median_run(m["HEAD (httpload)"]["docker-registry"])
    g3 = _rps(head_sat) / _rps(head_reg)
    p99 = _p99(head_sat)

    def ok(b: bool) -> str:
        return "**met**" if b else "**missed**"

    return (
        "\n".join(
            [
                "| goal | target | measured | verdict |",
                "|---|---|---|---|",
                f"| 1. single-stream GET of the big blob | satellite ≥ 1.0× nginx | zero-copy client {g1s:.2f}× (first downloads {g1f:.2f}×, later {g1l:.2f}×); curl {g1c:.2f}× | {ok(g1s >= 1.0)} (zero-copy) / {ok(g1c >= 1.0)} (curl) |",
                f"| 2. 50 concurrent downloads | ≥ 0.9× nginx and peak RSS ≤ 150 MB | zero-copy client {g2s:.2f}×; wrk {g2w:.2f}×; peak RSS {rss:.0f} MB | throughput {ok(g2s >= 0.9)} (zero-copy) / {ok(g2w >= 0.9)} (wrk); RSS {ok(rss <= 150)} |",
                f"| 3. manifest HEAD by tag, 64 conns | ≥ 3× docker-registry and p99 ≤ 20 ms | {g3:.2f}× ({_rps(head_sat):.0f} vs {_rps(head_reg):.0f} req/s), p99 {p99:.1f} ms | {ok(g3 >= 3 and p99 <= 20)} |",
            ]
        )
        + "\n"
    )


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench.registry", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller blobs and shorter runs")
    ap.add_argument("--no-pin", action="store_true", help="do not pin servers/clients to CPUs")
    ap.add_argument("--only", choices=["single", "concurrent", "manifests"], action="append")
    ap.add_argument(
        "--workdir", type=Path, help="keep everything here (default: a temp dir, removed)"
    )
    ap.add_argument("--json", type=Path, help="write all results as JSON here")
    ap.add_argument("--markdown", type=Path, help="write the result tables here")
    args = ap.parse_args(argv)
    params = QUICK if args.quick else FULL
    pinned = not args.no_pin and (os.cpu_count() or 1) >= 2
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
                    results[key] = fn(loader, targets, info, params)
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
