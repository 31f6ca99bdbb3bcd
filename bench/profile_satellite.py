"""Where the satellite spends its CPU under the benchmark loads: py-spy on the server.

    .venv/bin/pip install py-spy          # once
    .venv/bin/python -m bench.profile_satellite [--scenario blob50|blob1|head64|all] [--seconds 10]

Starts one satellite (pinned to CPU 0), pushes the benchmark images into it, runs a load
(pinned to CPU 1, like bench.registry) and samples the server with
`py-spy record --format raw --threads` (py-spy also runs on CPU 1). Prints, per scenario:
the share of busy samples per thread (event loop vs worker threads), the top functions by
self time, the event loop's inclusive time per function, and keeps the collapsed stacks
(flamegraph input) in the work dir, removing the images and the satellite's data. `--resummarize DIR` reprints an earlier run. The server's own CPU use (utime+stime from /proc) is
printed next to the load's result, so a profile can be tied to a throughput figure.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.registry import LOAD_CPU, MIB, SERVER_CPU, Loader, blobload, httpload
from bench.servers import pin
from tests.support.images import MEDIA_OCI_MANIFEST, build_big_image, build_image
from tests.support.satellite import SatelliteProcess
from tests.support.skopeo import Skopeo


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# leaf frames of a thread that waits for work (py-spy samples those too without --idle
# when they hold no GIL-visible idle marker): excluded from the shares below
IDLE_LEAVES = (
    "Condition.wait (threading.py",
    "_worker (concurrent/futures/thread.py",
    "_connection_worker_thread (aiosqlite/core.py",
    "EpollSelector.select (selectors.py",
)


def summarize(raw: Path, top: int = 20) -> str:
    self_t: collections.Counter[str] = collections.Counter()
    main_incl: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = idle = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        if len(frames) < 2 or frames[-1].startswith(IDLE_LEAVES):
            idle += n
            continue
        kind = (
            "MainThread (event loop)"
            if "MainThread" in frames[0]
            else (
                "AnyIO worker threads (os.pread)"
                if "AnyIO worker" in frames[0]
                else "other threads"
            )
        )
        threads[kind] += n
        self_t[frames[-1]] += n
        if kind.startswith("MainThread"):
            for f in set(frames[1:]):
                main_incl[f] += n
    busy = total - idle
    if busy == 0:
        return "no busy samples\n"
    out = [f"samples: {total}, busy (non-waiting) samples: {busy}", "busy samples by thread:"]
    out += [f"  {100 * n / busy:5.1f}%  {t}" for t, n in threads.most_common()]
    out.append("self time (share of busy samples):")
    out += [f"  {100 * n / busy:5.1f}%  {f}" for f, n in self_t.most_common(top)]
    out.append("event loop thread, inclusive (share of busy samples):")
    out += [f"  {100 * n / busy:5.1f}%  {f}" for f, n in main_incl.most_common(top + 15)]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench.profile_satellite", description=__doc__.split("\n")[0])
    ap.add_argument("--scenario", choices=["blob50", "blob1", "head64", "all"], default="all")
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--native", action="store_true", help="py-spy --native (C frames too)")
    ap.add_argument("--resummarize", type=Path, help="only summarize DIR/*.collapsed")
    args = ap.parse_args(argv)
    if args.resummarize is not None:
        for raw in sorted(args.resummarize.glob("*.collapsed")):
            print(f"=== {raw.stem}")
            print(summarize(raw))
        return 0
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(pyspy).exists():
        print("py-spy is missing: .venv/bin/pip install py-spy", file=sys.stderr)
        return 2
    work = args.workdir or Path(tempfile.mkdtemp(prefix="satellite-profile-"))
    work.mkdir(parents=True, exist_ok=True)
    layout = work / "layout"
    big = build_big_image(layout, "big:v1", 1024 * MIB, seed="bench-big")
    mid = build_big_image(layout, "mid:v1", 100 * MIB, seed="bench-mid")
    build_image(layout, "small:v1", layers=3, layer_size=64 * 1024, seed="bench-small")
    loader = Loader(pinned=True)
    sat = SatelliteProcess(work / "satellite", push=True)
    sat.start()
    try:
        skopeo = Skopeo(work / "skopeo", timeout=600)
        for tag in ("big:v1", "mid:v1", "small:v1"):
            repo, _, ref = tag.partition(":")
            skopeo.copy(
                f"oci:{layout}:{tag}",
                f"docker://{sat.host}/bench/{repo}:{ref}",
                "--preserve-digests",
            )
        assert sat.pid is not None
        pin(sat.pid, {SERVER_CPU})
        urls = {
            "blob50": f"{sat.url}/v2/bench/mid/blobs/{mid.layer_digests[0]}",
            "blob1": f"{sat.url}/v2/bench/big/blobs/{big.layer_digests[0]}",
            "head64": f"{sat.url}/v2/bench/small/manifests/v1",
        }
        scenarios = list(urls) if args.scenario == "all" else [args.scenario]
        for name in scenarios:
            raw = work / f"{name}.collapsed"
            spy_argv = ["taskset", "-c", str(LOAD_CPU), pyspy, "record", "--pid", str(sat.pid)]
            spy_argv += ["--duration", str(args.seconds), "--threads", "--format", "raw"]
            spy_argv += ["-o", str(raw)] + (["--native"] if args.native else [])
            spy = subprocess.Popen(spy_argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(0.5)
            c0, t0 = cpu_seconds(sat.pid), time.monotonic()
            if name == "blob50":
                r = blobload(loader, urls[name], conns=50, duration=args.seconds - 1)
                result = f"{r['aggregate_mb_s']:.0f} MB/s aggregate, {r['completed']} downloads"
            elif name == "blob1":
                r = blobload(loader, urls[name], conns=1, duration=args.seconds - 1)
                result = f"{r['aggregate_mb_s']:.0f} MB/s single stream"
            else:
                r = httpload(
                    loader,
                    urls[name],
                    method="HEAD",
                    conns=64,
                    duration=args.seconds - 1,
                    headers=[f"Accept: {MEDIA_OCI_MANIFEST}"],
                )
                result = f"{r['rps']:.0f} req/s, p99 {r['latency_ms']['p99']:.1f} ms"
            busy = (cpu_seconds(sat.pid) - c0) / (time.monotonic() - t0)
            _, err = spy.communicate(timeout=args.seconds + 60)
            print(f"=== {name}: {result}; satellite CPU {100 * busy:.0f}% of one core")
            if raw.exists():
                print(summarize(raw))
            else:
                print("py-spy produced nothing:", err.decode()[-1000:])
    finally:
        sat.stop()
        # the images and the satellite's copies are ~2.3 GB: only the stacks are kept
        shutil.rmtree(layout, ignore_errors=True)
        shutil.rmtree(work / "satellite", ignore_errors=True)
    print(f"collapsed stacks in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
