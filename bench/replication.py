"""Replication beside skopeo, in one run, from one docker-registry.

The set: ``app`` (6 layers), ``tool`` (4 layers, all shared with ``app``) and ``multi``, an
index of 4 platforms x 2 layers of which the state keeps 2 platforms. Layers are
``--layer-mib`` each (150: about 1.5 GB needed, 2.1 GB upstream).

- replication: the satellite's Replicator (in-process, with its proxy and store) makes a
  fresh store hold the state; upstream bytes are read from docker-registry's access log
  and compared with the unique bytes the state needs (goal: exactly 1.00);
- skopeo: the same images into a second docker-registry, ``skopeo copy`` per image and
  ``--all --preserve-digests`` for the index (docker-registry refuses an index whose
  children it lacks, so skopeo has to move every platform to keep the index's digest);
- the cap: at each ``--caps`` rate, one image of about ``--cap-seconds`` worth of bytes
  replicated into a fresh store, achieved rate = bytes / wall time (goal: within 5%), and
  the rate while transferring (first to last byte paid for, without the final commit);
- a client pull through the proxy (``--probe-mib`` blob, same cap) with replication idle
  and with a capped replication running.

    .venv/bin/python -m bench.replication [--layer-mib 150] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from appliance.replicate import Replicator
from groundcontrol.contract import ImageDescriptor, StateDocument
from registry_proxy.content import FillSource
from registry_proxy.digest import Digest
from registry_proxy.metrics import Metrics
from registry_proxy.proxy import Proxy, UpstreamLink
from registry_proxy.routing import Router, UpstreamName
from registry_proxy.store import ContentStore
from registry_proxy.upstream import UpstreamClient
from tests.support.images import ImageRef, build_image, build_index
from tests.support.skopeo import Skopeo
from tests.support.upstream import UpstreamRegistry

MIB = 1024 * 1024
PLATFORMS = (("linux", "amd64"), ("linux", "arm64"), ("linux", "ppc64le"), ("linux", "s390x"))
KEPT = ("linux/amd64", "linux/arm64")


def descriptor(name: str, ref: ImageRef, platforms: tuple[str, ...] = ()) -> ImageDescriptor:
    return ImageDescriptor(name, "v1", ref.digest, ref.media_type, ref.size, platforms)


def state(*images: ImageDescriptor) -> StateDocument:
    now = datetime.now(UTC)
    return StateDocument("bench", 1, now, now + timedelta(days=1), tuple(images))


def blob_bytes(ref: ImageRef, digests: set[str]) -> int:
    return sum(ref.blob_file(d).stat().st_size for d in digests)


class Rig:
    def __init__(self, root: Path, upstream: UpstreamRegistry) -> None:
        self.root = root
        self.upstream = upstream
        self.runs = 0

    async def replicate(
        self, doc: StateDocument, *, cap: int = 0, probe: Digest | None = None, delay: float = 0
    ) -> dict[str, Any]:
        """A fresh store replicates ``doc``; with ``probe``, a client pulls that blob of
        ``library/probe`` through the proxy ``delay`` s in."""
        self.runs += 1
        data = self.root / f"store-{self.runs}"
        store = ContentStore(data)
        await store.open()
        client = UpstreamClient("up", self.upstream.url)
        proxy = Proxy(store, {"up": UpstreamLink(client, default=True)}, Metrics())
        proxy.bandwidth.set_rate(cap)
        router = Router([UpstreamName("up", self.upstream.url, default=True)])
        replicator = Replicator(store, proxy, lambda: router)
        before = self.upstream.blobs_served()
        out: dict[str, Any] = {}
        try:
            started = time.monotonic()
            task = asyncio.create_task(replicator.reconcile(doc))
            if probe is not None:
                await asyncio.sleep(delay)
                out["probe_seconds"] = await pull(proxy, router, probe)
            result = await task
            out["seconds"] = time.monotonic() - started
            out["paid_mb_s"] = (proxy.bandwidth.paid_rate() or 0) / 1e6
            assert result.failed == 0, replicator.statuses(doc)
        finally:
            await proxy.close()
            await store.close()
            shutil.rmtree(data, ignore_errors=True)
        served, requests = (
            a - b for a, b in zip(self.upstream.blobs_served(), before, strict=True)
        )
        out.update(upstream_bytes=served, blob_requests=requests)
        return out


async def pull(proxy: Proxy, router: Router, digest: Digest) -> float:
    """A client's blob pull through the proxy, read to the end: its latency."""
    target = router.route("library/probe")
    started = time.monotonic()
    answer = await proxy.blob(target, digest)
    if isinstance(answer, FillSource):
        async for _ in answer.reader.stream(0, answer.size):
            pass
    answer.close()
    return time.monotonic() - started


def skopeo_copy(skopeo: Skopeo, up: UpstreamRegistry, peer: UpstreamRegistry, images: Any) -> float:
    started = time.monotonic()
    for name, ref, kept in images:
        src, dst = f"docker://{up.host}/{name}", f"docker://{peer.host}/{name}"
        if not kept:  # by digest, as the state names it (the upstream's tags vary)
            skopeo.copy(f"{src}@{ref.digest}", f"{dst}:v1")
            continue
        # docker-registry refuses an index whose children it lacks: all platforms go
        skopeo.copy(f"{src}@{ref.digest}", f"{dst}:v1", "--preserve-digests", all_images=True)
    return time.monotonic() - started


async def main(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="bench-replication-", dir=args.workdir))
    skopeo = Skopeo(root / "skopeo")
    layout = root / "layout"
    size = args.layer_mib * MIB
    t0 = time.monotonic()
    app = build_image(layout, "app:v1", layers=6, layer_size=size, seed="s", compress=False)
    tool = build_image(layout, "tool:v1", layers=4, layer_size=size, seed="s", compress=False)
    multi = build_index(
        layout, "multi:v1", PLATFORMS, layers=2, layer_size=size, seed="m", compress=False
    )
    # each cap replicates about --cap-seconds worth of bytes, so that the fixed cost of a
    # replication (manifests, the last fsync) weighs the same at every rate
    capped_at = {
        mb: build_image(
            layout,
            f"capped{n}:v1",
            layers=2,
            layer_size=max(MIB, int(mb * 10**6 * args.cap_seconds) // 2),
            seed=f"c{n}",
            compress=False,
        )
        for n, mb in enumerate(args.caps)
    }
    probe = build_image(
        layout, "probe:v1", layers=1, layer_size=args.probe_mib * MIB, seed="p", compress=False
    )
    kept = [c for c in multi.manifests if c.platform and "/".join(c.platform) in KEPT]
    needed = set(app.blob_digests) | set(tool.blob_digests)
    for child in kept:
        needed |= set(child.blob_digests)
    unique = blob_bytes(app, needed)
    upstream = UpstreamRegistry(root / "up").start()
    peer = UpstreamRegistry(root / "peer").start()
    results: dict[str, Any] = {"load_before": os.getloadavg()}
    try:
        names = {"app": "app", "tool": "tool", "probe": "probe"}
        names.update({f"capped{n}": "capped" for n in range(len(args.caps))})
        for name, repo in names.items():
            skopeo.copy(
                f"oci:{layout}:{name}:v1",
                f"docker://{upstream.host}/library/{repo}:{name}",
                "--preserve-digests",
            )
        skopeo.copy(
            f"oci:{layout}:multi:v1",
            f"docker://{upstream.host}/library/multi:v1",
            "--preserve-digests",
            all_images=True,
        )
        results["setup_seconds"] = time.monotonic() - t0
        rig = Rig(root, upstream)
        doc = state(
            descriptor("library/app", app),
            descriptor("library/tool", tool),
            descriptor("library/multi", multi, KEPT),
        )
        images = [
            ("library/app", app, []),
            ("library/tool", tool, []),
            ("library/multi", multi, kept),
        ]
        rounds: list[dict[str, Any]] = []
        for _ in range(args.rounds):  # interleaved: satellite, skopeo, satellite, ...
            sat = await rig.replicate(doc)
            before = upstream.blobs_served()[0]
            peer.stop()
            shutil.rmtree(peer.storage, ignore_errors=True)
            peer.start()
            seconds = await asyncio.to_thread(skopeo_copy, skopeo, upstream, peer, images)
            rounds.append(
                {
                    "satellite": sat,
                    "skopeo_seconds": seconds,
                    "skopeo_upstream_bytes": upstream.blobs_served()[0] - before,
                }
            )
        results["set"] = {"unique_needed_bytes": unique, "rounds": rounds}
        caps = []
        for mb, capped in capped_at.items():
            capped_bytes = blob_bytes(capped, set(capped.blob_digests))
            doc = state(descriptor("library/capped", capped))
            run = await rig.replicate(doc, cap=int(mb * 10**6))
            caps.append(
                {
                    "cap_mb_s": mb,
                    **run,
                    "bytes": capped_bytes,
                    "achieved_mb_s": capped_bytes / run["seconds"] / 1e6,
                    "load": os.getloadavg(),
                }
            )
        results["caps"] = caps
        probe_digest = Digest.parse(probe.layer_digests[0])
        cap = int(args.caps[0] * 10**6)
        capped_doc = state(descriptor("library/capped", capped_at[args.caps[0]]))
        idle = await rig.replicate(state(), cap=cap, probe=probe_digest)
        busy = await rig.replicate(capped_doc, cap=cap, probe=probe_digest, delay=1.0)
        results["client_pull"] = {
            "cap_mb_s": args.caps[0],
            "probe_bytes": blob_bytes(probe, {str(probe_digest)}),
            "idle_seconds": idle["probe_seconds"],
            "during_replication_seconds": busy["probe_seconds"],
        }
    finally:
        upstream.stop()
        peer.stop()
        results["load_after"] = os.getloadavg()
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    return results


def report(r: dict[str, Any]) -> str:
    unique = r["set"]["unique_needed_bytes"]
    lines = [
        f"load average before {r['load_before']}, after {r['load_after']}",
        f"unique bytes the state needs: {unique / 1e6:.1f} MB",
        "",
        "| round | satellite s | upstream/unique | skopeo s | skopeo upstream/unique |",
        "|---|---|---|---|---|",
    ]
    for n, row in enumerate(r["set"]["rounds"], 1):
        sat = row["satellite"]
        lines.append(
            f"| {n} | {sat['seconds']:.1f} | {sat['upstream_bytes'] / unique:.4f} |"
            f" {row['skopeo_seconds']:.1f} | {row['skopeo_upstream_bytes'] / unique:.4f} |"
        )
    lines += [
        "",
        "| cap MB/s | MB replicated | seconds | achieved MB/s | deviation"
        " | while transferring MB/s | deviation | load after |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in r["caps"]:
        dev = (c["achieved_mb_s"] / c["cap_mb_s"] - 1) * 100
        paid = (c["paid_mb_s"] / c["cap_mb_s"] - 1) * 100
        lines.append(
            f"| {c['cap_mb_s']} | {c['bytes'] / 1e6:.0f} | {c['seconds']:.1f} "
            f"| {c['achieved_mb_s']:.2f} | {dev:+.1f}% | {c['paid_mb_s']:.2f} | {paid:+.1f}%"
            f" | {c['load'][0]:.2f} |"
        )
    p = r["client_pull"]
    lines += [
        "",
        f"client pull of {p['probe_bytes'] / 1e6:.1f} MB at {p['cap_mb_s']} MB/s cap:"
        f" {p['idle_seconds']:.2f} s idle, {p['during_replication_seconds']:.2f} s during"
        " a capped replication",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layer-mib", type=int, default=150, help="size of each layer, MiB")
    parser.add_argument(
        "--cap-seconds", type=float, default=20.0, help="each capped run lasts about this long"
    )
    parser.add_argument("--probe-mib", type=int, default=8, help="blob a client pulls")
    parser.add_argument("--caps", type=float, nargs="+", default=[10.0, 50.0], help="MB/s")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds")
    parser.add_argument("--workdir", type=Path, help="keep the temp dir under this one")
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    ns = parser.parse_args()
    out = asyncio.run(main(ns))
    if ns.json:
        ns.json.write_text(json.dumps(out, indent=2))
    print(report(out))
