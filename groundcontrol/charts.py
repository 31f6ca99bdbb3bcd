"""Charts as inline SVG, drawn on the server: no script, no asset, nothing the page's
``Content-Security-Policy`` has to allow. Colours come from the page's stylesheet by
class (``kind-<name>``); every shape says what it is in ``data-`` attributes and a
``<title>`` (the tooltip, and what tests and screen readers read). Every text is escaped.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from groundcontrol.api.base import iso


def _fmt(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".")


def stacked_bar(
    parts: Sequence[tuple[str, int]], *, label: str, width: int = 600, height: int = 22
) -> str:
    """One horizontal bar split by count: ``parts`` are (kind, count); zero counts draw
    nothing but are still listed in the ``data-`` attributes of the bar."""
    total = sum(n for _, n in parts)
    attrs = " ".join(f'data-{escape(kind)}="{n}"' for kind, n in parts)
    shapes = []
    x = 0.0
    for kind, n in parts:
        if n <= 0 or total <= 0:
            continue
        w = width * n / total
        shapes.append(
            f'<rect class="kind-{escape(kind)}" data-kind="{escape(kind)}" data-count="{n}" '
            f'x="{_fmt(x)}" y="0" width="{_fmt(w)}" height="{height}">'
            f"<title>{escape(kind)}: {n}</title></rect>"
        )
        x += w
    if total <= 0:
        shapes.append(f'<rect class="kind-empty" x="0" y="0" width="{width}" height="{height}"/>')
    return (
        f'<svg class="bar" role="img" aria-label="{escape(label)}" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" data-total="{total}" {attrs}>'
        f"<title>{escape(label)}</title>{''.join(shapes)}</svg>"
    )


def usage_bar(used: int | None, budget: int | None, *, label: str, width: int = 400) -> str:
    """How much of a budget is used, as a filled bar (``warn`` from 90 %)."""
    height = 18
    if used is None or not budget:
        return f'<p class="unknown">{escape(label)}: not reported</p>'
    share = min(1.0, used / budget)
    kind = "warn" if share >= 0.9 else "used"
    return (
        f'<svg class="bar" role="img" aria-label="{escape(label)}" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" data-used="{used}" '
        f'data-max="{budget}">'
        f'<rect class="kind-free" x="0" y="0" width="{width}" height="{height}"/>'
        f'<rect class="kind-{kind}" data-kind="{kind}" x="0" y="0" '
        f'width="{_fmt(width * share)}" height="{height}">'
        f"<title>{used} of {budget} bytes ({share:.0%})</title></rect></svg>"
    )


def strip(
    segments: Sequence[tuple[float, float, str]],
    start: float,
    end: float,
    *,
    label: str,
    width: int = 840,
    height: int = 26,
    ticks: int = 7,
) -> str:
    """A timeline from ``start`` to ``end``: (start, end, kind) segments side by side,
    with ``ticks`` ticks labelled by date (by time of day for a day or less)."""
    span = max(end - start, 1.0)
    shapes = []
    for s_start, s_end, kind in segments:
        x = width * (s_start - start) / span
        w = max(width * (s_end - s_start) / span, 0.5)  # a short outage stays visible
        shapes.append(
            f'<rect class="kind-{escape(kind)}" data-kind="{escape(kind)}" '
            f'data-start="{iso(s_start)}" data-end="{iso(s_end)}" x="{_fmt(x)}" y="0" '
            f'width="{_fmt(w)}" height="{height}">'
            f"<title>{escape(kind)}: {iso(s_start)} to {iso(s_end)}</title></rect>"
        )
    marks = []
    for i in range(ticks + 1):
        x = width * i / ticks
        when = iso(start + span * i / ticks) or ""
        text = when[:10] if span > 86400 else when[11:16]
        anchor = "start" if i == 0 else "end" if i == ticks else "middle"
        marks.append(
            f'<line class="tick" x1="{_fmt(x)}" y1="{height}" x2="{_fmt(x)}" y2="{height + 4}"/>'
            f'<text x="{_fmt(x)}" y="{height + 16}" text-anchor="{anchor}">'
            f"{escape(text)}</text>"
        )
    total = height + 20
    return (
        f'<svg class="strip" role="img" aria-label="{escape(label)}" width="{width}" '
        f'height="{total}" viewBox="0 0 {width} {total}">'
        f"<title>{escape(label)}</title>{''.join(shapes)}{''.join(marks)}</svg>"
    )
