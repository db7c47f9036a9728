"""The status page at `/`: every model, its state and memory, the budget, recent events.

One small HTML document served by llmi itself (no build step, no CDN). The server renders the
table, so the page reads without JavaScript; a few lines of script then follow `/v1/events`
and redraw it live, and offer load/unload buttons (the admin endpoints).
"""

from __future__ import annotations

import html
from importlib import resources
from typing import Any

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

from llmi import __version__
from llmi.protocol.models import ModelCard
from llmi_router.ports import ControlPlane

GIB = 1024**3

STATIC = resources.files("llmi_router") / "static"
STYLE = (STATIC / "page.css").read_text(encoding="utf-8")
SCRIPT = (STATIC / "page.js").read_text(encoding="utf-8")


def _fmt(n: int | None) -> str:
    if not n:
        return "-"
    return f"{n / GIB:.1f} GiB" if n >= GIB else f"{n / 2**20:.0f} MiB"


def _row(card: ModelCard) -> str:
    memory = _fmt(card.memory_measured_bytes) if card.memory_measured_bytes else "~" + _fmt(card.memory_estimated_bytes)
    cells = [
        card.id,
        card.type or "-",
        card.state + (" (pinned)" if card.pinned else ""),
        card.placement or "-",
        card.engine or "-",
        memory,
        str(card.in_flight),
        str(card.queued),
        card.error or "",
    ]
    tds = "".join(
        f'<td class="state {card.state}">{html.escape(c)}</td>' if i == 2 else f"<td>{html.escape(c)}</td>"
        for i, c in enumerate(cells)
    )
    return f'<tr data-model="{html.escape(card.id)}">{tds}<td></td></tr>'


def render(cards: list[ModelCard], health: dict[str, Any], empty_hint: str, locked: bool = False) -> str:
    """The page; ``locked`` (API keys on): no models until the reader gives a key to the script."""
    if locked:
        cards, health = [], {}
    total, planned = int(health.get("budget_bytes") or 0), int(health.get("planned_bytes") or 0)
    measured = sum(c.memory_measured_bytes or 0 for c in cards if c.state in ("ready", "unloading"))

    def width(n: int) -> str:
        return f"{min(100.0, 100 * n / total):.1f}%" if total else "0%"

    rows = "".join(_row(c) for c in cards)
    head = "".join(
        f"<th>{h}</th>"
        for h in ("model", "type", "state", "placement", "engine", "memory", "in flight", "queued", "error", "")
    )
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1"><title>llmi</title><style>{STYLE}</style></head>
<body><h1>llmi <small>{html.escape(__version__)}</small></h1>
<div id="budget">planned {_fmt(planned)} · measured {_fmt(measured)} · budget {_fmt(total)}</div>
<div class="bar" title="memory budget"><div id="planned" class="planned" style="width:{width(planned)}"></div>
<div id="measured" class="measured" style="width:{width(measured)}"></div></div>
<form id="key"{"" if locked else " hidden"}>This server needs an API key:
<input type="password" name="key" autocomplete="off" placeholder="API key"> <button>use</button></form>
<p id="empty" class="empty"{"" if not cards and not locked else " hidden"}>{html.escape(empty_hint)}</p>
<div class="wrap"><table><thead><tr>{head}</tr></thead><tbody id="models">{rows}</tbody></table></div>
<h2 style="font-size:1rem">Recent events</h2><ul id="events"></ul>
<script>{SCRIPT}</script></body></html>"""


def install_page(app: FastAPI, control: ControlPlane, empty_hint: str, locked: bool = False) -> None:
    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(render(control.describe(), control.health(), empty_hint, locked))
