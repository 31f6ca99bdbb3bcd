"""Cold pulls with the upstream behind a rate-limited link, as at a real site.

    sudo .venv/bin/python -m bench.wan                  # 1 Gbit/s link, 5 runs
    sudo .venv/bin/python -m bench.wan --rate 300mbit --json out.json

bench.proxy measures everything on loopback, where the upstream delivers faster than the
clients take it in and every process shares the same two cores. A site's upstream sits
across a WAN instead. This creates two network namespaces joined by a veth pair:

    satbench-site   the satellite, docker-registry's proxy, skopeo, the benchmark itself
                    (on the namespace's own loopback, unshaped: the site's LAN)
    satbench-wan    the upstream docker-registry, at 10.213.0.2

and shapes both directions of the veth pair with a token bucket (`tc qdisc ... tbf`; this
kernel has no netem, so the link adds no delay of its own). Then it runs
`python -m bench.proxy --only pull` inside satbench-site with the upstream in
satbench-wan, and removes both namespaces. Needs root (namespaces, tc). Nothing leaves
the namespaces this creates.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

SITE, WAN = "satbench-site", "satbench-wan"
SITE_ADDR, WAN_ADDR = "10.213.0.1", "10.213.0.2"
SITE_DEV, WAN_DEV = "satbench0", "satbench1"
REPO_ROOT = Path(__file__).resolve().parents[1]


def ip(*args: str, netns: str | None = None, check: bool = True) -> None:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    subprocess.run([*prefix, *args], check=check, capture_output=True, timeout=30)


def teardown() -> None:
    for ns in (SITE, WAN):
        ip("ip", "netns", "del", ns, check=False)  # takes its end of the veth pair along


def setup(rate: str) -> None:
    teardown()
    ip("ip", "netns", "add", SITE)
    ip("ip", "netns", "add", WAN)
    ip("ip", "link", "add", SITE_DEV, "netns", SITE, "type", "veth", "peer", WAN_DEV, "netns", WAN)
    for ns, dev, addr in ((SITE, SITE_DEV, SITE_ADDR), (WAN, WAN_DEV, WAN_ADDR)):
        ip("ip", "link", "set", "lo", "up", netns=ns)
        ip("ip", "addr", "add", f"{addr}/30", "dev", dev, netns=ns)
        ip("ip", "link", "set", dev, "up", netns=ns)
        # burst: enough for the rate at a 1 ms timer; latency: the queue a sender may fill
        ip("tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate, "burst", "256kb",
           "latency", "50ms", netns=ns)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.wan", description=__doc__.split("\n")[0])
    ap.add_argument("--rate", default="1gbit", help="link rate, in tc's units (default 1gbit)")
    ap.add_argument("--json", type=Path, help="write bench.proxy's raw results here")
    ap.add_argument("--workdir", type=Path, help="bench.proxy's work dir")
    ap.add_argument("--quick", action="store_true", help="bench.proxy --quick")
    args = ap.parse_args(argv)
    setup(args.rate)
    try:
        command = [
            "ip", "netns", "exec", SITE, sys.executable, "-m", "bench.proxy", "--only", "pull",
            "--upstream-netns", WAN, "--upstream-address", WAN_ADDR,
        ]  # fmt: skip
        if args.json:
            command += ["--json", str(args.json.resolve())]
        if args.quick:
            command.append("--quick")
        if args.workdir:
            command += ["--workdir", str(args.workdir.resolve())]
        print(f"link {SITE} <-> {WAN}: {args.rate} each way", file=sys.stderr, flush=True)
        return subprocess.run(command, cwd=REPO_ROOT, check=False, timeout=3600).returncode
    finally:
        teardown()


if __name__ == "__main__":
    sys.exit(main())
