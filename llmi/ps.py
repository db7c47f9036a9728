"""`llmi ps`: the running server's models as a table, like `ollama ps` (or JSON, or live)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

import httpx

GIB = 1024**3


def human_bytes(n: int | None) -> str:
    if not n:
        return "-"
    return f"{n / GIB:.1f} GiB" if n >= GIB else f"{n / 1024**2:.0f} MiB"


def since(then: float | None, now: float) -> str:
    if not then:
        return "never"
    seconds = max(0, int(now - then))
    if seconds < 60:
        return f"{seconds}s ago"
    if seconds < 3600:
        return f"{seconds // 60}m ago"
    return f"{seconds // 3600}h ago"


def table(cards: Sequence[dict[str, Any]], now: float) -> str:
    """Loaded models first, then the rest; memory is measured where known (else ~estimate)."""
    order = {"ready": 0, "loading": 1, "unloading": 2, "parked": 3, "failed": 4, "available": 5}
    rows = [("NAME", "TYPE", "STATE", "PLACEMENT", "ENGINE", "MEMORY", "IN FLIGHT", "QUEUED", "LAST USED")]
    for card in sorted(cards, key=lambda c: (order.get(str(c.get("state")), 9), str(c.get("id")))):
        measured = card.get("memory_measured_bytes")
        memory = human_bytes(measured) if measured else "~" + human_bytes(card.get("memory_estimated_bytes"))
        state = str(card.get("state")) + (" (pinned)" if card.get("pinned") else "")
        rows.append(
            (
                str(card.get("id")),
                str(card.get("type") or "-"),
                state,
                str(card.get("placement") or "-"),
                str(card.get("engine") or "-"),
                memory,
                str(card.get("in_flight", 0)),
                str(card.get("queued", 0)),
                since(card.get("last_used"), now),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(r, widths, strict=True)).rstrip() for r in rows]
    errors = [f"  {c['id']}: {c['error']}" for c in cards if c.get("error")]
    return "\n".join(lines + (["", "errors:", *errors] if errors else []))


def fetch(client: httpx.Client, url: str) -> list[dict[str, Any]]:
    response = client.get(f"{url}/v1/models")
    response.raise_for_status()
    data: list[dict[str, Any]] = response.json()["data"]
    return data


def ps(url: str, as_json: bool, watch: bool, out: TextIO = sys.stdout) -> int:
    url = url.rstrip("/")
    try:
        with httpx.Client(timeout=httpx.Timeout(10, read=None if watch else 10)) as client:
            cards = fetch(client, url)
            print(json.dumps(cards, indent=2) if as_json else table(cards, time.time()), file=out, flush=True)
            if not watch:
                return 0
            with client.stream("GET", f"{url}/v1/events") as events:
                for line in events.iter_lines():
                    if not line.startswith("data: "):
                        continue
                    event = json.loads(line[6:])
                    if event.get("kind") == "snapshot":
                        continue
                    if as_json:
                        print(json.dumps(event), file=out, flush=True)
                    else:
                        stamp = time.strftime("%H:%M:%S", time.localtime(event.get("time", time.time())))
                        print(f"\n{stamp} {event['model']}: {event['kind']} {event.get('detail', '')}".rstrip(),
                              file=out)  # fmt: skip
                        print(table(fetch(client, url), time.time()), file=out, flush=True)
    except httpx.HTTPError as exc:
        print(f"llmi ps: cannot reach {url}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0
