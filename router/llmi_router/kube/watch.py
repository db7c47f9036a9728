"""List, then watch, one collection forever: resume from the last resourceVersion when a watch
ends, list again on 410 Gone or after an error (a successful list is what proves the API server
answers again), back off on errors. The health of the watch is what the router's /readyz reports."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import ClientError

from llmi_router.kube.client import ApiException, KubeClient, Resource

log = logging.getLogger("llmi.router.kube")
MAX_BACKOFF_S = 30.0


@dataclass
class WatchHealth:
    """Owned by one ``watch_forever`` task; read by /readyz and /v1/health."""

    synced: bool = False  # the first list arrived
    healthy: bool = False  # the last call succeeded
    last_error: str | None = None
    since: float = 0.0  # when ``healthy`` last changed (monotonic)


def reason(exc: BaseException, resource: Resource) -> str:
    if isinstance(exc, ApiException):
        text = f"{exc.status}: {_status_message(exc)}"
        if exc.status == 404:
            text += f" (is the {resource.what} API there? the LocalModel CRD installed?)"
        elif exc.status in (401, 403):
            text += f" (the router's service account needs {resource.rbac})"
        return text
    return f"{type(exc).__name__}: {exc}"


def _status_message(exc: ApiException) -> str:
    """The API server's own words (the Status body's message), else the HTTP reason."""
    try:
        message = json.loads(exc.body or "{}").get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message or exc.reason or "error")


async def watch_forever(
    kube: KubeClient,
    resource: Resource,
    replace_all: Callable[[list[dict[str, Any]]], None],
    apply: Callable[[str, dict[str, Any]], None],
    health: WatchHealth,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    version: str | None = None
    listed = False
    backoff = 0.5

    def mark(ok: bool, error: str | None = None) -> None:
        if ok != health.healthy:
            health.since = clock()
        health.healthy, health.last_error = ok, error if not ok else health.last_error

    while True:
        try:
            if not listed:
                items, version = await kube.list(resource)
                replace_all(items)
                listed = health.synced = True
                mark(True)
            started, events = clock(), 0
            async for event in kube.watch(resource, version):
                events += 1
                obj = event.get("object") or {}
                version = (obj.get("metadata") or {}).get("resourceVersion") or version
                if event["type"] != "BOOKMARK":
                    apply(event["type"], obj)
                mark(True)
                backoff = 0.5
            if events == 0 and clock() - started < 1:
                await asyncio.sleep(backoff)  # a server that ends watches at once must not spin us
                backoff = min(backoff * 2, MAX_BACKOFF_S)
        except asyncio.CancelledError:
            raise
        except ApiException as exc:
            if exc.status == 410:
                log.info("%s watch expired (%s); listing again", resource.what, exc.reason)
                listed = False
                continue
            listed, backoff = False, await _failed(exc, resource, mark, backoff)
        except (ClientError, TimeoutError, ValueError, OSError) as exc:
            listed, backoff = False, await _failed(exc, resource, mark, backoff)
        except Exception as exc:  # a bug must not end the watch for the router's lifetime
            log.exception("%s watch failed", resource.what)
            listed, backoff = False, await _failed(exc, resource, mark, backoff)


async def _failed(exc: BaseException, resource: Resource, mark: Callable[..., None], backoff: float) -> float:
    text = reason(exc, resource)
    mark(False, text)
    log.warning("%s watch: %s; retrying in %.1fs", resource.what, text, backoff)
    await asyncio.sleep(backoff)
    return min(backoff * 2, MAX_BACKOFF_S)
