"""`satellite status`: from the running daemon, else from the data dir alone."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, TextIO

from appliance.admin import AdminUnavailable, call
from appliance.fleet import offline_status
from appliance.fleetdb import FleetDB
from appliance.identity import IdentityError, load_identity
from groundcontrol.contract import ContractError, TrustedState
from registry_proxy.progress import bar, eta


async def read_status(data_dir: Path) -> dict[str, Any]:
    try:
        return call(data_dir, "GET", "/status")
    except AdminUnavailable:
        pass
    try:
        identity = load_identity(data_dir)
    except IdentityError as exc:
        return {"running": False, "registered": False, "error": str(exc)}
    if identity is None:
        return {"running": False, "registered": False, "data_dir": str(data_dir)}
    async with FleetDB(identity.db_path) as db:
        stored = await db.load_trust()
        try:
            trust = TrustedState.load(
                identity.satellite,
                stored.root_chain,
                stored.state_envelope,
                stored.highest_version,
            )
        except ContractError as exc:
            return {"running": False, "registered": True, "error": f"trust data: {exc}"}
        data = await offline_status(identity, db, trust, time.time())
    return {**data, "registered": True}


def _yes_no(value: object) -> str:
    if value is None:
        return "unknown"
    return "yes" if value else "no"


def render_status(data: dict[str, Any]) -> str:
    """Plain text for a person; `--json` has every field."""
    lines: list[str] = []
    if not data.get("registered"):
        lines.append("not registered with Ground Control (satellite register --help)")
        if data.get("error"):
            lines.append(f"error: {data['error']}")
        lines.append(f"daemon running: {_yes_no(data.get('running'))}")
        return "\n".join(lines)
    gc = data.get("groundcontrol") or {}
    lines.append(f"satellite:      {data.get('satellite')}")
    lines.append(f"daemon running: {_yes_no(data.get('running'))}")
    lines.append(f"ground control: {gc.get('url')}")
    if data.get("running"):
        reachable = _yes_no(gc.get("reachable"))
        lines.append(
            f"  reachable:    {reachable} (last contact {gc.get('last_contact') or 'never'})"
        )
        if gc.get("unreachable_since"):
            lines.append(f"  unreachable since {gc['unreachable_since']}: {gc.get('last_error')}")
        lines.append(f"  long-poll:    {_yes_no(gc.get('long_poll'))}")
    trust = data.get("trust") or {}
    lines.append(
        f"trust root:     version {trust.get('root_version')} (expires {trust.get('root_expires')})"
    )
    state = data.get("state")
    if state is None:
        lines.append("state:          none yet")
    else:
        flag = "  ** EXPIRED: still served, refresh needed **" if state.get("expired") else ""
        lines.append(
            f"state:          version {state['version']}, {state['images']} image(s),"
            f" issued {state['issued_at']}, expires {state['expires']}{flag}"
        )
    refusal = data.get("last_refusal")
    if refusal:
        lines.append(
            f"last refused:   {refusal['at']} from {refusal['source']}: {refusal['reason']}:"
            f" {refusal['message']}"
        )
    images = data.get("images") or {}
    counts = images.get("by_status") or {}
    if counts:
        lines.append(
            "images:         " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        )
    replication = data.get("replication")
    if replication:
        cap = replication.get("bandwidth_bytes_per_second") or 0
        lines.append(
            f"replication:    {'running' if replication.get('running') else 'idle'},"
            f" {replication.get('passes')} pass(es), {replication.get('blobs_fetched')} blob(s)"
            f" / {replication.get('bytes_fetched')} bytes fetched,"
            f" cap {f'{cap} bytes/s' if cap else 'none'}"
        )
    outbox = data.get("outbox") or {}
    lines.append(
        f"outbox:         {outbox.get('depth')} check-in(s) queued, {outbox.get('acked')} acked,"
        f" {outbox.get('dropped_heartbeats', 0) + outbox.get('dropped_events', 0)} dropped"
    )
    store = data.get("store")
    if store:
        lines.append(
            f"store:          {store['used_bytes']} of {store['max_bytes'] or 'unlimited'} bytes"
        )
    config = data.get("config") or {}
    for key, item in sorted(config.items()):
        if key == "upstreams":
            for up in item["value"]:
                default = " (default)" if up["default"] else ""
                lines.append(
                    f"upstream:       {up['name']} = {up['url']}{default} [{up['source']}]"
                )
            continue
        lines.append(f"{key + ':':<16}{item['value']} [{item['source']}]")
    return "\n".join(lines)


def _settled(data: dict[str, Any]) -> bool:
    images = (data.get("images") or {}).get("list") or []
    running = (data.get("replication") or {}).get("running")
    return not running and all(i.get("status") not in ("missing", "replicating") for i in images)


def progress_line(data: dict[str, Any], rate: float) -> str:
    """images present/total, bytes of this pass, rate and ETA: the live line of sync."""
    images = (data.get("images") or {}).get("list") or []
    present = sum(1 for i in images if i.get("status") == "present")
    failed = sum(1 for i in images if i.get("status") == "failed")
    rep = data.get("replication") or {}
    done, needed = rep.get("pass_bytes_done") or 0, rep.get("pass_bytes_needed") or 0
    drawn = bar(done, needed) if needed or _settled(data) else bar(0, 1)
    return (
        f"{drawn} {present}/{len(images)} images"
        f"{f', {failed} failed' if failed else ''}, {done / 1e6:.1f}/{needed / 1e6:.1f} MB,"
        f" {rate / 1e6:.1f} MB/s, ETA {eta(needed - done, rate)}"
    )


def summary_table(data: dict[str, Any]) -> str:
    images = (data.get("images") or {}).get("list") or []
    rows = [("IMAGE", "STATUS", "DETAIL")] + [
        (
            f"{i['repository']}@{i['digest'][:19]}",
            i["status"],
            (i.get("error") or "")[:100],
        )
        for i in images
    ]
    widths = [max(len(r[n]) for r in rows) for n in range(2)]
    return "\n".join(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]}".rstrip() for r in rows)


def follow_replication(
    data_dir: Path, *, timeout: float, interval: float = 0.5, out: TextIO | None = None
) -> int:
    """After ``satellite sync``: a live progress line until replication settles (no image
    missing, no pass running), then a table of every image. 0 when all are present."""
    out = out or sys.stderr
    live = out.isatty()
    deadline = time.monotonic() + timeout
    last_bytes: tuple[float, int] | None = None
    rate = 0.0
    printed = 0.0
    while True:
        data = call(data_dir, "GET", "/status")
        fetched = (data.get("replication") or {}).get("bytes_fetched") or 0
        now = time.monotonic()
        if last_bytes is not None and now > last_bytes[0]:
            sample = (fetched - last_bytes[1]) / (now - last_bytes[0])
            rate = sample if rate == 0 else 0.7 * rate + 0.3 * sample
        last_bytes = (now, fetched)
        settled = _settled(data)
        if live:
            out.write("\r" + progress_line(data, rate))
        elif settled or now - printed >= 5:
            out.write(progress_line(data, rate) + "\n")
            printed = now
        out.flush()
        if settled or now >= deadline:
            break
        time.sleep(interval)
    if live:
        out.write("\n")
    print(summary_table(data))
    if not settled:
        print(f"satellite: replication had not settled after {timeout:g}s", file=sys.stderr)
        return 1
    images = (data.get("images") or {}).get("list") or []
    return 0 if all(i.get("status") == "present" for i in images) else 1
