"""The fleet dashboard: server-rendered HTML, no scripts, no build step.

Operators sign in at ``/dashboard/login`` by pasting an operator token; that opens a
server-side session (:mod:`groundcontrol.auth`) held in a cookie that is ``HttpOnly``,
``SameSite=Strict``, limited to ``Path=/dashboard`` and ``Secure`` when the request came
over TLS. Every form that changes state carries the session's CSRF token in a hidden
field and must come from a page of this server (``Origin``, else ``Referer``); the login
form, which has no session yet, is checked by its origin alone. Pages also answer an
operator token sent as ``Authorization: Bearer`` on GET, for scripts.

Each page renders the data of one :mod:`groundcontrol.fleetview` function, the same JSON
that its twin under ``/api/v1/dashboard`` serves; charts are inline SVG from
:mod:`groundcontrol.charts`, and every value is escaped with :func:`html.escape`. The
forms run :mod:`groundcontrol.actions`, which leave audit entries.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from html import escape
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from groundcontrol import actions, charts, fleetview
from groundcontrol.api.base import Ctx, Endpoint, media_type, principal_of
from groundcontrol.auth import (
    SESSION_COOKIE,
    Principal,
    Session,
    open_session,
    over_tls,
    same_origin,
    session_of,
)
from groundcontrol.errors import (
    BadRequest,
    Forbidden,
    GroundControlError,
    PayloadTooLarge,
    Unauthorized,
    UnsupportedMediaType,
)
from groundcontrol.services import Services
from registry_proxy.units import format_bytes

FORM_TYPE = "application/x-www-form-urlencoded"
MAX_FORM_BYTES = 16 * 1024
LOGIN_PATH = "/dashboard/login"
REFRESH_CHOICES = ("15", "30", "60", "300")
STRIP_KINDS = ("online", "late", "offline", "unknown")

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem 2rem;color:#222;max-width:80rem}
header{display:flex;gap:1.5rem;align-items:center;border-bottom:1px solid #ccc;padding-bottom:.5rem}
header form{margin-left:auto}
table{border-collapse:collapse;width:100%}
th,td{border-bottom:1px solid #ddd;padding:.3rem .6rem;text-align:left;vertical-align:top}
section{margin:1.5rem 0}
.status{font-weight:600;padding:.1rem .5rem;border-radius:.6rem}
.status-online,.status-current,.status-present{background:#d8f5d8}
.status-behind,.status-stale,.status-unreported{background:#fff2c2}
.status-pending,.status-missing{background:#e6e6e6}
.status-offline,.status-failing,.status-revoked,.status-failed{background:#ffd0d0}
.kind-online,.kind-current{fill:#3a9a3a;background:#3a9a3a}
.kind-behind,.kind-late{fill:#e0b020;background:#e0b020}
.kind-stale{fill:#e07a20;background:#e07a20}
.kind-failing,.kind-warn{fill:#d03030;background:#d03030}
.kind-offline{fill:#7a2a2a;background:#7a2a2a}
.kind-pending,.kind-unknown,.kind-free,.kind-empty{fill:#ddd;background:#ddd}
.kind-revoked{fill:#555;background:#555}
.kind-used{fill:#3a6ad0;background:#3a6ad0}
.tick{stroke:#888}svg text{font-size:10px;fill:#555}
.legend{list-style:none;padding:0;display:flex;gap:1rem;flex-wrap:wrap}
.swatch{display:inline-block;width:.8rem;height:.8rem;margin-right:.3rem}
.numbers span{margin-right:.4rem}
.actions{display:flex;gap:.6rem;align-items:center;margin:.6rem 0}
form.action{display:inline}
.danger{color:#a00}
#notice{background:#eef;padding:.5rem;border-left:4px solid #55a;word-break:break-all}
.expiry-soon{background:#fff2c2;padding:.3rem}.expiry-expired{background:#ffd0d0;padding:.3rem}
#cache[data-warning=true] p{color:#a00;font-weight:600}
.pager{margin:.6rem 0;display:flex;gap:1rem}
code{font-size:.85em}
dl{display:grid;grid-template-columns:max-content auto;gap:.25rem 1rem}dd{margin:0}
a[aria-current]{font-weight:700;text-decoration:none}
"""
CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def _page(
    title: str,
    body: str,
    session: Session | None = None,
    status_code: int = 200,
    refresh: int | None = None,
) -> HTMLResponse:
    nav = ""
    if session is not None:
        nav = (
            '<a href="/dashboard/audit">Audit log</a>'
            f'<form id="logout" method="post" action="/dashboard/logout">'
            f'<input type="hidden" name="csrf" value="{escape(session.csrf)}">'
            f"<span>{escape(session.operator.name)}</span> "
            '<button type="submit">Sign out</button></form>'
        )
    meta = f'<meta http-equiv="refresh" content="{refresh}">' if refresh else ""
    return HTMLResponse(
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">{meta}'
        f"<title>{escape(title)} · Ground Control</title><style>{STYLE}</style></head>"
        f'<body><header><a href="/dashboard">Ground Control</a>{nav}</header>{body}</body></html>',
        status_code=status_code,
        headers={
            "Cache-Control": "no-store",
            "Content-Security-Policy": CSP,
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


# --- pieces ------------------------------------------------------------------------------


def _status(value: str) -> str:
    return f'<span class="status status-{escape(value)}">{escape(value)}</span>'


def _opt(value: Any) -> str:
    return "—" if value is None else escape(str(value))


def _href(path: str, **params: Any) -> str:
    query = urlencode({k: v for k, v in params.items() if v not in (None, "")})
    return escape(f"{path}?{query}" if query else path)


def _refresh_of(ctx: Ctx) -> int | None:
    """``?refresh=SECONDS``: the page reloads itself (opt-in, a few fixed periods)."""
    raw = ctx.request.query_params.get("refresh", "")
    return int(raw) if raw in REFRESH_CHOICES else None


def _refresh_links(ctx: Ctx, **params: Any) -> str:
    current = _refresh_of(ctx)
    links = [
        f'<a href="{_href(ctx.request.url.path, **params, refresh=r)}"'
        + (' aria-current="true"' if current == int(r) else "")
        + f">{r} s</a>"
        for r in REFRESH_CHOICES
    ]
    off = f'<a href="{_href(ctx.request.url.path, **params)}">off</a>'
    return f'<p class="refresh">Refresh every: {off} {" ".join(links)}</p>'


def _csrf(ctx: Ctx) -> str:
    token = ctx.session.csrf if ctx.session is not None else ""
    return f'<input type="hidden" name="csrf" value="{escape(token)}">'


def _form(ctx: Ctx, form_id: str, action: str, label: str, fields: str = "") -> str:
    """A state-changing button; only a browser session can use it (a Bearer GET shows
    the page, but its forms carry no CSRF token and are refused)."""
    return (
        f'<form id="{escape(form_id)}" class="action" method="post" action="{escape(action)}">'
        f'{_csrf(ctx)}{fields}<button type="submit">{escape(label)}</button></form>'
    )


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {secs} s"
    return f"{secs} s"


def _bytes(n: int | None) -> str:
    if n is None:
        return "—"
    return format_bytes(n)


def _pager(path: str, page: int, pages: int, params: dict[str, Any]) -> str:
    links = [f'<span id="page">page {page} of {pages}</span>']
    if page > 1:
        href = _href(path, **params, page=page - 1)
        links.insert(0, f'<a id="prev" href="{href}">&lsaquo; previous</a>')
    if page < pages:
        href = _href(path, **params, page=page + 1)
        links.append(f'<a id="next" href="{href}">next &rsaquo;</a>')
    return f'<nav class="pager">{" ".join(links)}</nav>'


def _strip_legend() -> str:
    meaning = {
        "online": "online",
        "late": "alive, reports arrived late",
        "offline": "offline",
        "unknown": "no data",
    }
    return "".join(
        f'<li data-kind="{k}"><span class="swatch kind-{k}"></span>{escape(meaning[k])}</li>'
        for k in STRIP_KINDS
    )


def _legend(parts: list[tuple[str, int]], attr: str) -> str:
    return "".join(
        f'<li {attr}="{escape(k)}"><span class="swatch kind-{escape(k)}"></span>'
        f'{escape(k)} <span class="count">{v}</span></li>'
        for k, v in parts
    )


def _rollout(counts: dict[str, int], label: str) -> str:
    parts = [(p, counts.get(p, 0)) for p in fleetview.PROGRESS]
    bar = charts.stacked_bar(parts, label=label, width=360, height=16)
    numbers = " · ".join(f'<span class="{p}">{n} {p}</span>' for p, n in parts if n)
    return f'{bar}<div class="numbers">{numbers or "no members"}</div>'


def _satellite_row(item: dict[str, Any], cells: str) -> str:
    """A table row of a satellite: its name (a link to its page), its status, ``cells``."""
    name = escape(item["name"])
    return (
        f'<tr data-satellite="{name}" data-status="{escape(item["status"])}">'
        f'<td class="name"><a href="/dashboard/satellites/{quote(item["name"])}">{name}</a></td>'
        f'<td class="status">{_status(item["status"])}</td>{cells}</tr>'
    )


# --- the fleet ---------------------------------------------------------------------------


async def fleet(ctx: Ctx) -> Response:
    view = await fleetview.fleet_view(ctx.services, ctx.request.query_params, ctx.now)
    query = view["query"]
    counts = [(k, v) for k, v in view["counts"].items()]
    bar = charts.stacked_bar(counts, label="satellites by status", width=720)
    group_rows = "".join(
        f'<tr data-group="{escape(g["name"])}">'
        f'<td class="name"><a href="/dashboard/groups/{quote(g["name"])}">{escape(g["name"])}</a>'
        f"</td><td>{g['rollout']['members']}</td>"
        f'<td class="rollout">{_rollout(g["rollout"], "rollout of " + g["name"])}</td>'
        f'<td class="changed">{_opt(g["last_change"])}</td></tr>'
        for g in view["groups"]
    )
    groups_html = (
        '<table id="groups"><thead><tr><th>Group</th><th>Members</th>'
        "<th>Rollout of the latest publish</th><th>Last change</th></tr></thead>"
        f"<tbody>{group_rows}</tbody></table>"
        if group_rows
        else "<p>No groups yet.</p>"
    )
    status_options = "".join(
        f'<option value="{s}"{" selected" if query["status"] == s else ""}>{s}</option>'
        for s in ("", *view["counts"])
    )
    group_options = "".join(
        f'<option value="{escape(g)}"{" selected" if query["group"] == g else ""}>'
        f"{escape(g) or 'all groups'}</option>"
        for g in ("", *(g["name"] for g in view["groups"]))
    )
    sorts = ("name", "-name", "status", "-last_seen", "last_seen", "applied", "-applied")
    sort_options = "".join(
        f'<option value="{s}"{" selected" if query["sort"] == s else ""}>{s}</option>'
        for s in sorts
    )
    search = (
        '<form id="search" method="get" action="/dashboard">'
        f'<input type="search" name="q" value="{escape(query["q"])}" '
        'placeholder="name, label or key=value" aria-label="search"> '
        f'<select name="status" aria-label="status">{status_options}</select> '
        f'<select name="group" aria-label="group">{group_options}</select> '
        f'<select name="sort" aria-label="sort">{sort_options}</select> '
        '<button type="submit">Show</button></form>'
    )
    rows = []
    for item in view["satellites"]:
        labels = ", ".join(f"{k}={v}" for k, v in sorted(item["labels"].items()))
        cells = (
            f'<td class="groups">{escape(", ".join(item["groups"])) or "—"}</td>'
            f'<td class="labels">{escape(labels) or "—"}</td>'
            f'<td class="last-seen">{_opt(item["last_seen"])}</td>'
            f'<td class="applied">{_opt(item["applied_version"])}</td>'
            f'<td class="published">{item["published_version"]}</td>'
            f'<td class="failing">{item["failing_images"] or "—"}</td>'
        )
        rows.append(_satellite_row(item, cells))
    params = {k: v for k, v in query.items() if v}
    refresh = _refresh_of(ctx)
    pager = _pager("/dashboard", view["page"], view["pages"], {**params, "refresh": refresh})
    first = (view["page"] - 1) * view["page_size"] + 1
    last = first + len(view["satellites"]) - 1
    shown = f"{first}&ndash;{last}" if view["satellites"] else "none"
    body = (
        f"<h1>Fleet</h1>{_refresh_links(ctx, **params)}"
        f'<section><h2>Status</h2>{bar}<ul id="counts" class="legend">'
        f"{_legend(counts, 'data-status')}</ul>"
        f'<p id="fleet-total">{view["total"]} satellite(s) in the fleet</p></section>'
        f"<section><h2>Groups</h2>{groups_html}</section>"
        f"<section><h2>Satellites</h2>{search}"
        f'<p><span id="total">{view["matched"]} satellite(s)</span>, showing '
        f'<span id="range">{shown}</span></p>'
        '<table id="satellites"><thead><tr><th>Satellite</th><th>Status</th><th>Groups</th>'
        "<th>Labels</th><th>Last seen</th><th>Applied</th><th>Published</th>"
        "<th>Failing images</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
        f"{pager}</section>"
    )
    return _page("Fleet", body, ctx.session, refresh=refresh)


# --- a group -----------------------------------------------------------------------------


async def group_page(ctx: Ctx, notice: str = "") -> Response:
    name = ctx.param("name")
    view = await fleetview.group_view(ctx.services, name, ctx.now, ctx.request.query_params)
    images = "".join(
        f"<tr><td>{escape(i['repository'])}</td><td>{_opt(i['tag'])}</td>"
        f"<td><code>{_opt(i['digest'])}</code></td>"
        f"<td>{escape(', '.join(i['platforms']) or 'all')}</td></tr>"
        for i in view["images"]
    )
    members = "".join(
        _satellite_row(
            m,
            f'<td class="applied">{_opt(m["applied_version"])}</td>'
            f'<td class="published">{m["published_version"]}</td>'
            f'<td class="last-seen">{_opt(m["last_seen"])}</td>',
        )
        for m in view["members"]
    )
    history = "".join(
        f"<tr><td>{_opt(h['at'])}</td><td>{escape(h['change'])}</td>"
        f"<td>{escape(', '.join(h['images'])) or '—'}</td>"
        f'<td class="published">{h["published"]}</td><td>{_opt(h["versions"])}</td></tr>'
        for h in view["history"]
    )
    lines = "\n".join(
        i["reference"] + (f" {','.join(i['platforms'])}" if i["platforms"] else "")
        for i in view["images"]
    )
    publish = _form(
        ctx,
        "publish-group",
        f"/dashboard/groups/{quote(name)}/publish",
        "Publish",
        f"<label>Images, one per line (reference, then optional platforms)<br>"
        f'<textarea name="images" rows="4" cols="80">{escape(lines)}</textarea></label><br>',
    )
    body = (
        f'<h1 id="group" data-group="{escape(name)}">Group {escape(name)}</h1>'
        f"{_notice(notice)}{_refresh_links(ctx)}"
        f"<p>{escape(view['description'])}</p>"
        f'<section><h2>Rollout</h2><div id="rollout">'
        f"{_rollout(view['rollout'], 'rollout of ' + name)}</div></section>"
        '<section><h2>Images</h2><table id="images"><thead><tr><th>Repository</th><th>Tag</th>'
        f"<th>Digest</th><th>Platforms</th></tr></thead><tbody>{images}</tbody></table>"
        f"{publish}</section>"
        '<section><h2>Members</h2><table id="members"><thead><tr><th>Satellite</th>'
        "<th>Status</th><th>Applied</th><th>Published</th><th>Last seen</th></tr></thead>"
        f"<tbody>{members}</tbody></table>"
        f"{_pager(ctx.request.url.path, view['page'], view['pages'], {})}</section>"
        '<section><h2>History</h2><table id="history"><thead><tr><th>When</th><th>Change</th>'
        "<th>Images</th><th>States published</th><th>Versions</th></tr></thead>"
        f"<tbody>{history}</tbody></table></section>"
    )
    return _page(f"Group {name}", body, ctx.session, refresh=_refresh_of(ctx))


def _notice(text: str) -> str:
    return f'<p id="notice" role="status">{escape(text)}</p>' if text else ""


# --- a satellite -------------------------------------------------------------------------


async def satellite_page(ctx: Ctx, notice: str = "") -> Response:
    name = ctx.param("name")
    view = await fleetview.satellite_view(ctx.services, name, ctx.now, ctx.request.query_params)
    strip_view = view["strip"]
    window = strip_view["window"]
    segments = [(_ts(s["start"]), _ts(s["end"]), s["kind"]) for s in strip_view["segments"]]
    strip = charts.strip(
        segments,
        _ts(strip_view["from"]),
        _ts(strip_view["to"]),
        label=f"connectivity, last {window}",
        ticks=7 if window == "7d" else 6,
    )
    refresh = _refresh_of(ctx)
    windows = " ".join(
        f'<a href="{_href(ctx.request.url.path, window=w, refresh=refresh)}"'
        + (' aria-current="true"' if w == window else "")
        + f">{w}</a>"
        for w in fleetview.STRIP_WINDOWS
    )
    offline = "".join(
        f'<li data-start="{escape(s["start"])}" data-end="{escape(s["end"])}">'
        f"{escape(s['start'])} to {escape(s['end'])} ({_duration(s['seconds'])})</li>"
        for s in strip_view["offline"]
    )
    late = strip_view["late_reports"]
    state = view["state"]
    expiry_text = {
        "expired": "The state it serves has expired.",
        "soon": f"The state it serves expires at {state['applied_expires_at']}.",
        "ok": f"The state it serves expires at {state['applied_expires_at']}.",
        "unknown": "Expiry of the state it serves is not known (no applied state kept).",
    }[state["warning"]]
    cache = view["cache"]
    outbox = view["outbox"]
    versions = "".join(
        f'<tr data-version="{v["version"]}"><td>{v["version"]}</td>'
        f"<td>{_opt(v['published_at'])}</td>"
        f"<td>{_opt(v['applied_at'])}</td><td>{_opt(v['expires_at'])}</td></tr>"
        for v in view["versions"]
    )
    images = "".join(
        f'<tr data-status="{escape(i["status"])}"><td>{escape(i["repository"])}</td>'
        f"<td>{_opt(i['tag'])}</td><td><code>{escape(i['digest'])}</code></td>"
        f"<td>{escape(', '.join(i['platforms']) or 'all')}</td>"
        f'<td class="status">{_status(i["status"])}</td>'
        f'<td class="error">{_opt(i["error"])}</td></tr>'
        for i in view["images"]
    )
    report_rows = "".join(
        f"<tr><td>{r['seq']}</td><td>{_opt(r['received_at'])}</td><td>{r['state_version']}</td>"
        f"<td>{r['errors']}</td></tr>"
        for r in view["checkins"]
    )
    failing = "".join(f"<li><code>{escape(f)}</code></li>" for f in view["failing_images"])
    fields = [
        ("Status", _status(view["status"])),
        ("Connectivity", escape(view["connectivity"])),
        ("Last seen", _opt(view["last_seen"])),
        ("Applied version", _opt(view["applied_version"])),
        ("Published version", str(view["published_version"])),
        (
            "Groups",
            ", ".join(
                f'<a href="/dashboard/groups/{quote(g)}">{escape(g)}</a>' for g in view["groups"]
            )
            or "—",
        ),
        ("Labels", escape(", ".join(f"{k}={v}" for k, v in view["labels"].items())) or "—"),
        ("Device key", _opt(view["keyid"])),
    ]
    dl = "".join(
        f'<dt>{escape(k)}</dt><dd data-field="{escape(k.lower().replace(" ", "-"))}">{v}</dd>'
        for k, v in fields
    )
    base = f"/dashboard/satellites/{quote(name)}"
    actions = (
        _form(ctx, "publish", f"{base}/publish", "Re-publish state")
        + _form(ctx, "join-token", f"{base}/join-token", "New join token")
        + _form(ctx, "rotate", f"{base}/rotate", "Rotate credentials")
        + f'<a id="revoke" class="danger" href="{base}/revoke">Revoke…</a>'
    )
    body = (
        f'<h1 id="satellite" data-satellite="{escape(name)}">{escape(name)}</h1>'
        f"{_notice(notice)}{_refresh_links(ctx, window=window)}"
        f'<div class="actions">{actions}</div><dl>{dl}</dl>'
        f"<section><h2>Connectivity, last {escape(window)}</h2>"
        f'<p class="windows">Window: {windows}</p><div id="strip">{strip}</div>'
        f'<ul class="legend">{_strip_legend()}</ul>'
        f'<p id="late">{late} report(s) arrived late (carried by an outbox or a bundle)</p>'
        f'<h3>Offline periods</h3><ul id="offline-periods">{offline or "<li>none</li>"}</ul>'
        "</section>"
        f'<section><h2>State</h2><p id="expiry" class="expiry-{escape(state["warning"])}">'
        f"{escape(expiry_text)}</p>"
        '<table id="versions"><thead><tr><th>Version</th><th>Published</th><th>First applied</th>'
        f"<th>Expires</th></tr></thead><tbody>{versions}</tbody></table></section>"
        '<section><h2>Images</h2><table id="images"><thead><tr><th>Repository</th><th>Tag</th>'
        "<th>Digest</th><th>Platforms</th><th>Status</th><th>Last error</th></tr></thead>"
        f'<tbody>{images}</tbody></table><h3>Failing</h3><ul id="failing">'
        f"{failing or '<li>none</li>'}</ul></section>"
        f'<section><h2>Cache</h2><div id="cache" data-warning="{str(cache["warning"]).lower()}">'
        f"{charts.usage_bar(cache['used'], cache['max'], label='cache used')}"
        f"<p>{_bytes(cache['used'])} of {_bytes(cache['max'])}</p></div>"
        f'<h2>Outbox</h2><p id="outbox" data-depth="{outbox["depth"]}">'
        f"{outbox['depth']} report(s) waiting when it last reported, "
        f"{outbox['dropped']} dropped</p></section>"
        '<section><h2>Recent check-ins</h2><table id="checkins"><thead><tr><th>Seq</th>'
        "<th>Received</th><th>State version</th><th>Errors</th></tr></thead>"
        f"<tbody>{report_rows}</tbody></table></section>"
    )
    return _page(name, body, ctx.session, refresh=refresh)


def _ts(value: str | None) -> float:
    assert value is not None
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


# --- actions -----------------------------------------------------------------------------


def _actor(ctx: Ctx) -> str:
    assert ctx.session is not None  # caller() admits no POST without a session
    return ctx.session.operator.name


Page = Callable[[Ctx, str], Awaitable[Response]]


async def _act(ctx: Ctx, run: Callable[[], Awaitable[str]], page: Page) -> Response:
    """Run an action and show the page again with what happened, or why it was refused.
    (No redirect: a join token is shown once, in this answer, never in a URL.)"""
    try:
        notice, status_code = await run(), 200
    except GroundControlError as exc:
        notice, status_code = f"Refused: {exc.message}", exc.status
    response = await page(ctx, notice)
    response.status_code = status_code
    return response


async def publish_satellite(ctx: Ctx) -> Response:
    name = ctx.param("name")

    async def run() -> str:
        return await actions.publish_satellite(ctx.services, _actor(ctx), name, ctx.now)

    return await _act(ctx, run, satellite_page)


async def join_token(ctx: Ctx) -> Response:
    name = ctx.param("name")

    async def run() -> str:
        token = await actions.new_join_token(ctx.services, _actor(ctx), name, ctx.now)
        return (
            f"Join token for {name} (shown once, expires at {token['expires_at']}): "
            f"{token['token']}"
        )

    return await _act(ctx, run, satellite_page)


async def rotate(ctx: Ctx) -> Response:
    name = ctx.param("name")

    async def run() -> str:
        return await actions.rotate_credentials(ctx.services, _actor(ctx), name, ctx.now)

    return await _act(ctx, run, satellite_page)


async def revoke_confirm(ctx: Ctx, notice: str = "") -> Response:
    name = ctx.param("name")
    async with ctx.services.store.transaction() as q:
        await q.satellite(name)
    form = _form(
        ctx,
        "revoke-confirm",
        f"/dashboard/satellites/{quote(name)}/revoke",
        "Revoke",
        f"<label>Type <code>{escape(name)}</code> to confirm "
        '<input name="confirm" autocomplete="off" required></label> ',
    )
    body = (
        f"<h1>Revoke {escape(name)}?</h1>{_notice(notice)}"
        "<p>Its credential stops working at once, its join tokens die, and it gets no "
        "further state. It cannot be undone: the site would have to be created again.</p>"
        f'{form}<p><a href="/dashboard/satellites/{quote(name)}">Cancel</a></p>'
    )
    return _page(f"Revoke {name}", body, ctx.session)


async def revoke(ctx: Ctx) -> Response:
    name = ctx.param("name")
    confirmation = ctx.request.state.form.get("confirm", "")

    async def run() -> str:
        warning = await actions.revoke(ctx.services, _actor(ctx), name, confirmation, ctx.now)
        return f"{name} revoked" + (f" (Harbor robot not deleted: {warning})" if warning else "")

    if confirmation != name:
        return await _act(ctx, run, revoke_confirm)
    return await _act(ctx, run, satellite_page)


async def publish_group(ctx: Ctx) -> Response:
    name = ctx.param("name")
    images = ctx.request.state.form.get("images", "")

    async def run() -> str:
        return await actions.publish_group(ctx.services, _actor(ctx), name, images, ctx.now)

    return await _act(ctx, run, group_page)


# --- the audit log -----------------------------------------------------------------------


async def audit_page(ctx: Ctx) -> Response:
    view = await fleetview.audit_view(ctx.services, ctx.request.query_params)
    rows = "".join(
        f'<tr data-action="{escape(e["action"])}"><td class="at">{_opt(e["at"])}</td>'
        f'<td class="actor">{escape(e["actor"])}</td><td class="action">{escape(e["action"])}</td>'
        f'<td class="target">{escape(e["target"])}</td>'
        f'<td class="detail">{escape(e["detail"])}</td></tr>'
        for e in view["entries"]
    )
    pager = _pager("/dashboard/audit", view["page"], view["pages"], {})
    body = (
        f'<h1>Audit log</h1><p id="total">{view["total"]} entries</p>'
        '<table id="audit"><thead><tr><th>When</th><th>Who</th><th>What</th><th>On</th>'
        f"<th>Detail</th></tr></thead><tbody>{rows}</tbody></table>"
        f"{pager}"
    )
    return _page("Audit log", body, ctx.session)


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("GET", "/dashboard", fleet, "dashboard", "Fleet dashboard (HTML)"),
    Endpoint("GET", "/dashboard/audit", audit_page, "dashboard", "Audit log (HTML)"),
    Endpoint("GET", "/dashboard/groups/{name}", group_page, "dashboard", "Group page (HTML)"),
    Endpoint(
        "POST",
        "/dashboard/groups/{name}/publish",
        publish_group,
        "dashboard",
        "Set a group's images and publish them (form)",
    ),
    Endpoint(
        "GET", "/dashboard/satellites/{name}", satellite_page, "dashboard", "Satellite page (HTML)"
    ),
    Endpoint(
        "POST",
        "/dashboard/satellites/{name}/publish",
        publish_satellite,
        "dashboard",
        "Re-publish a satellite's state (form)",
    ),
    Endpoint(
        "POST",
        "/dashboard/satellites/{name}/join-token",
        join_token,
        "dashboard",
        "Issue a join token (form)",
    ),
    Endpoint(
        "POST",
        "/dashboard/satellites/{name}/rotate",
        rotate,
        "dashboard",
        "Rotate the satellite's Harbor robot (form)",
    ),
    Endpoint(
        "GET",
        "/dashboard/satellites/{name}/revoke",
        revoke_confirm,
        "dashboard",
        "Confirm a revocation (HTML)",
    ),
    Endpoint(
        "POST",
        "/dashboard/satellites/{name}/revoke",
        revoke,
        "dashboard",
        "Revoke a satellite (form, with the typed name)",
    ),
    Endpoint("GET", LOGIN_PATH, login_form, "login", "Dashboard login form (HTML)"),
    Endpoint("POST", LOGIN_PATH, login, "login", "Open a dashboard session with an operator token"),
    Endpoint("POST", "/dashboard/logout", logout, "dashboard", "End the dashboard session"),
)
