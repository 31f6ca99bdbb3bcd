"""The fleet dashboard: server-rendered HTML, no scripts, no build step.

Operators sign in with their API token as the password of HTTP Basic auth (any user
name), so a browser prompts for it; the pages are the same data as ``/api/v1/status``.
Every value is escaped with :func:`html.escape`.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

from starlette.responses import HTMLResponse, Response

from groundcontrol.api import Ctx, Endpoint, fleet_items, iso, satellite_json
from groundcontrol.contract import Envelope, StateDocument

STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;color:#222}
table{border-collapse:collapse;width:100%}
th,td{border-bottom:1px solid #ddd;padding:.35rem .6rem;text-align:left}
.status{font-weight:600;padding:.1rem .5rem;border-radius:.6rem}
.status-online{background:#d8f5d8}.status-behind{background:#fff2c2}
.status-stale{background:#ffe1c2}.status-pending{background:#e6e6e6}
.status-offline,.status-failing,.status-revoked{background:#ffd0d0}
code{font-size:.85em}
"""


def _page(title: str, body: str) -> HTMLResponse:
    return HTMLResponse(
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)} · Ground Control</title><style>{STYLE}</style></head>"
        f'<body><header><a href="/dashboard">Ground Control</a></header>{body}</body></html>',
        headers={
            "Cache-Control": "no-store",
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
            "X-Frame-Options": "DENY",
        },
    )


def _status(value: str) -> str:
    return f'<span class="status status-{escape(value)}">{escape(value)}</span>'


def _opt(value: Any) -> str:
    return "—" if value is None else escape(str(value))


async def fleet(ctx: Ctx) -> Response:
    items, counts = await fleet_items(ctx)
    summary = " ".join(
        f'<li data-status="{escape(k)}">{_status(k)} <span class="count">{v}</span></li>'
        for k, v in sorted(counts.items())
    )
    rows = []
    for item in items:
        name = escape(item["name"])
        failing = "<br>".join(f"<code>{escape(f)}</code>" for f in item["failing_images"])
        rows.append(
            f'<tr data-satellite="{name}" data-status="{escape(item["status"])}">'
            f'<td class="name"><a href="/dashboard/satellites/{name}">{name}</a></td>'
            f'<td class="status">{_status(item["status"])}</td>'
            f'<td class="last-seen">{_opt(item["last_seen"])}</td>'
            f'<td class="applied">{_opt(item["applied_version"])}</td>'
            f'<td class="published">{item["published_version"]}</td>'
            f'<td class="failing">{failing or "—"}</td>'
            "</tr>"
        )
    body = (
        f'<h1>Fleet</h1><ul id="counts">{summary}</ul>'
        f'<p id="total">{len(items)} satellite(s)</p>'
        '<table id="satellites"><thead><tr><th>Satellite</th><th>Status</th><th>Last seen</th>'
        "<th>Applied</th><th>Published</th><th>Failing images</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )
    return _page("Fleet", body)


async def satellite_page(ctx: Ctx) -> Response:
    name = ctx.param("name")
    async with ctx.services.store.transaction() as q:
        sat = await q.satellite(name)
        latest = await q.latest_state(name)
        reports = await q.checkins(name, 20)
    item = satellite_json(ctx.services, sat, ctx.now)
    images_html = "<p>No state published.</p>"
    if latest is not None:
        data = latest["envelope"].encode()
        doc = StateDocument.from_dict(json.loads(Envelope.from_json(data, len(data)).payload))
        image_rows = "".join(
            f"<tr><td>{escape(i.repository)}</td><td>{_opt(i.tag)}</td>"
            f"<td><code>{escape(i.digest)}</code></td>"
            f"<td>{escape(', '.join(i.platforms) or 'all')}</td></tr>"
            for i in doc.images
        )
        images_html = (
            f"<p>State version {doc.version}, expires {_opt(iso(doc.expires.timestamp()))}</p>"
            '<table id="images"><thead><tr><th>Repository</th><th>Tag</th><th>Digest</th>'
            f"<th>Platforms</th></tr></thead><tbody>{image_rows}</tbody></table>"
        )
    report_rows = "".join(
        f"<tr><td>{r['seq']}</td><td>{_opt(iso(r['received_at']))}</td><td>{r['state_version']}</td>"
        f"<td>{len(json.loads(r['report']).get('errors', []))}</td></tr>"
        for r in reports
    )
    failing = "".join(f"<li><code>{escape(f)}</code></li>" for f in item["failing_images"])
    fields = [
        ("Status", _status(item["status"])),
        ("Connectivity", escape(item["connectivity"])),
        ("Last seen", _opt(item["last_seen"])),
        ("Applied version", _opt(item["applied_version"])),
        ("Published version", str(item["published_version"])),
        ("Groups", escape(", ".join(item["groups"])) or "—"),
        ("Labels", escape(", ".join(f"{k}={v}" for k, v in item["labels"].items())) or "—"),
        ("Device key", _opt(item["keyid"])),
        ("Cache", f"{_opt(item['cache_bytes_used'])} / {_opt(item['cache_bytes_max'])} bytes"),
    ]
    dl = "".join(
        f'<dt>{escape(k)}</dt><dd data-field="{escape(k.lower().replace(" ", "-"))}">{v}</dd>'
        for k, v in fields
    )
    body = (
        f'<h1 id="satellite" data-satellite="{escape(name)}">{escape(name)}</h1><dl>{dl}</dl>'
        f'<h2>Failing images</h2><ul id="failing">{failing or "<li>none</li>"}</ul>'
        f"<h2>Images</h2>{images_html}"
        '<h2>Recent check-ins</h2><table id="checkins"><thead><tr><th>Seq</th><th>Received</th>'
        f"<th>State version</th><th>Errors</th></tr></thead><tbody>{report_rows}</tbody></table>"
    )
    return _page(name, body)


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("GET", "/dashboard", fleet, "operator", "Fleet dashboard (HTML)"),
    Endpoint(
        "GET", "/dashboard/satellites/{name}", satellite_page, "operator", "Satellite page (HTML)"
    ),
)
