"""`satellite status`: from the running daemon, else from the data dir alone."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from appliance.admin import AdminUnavailable, call
from appliance.fleet import offline_status
from appliance.fleetdb import FleetDB
from appliance.identity import IdentityError, load_identity
from groundcontrol.contract import ContractError, TrustedState
from registry_proxy.units import format_bytes


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
        lines.append("replication:    " + replication_line(replication))
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


def replication_line(progress: dict[str, Any], width: int = 24) -> str:
    """One line: a bar over the pass's bytes, the images by status, rate, ETA and the cap."""
    needed = progress.get("pass_bytes_needed") or 0
    fetched = progress.get("pass_bytes_fetched") or 0
    images = {k: n for k, n in (progress.get("images") or {}).items() if n}
    counts = ", ".join(f"{n} {status}" for status, n in sorted(images.items())) or "no images"
    cap = progress.get("bandwidth_bytes_per_second") or 0
    capped = f"; cap {cap} bytes/s" if cap else "; no cap"
    if not progress.get("running"):
        line = (
            f"idle ({counts}); last pass fetched {format_bytes(fetched)}"
            f" in {progress.get('pass_seconds', 0)} s"
        )
        retry = progress.get("next_retry_in")
        return line + (f"; next retry in {retry} s" if retry is not None else "") + capped
    done = min(1.0, fetched / needed) if needed else 0.0
    bar = "#" * round(done * width) + "-" * (width - round(done * width))
    eta = progress.get("eta_seconds")
    return (
        f"[{bar}] {format_bytes(fetched)} of {format_bytes(needed)} at"
        f" {format_bytes(progress.get('pass_bytes_per_second') or 0)}/s,"
        f" ETA {'?' if eta is None else f'{eta:.0f} s'} ({counts}){capped}"
    )
