"""The router app for Kubernetes: the shared gateway, with /readyz answering from the watches.

Why a wrapper: the gateway (llmi_router.app) serves /readyz for both shapes; on Kubernetes a router
whose LocalModel or EndpointSlice watch is failing must leave its Service, so its readiness comes
from the control plane's watch health.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from llmi.settings import Settings
from llmi_router.app import build_router_app
from llmi_router.kube.control import KubeControlPlane
from llmi_router.metrics import RouterMetrics


class WatchReadiness:
    """ASGI middleware: ``GET /readyz`` is 200 only while the control plane's watches are healthy."""

    def __init__(self, app: ASGIApp, ready: Callable[[], bool], detail: Callable[[], dict[str, Any]]) -> None:
        self.app = app
        self.ready = ready
        self.detail = detail

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/readyz":
            await self.app(scope, receive, send)
            return
        ok = self.ready()
        body = json.dumps({"status": "ok" if ok else "unavailable", "watches": self.detail()}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200 if ok else 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def build_kube_app(
    control: KubeControlPlane,
    settings: Settings,
    metrics: RouterMetrics,
    startup: Callable[[], Awaitable[None]] | None = None,
) -> FastAPI:
    app = build_router_app(control, settings, metrics, startup=startup or control.start)
    app.add_middleware(WatchReadiness, ready=control.ready, detail=lambda: control.health()["watches"])
    return app
