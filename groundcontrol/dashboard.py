"""The fleet dashboard: server-rendered HTML, no scripts, no build step.

Operators sign in at ``/dashboard/login`` by pasting an operator token; that opens a
server-side session (:mod:`groundcontrol.auth`) held in a cookie that is ``HttpOnly``,
``SameSite=Strict``, limited to ``Path=/dashboard`` and ``Secure`` when the request came
over TLS. Every form that changes state carries the session's CSRF token in a hidden
field and must come from a page of this server (``Origin``, else ``Referer``); the login
form, which has no session yet, is checked by its origin alone. Pages also answer an
operator token sent as ``Authorization: Bearer`` on GET, for scripts. The pages are the
same data as ``/api/v1/status``; every value is escaped with :func:`html.escape`.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from groundcontrol.api import (
    Ctx,
    Endpoint,
    fleet_items,
    iso,
    media_type,
    principal_of,
    satellite_json,
)
from groundcontrol.auth import (
    SESSION_COOKIE,
    Principal,
    Session,
    open_session,
    over_tls,
    same_origin,
    session_of,
)
from groundcontrol.contract import Envelope, StateDocument
from groundcontrol.errors import (
    BadRequest,
    Forbidden,
    PayloadTooLarge,
    Unauthorized,
    UnsupportedMediaType,
)
from groundcontrol.services import Services

FORM_TYPE = "application/x-www-form-urlencoded"
MAX_FORM_BYTES = 16 * 1024
LOGIN_PATH = "/dashboard/login"

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


def _page(
    title: str, body: str, session: Session | None = None, status_code: int = 200
) -> HTMLResponse:
    nav = ""
    if session is not None:
        nav = (
            f'<form id="logout" method="post" action="/dashboard/logout">'
            f'<input type="hidden" name="csrf" value="{escape(session.csrf)}">'
            f"<span>{escape(session.operator.name)}</span> "
            '<button type="submit">Sign out</button></form>'
        )
    return HTMLResponse(
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)} · Ground Control</title><style>{STYLE}</style></head>"
        f'<body><header><a href="/dashboard">Ground Control</a>{nav}</header>{body}</body></html>',
        status_code=status_code,
        headers={
            "Cache-Control": "no-store",
            "Content-Security-Policy": (
                "default-src 'none'; style-src 'unsafe-inline'; "
                "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
            ),
            "X-Frame-Options": "DENY",
            "Referrer-Policy": "same-origin",
        },
    )


# --- who is asking ---------------------------------------------------------------------


async def read_form(request: Request) -> dict[str, str]:
    """The urlencoded body of a dashboard form (capped); anything else is 415."""
    if media_type(request) != FORM_TYPE:
        raise UnsupportedMediaType(f"a dashboard form must be sent as {FORM_TYPE}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise PayloadTooLarge(f"form body exceeds {MAX_FORM_BYTES} bytes")
    try:
        pairs = parse_qsl(body.decode("ascii"), keep_blank_values=True, max_num_fields=10)
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("the form body is not valid", code="invalid_form") from None
    return dict(pairs)


async def caller(
    services: Services, request: Request, access: str, now: float
) -> tuple[Principal | None, Session | None]:
    """The principal and session of a dashboard request, checked for forgery; the form of
    a POST is left in ``request.state.form``.

    GET: an operator's Bearer token, else the session cookie. POST to the login form:
    same origin only. Any other POST: the session cookie, same origin, and the session's
    CSRF token in the form; a Bearer token does not count (scripts use the API)."""
    if request.method in ("GET", "HEAD"):
        if "authorization" in request.headers:
            return await principal_of(services, request, now), None
        async with services.store.transaction() as q:
            session = await session_of(q, request, int(now))
        return (session.operator if session else None), session
    if not same_origin(request):
        raise Forbidden("a dashboard form must come from this server's pages", code="csrf_failed")
    form = request.state.form = await read_form(request)
    if access == "login":
        return None, None
    async with services.store.transaction() as q:
        session = await session_of(q, request, int(now))
    if session is None:
        raise Unauthorized("sign in at /dashboard/login")
    if not session.csrf_matches(form.get("csrf", "")):
        raise Forbidden("the form's CSRF token does not match the session", code="csrf_failed")
    return session.operator, session


# --- login and logout ------------------------------------------------------------------


def _login_page(error: str = "", status_code: int = 200) -> HTMLResponse:
    message = f'<p id="error" role="alert">{escape(error)}</p>' if error else ""
    body = (
        f"<h1>Sign in</h1>{message}"
        f'<form id="login" method="post" action="{LOGIN_PATH}">'
        '<label>Operator token <input type="password" name="token" '
        'autocomplete="current-password" required></label> '
        '<button type="submit">Sign in</button></form>'
        "<p>Create a token with <code>groundcontrol admin token create NAME</code>.</p>"
    )
    return _page("Sign in", body, status_code=status_code)


async def login_form(ctx: Ctx) -> Response:
    return _login_page()


async def login(ctx: Ctx) -> Response:
    token = ctx.request.state.form.get("token", "").strip()
    services = ctx.services
    async with services.store.transaction() as q:
        opened = await open_session(q, token, int(ctx.now), services.config.dashboard_session_ttl)
    if opened is None:
        page = _login_page("That is not a valid operator token.", 401)
        page.headers["WWW-Authenticate"] = 'Bearer realm="Ground Control"'
        return page
    cookie, _session = opened
    response = RedirectResponse("/dashboard", status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        cookie,
        max_age=services.config.dashboard_session_ttl,
        path="/dashboard",
        secure=over_tls(ctx.request),
        httponly=True,
        samesite="strict",
    )
    return response


async def logout(ctx: Ctx) -> Response:
    assert ctx.session is not None  # caller() admits no other POST
    async with ctx.services.store.transaction() as q:
        await q.delete_dashboard_session(ctx.session.id_hash)
    response = RedirectResponse(LOGIN_PATH, status_code=303)
    response.delete_cookie(
        SESSION_COOKIE,
        path="/dashboard",
        secure=over_tls(ctx.request),
        httponly=True,
        samesite="strict",
    )
    return response


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
    return _page("Fleet", body, ctx.session)


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
    return _page(name, body, ctx.session)


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("GET", "/dashboard", fleet, "dashboard", "Fleet dashboard (HTML)"),
    Endpoint(
        "GET", "/dashboard/satellites/{name}", satellite_page, "dashboard", "Satellite page (HTML)"
    ),
    Endpoint("GET", LOGIN_PATH, login_form, "login", "Dashboard login form (HTML)"),
    Endpoint("POST", LOGIN_PATH, login, "login", "Open a dashboard session with an operator token"),
    Endpoint("POST", "/dashboard/logout", logout, "dashboard", "End the dashboard session"),
)
