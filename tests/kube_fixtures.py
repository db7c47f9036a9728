"""One emulated API server for the router's and the operator's tests (kmock plus tests/kube/realism.py).

``api_server()`` starts it with the built-in resources, the LocalModel CRD from crds/ and the test
namespace; ``ApiServer`` has the helpers tests use to play whichever side is not under test
(status writes, EndpointSlices, the request log). ``router_in_process`` runs a real router app
with a KubeControlPlane against it, on a real socket, in the test's event loop.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import kmock
import uvicorn
import yaml

from llmi.localmodel import (
    API_VERSION,
    GROUP,
    KIND,
    LABEL_NAME,
    PLURAL,
    PORT_NAME,
    RUNTIME_APP,
    SERVICE_NAME_LABEL,
    VERSION,
    child_name,
)
from llmi.settings import Settings
from llmi_router.kube.app import build_kube_app
from llmi_router.kube.client import KubeClient, connect
from llmi_router.kube.control import KubeControlPlane
from llmi_router.metrics import RouterMetrics
from tests.kube.realism import Emulator, kubeconfig
from tests.servers import free_port

NAMESPACE = "llmi-test"
CRD = Path(__file__).resolve().parents[1] / "crds" / "localmodels.llmi.dev.yaml"
LM = kmock.resource(f"{GROUP}/{VERSION}/{PLURAL}")
SLICES = kmock.resource("discovery.k8s.io/v1/endpointslices")
T = TypeVar("T")


@dataclass
class ApiServer:
    """The running emulator, its URL and namespace, and what tests do on it."""

    emulator: Emulator
    url: str
    namespace: str = NAMESPACE

    async def create(self, name: str, type_: str, replicas: int = 0, **spec: Any) -> None:
        body = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"name": name},
            "spec": {"path": name, "type": type_, "replicas": replicas, **spec},
        }
        await self.emulator.apply_create(LM, self.namespace, body)

    async def set_status(self, name: str, **status: Any) -> None:
        """What the operator does: a merge patch of /status (the watch sees MODIFIED)."""
        await self.emulator.apply_patch(LM, self.namespace, name, {"status": status}, subresource="status")

    async def set_endpoints(self, name: str, *urls: str, ready: bool = True) -> None:
        """What the EndpointSlice controller does for the model's Service: one slice, its endpoints."""
        ports = {int(u.rsplit(":", 1)[1]) for u in urls} or {8000}
        body = {
            "metadata": {
                "name": f"{child_name(name)}-abcde",
                "labels": {SERVICE_NAME_LABEL: child_name(name), LABEL_NAME: RUNTIME_APP},
            },
            "addressType": "IPv4",
            "ports": [{"name": PORT_NAME, "port": ports.pop(), "protocol": "TCP"}],
            "endpoints": [
                {"addresses": [u.split("//")[1].rsplit(":", 1)[0]], "conditions": {"ready": ready}} for u in urls
            ],
        }
        if self.emulator.find(SLICES, self.namespace, body["metadata"]["name"]) is None:
            await self.emulator.apply_create(SLICES, self.namespace, body)
        else:
            await self.emulator.apply_patch(SLICES, self.namespace, body["metadata"]["name"], body)

    async def set_ready(self, name: str, url: str, **status: Any) -> None:
        """Ready as the operator and the cluster report it: the status and a ready endpoint."""
        await self.set_endpoints(name, url)
        await self.set_status(name, phase="Ready", endpoint=f"http://{child_name(name)}.svc:8000", **status)

    async def patch(self, name: str, body: dict[str, Any]) -> None:
        await self.emulator.apply_patch(LM, self.namespace, name, body)

    async def delete(self, name: str) -> None:
        await self.emulator.apply_delete(LM, self.namespace, name)

    def obj(self, name: str) -> dict[str, Any]:
        return self.emulator.find(LM, self.namespace, name) or {}

    def requests(self, method: str, name: str | None = None, subresource: str | None = None) -> list[kmock.Request]:
        """Recorded requests on LocalModels (``name`` None: collection requests)."""
        return [
            r
            for r in self.emulator
            if r.resource == LM
            and r.method == method
            and r.name == name
            and r.subresource == subresource
            and r.namespace == self.namespace
        ]

    def scale_patches(self, name: str) -> list[kmock.Request]:
        return self.requests("PATCH", name, "scale")

    def annotation_patches(self, name: str) -> list[kmock.Request]:
        return [r for r in self.requests("PATCH", name) if "annotations" in (r.data or {}).get("metadata", {})]

    def kubeconfig(self, path: Path) -> Path:
        path.write_text(kubeconfig(self.url, self.namespace))
        return path


@asynccontextmanager
async def api_server(namespace: str = NAMESPACE) -> AsyncIterator[ApiServer]:
    """An emulated API server with the built-in resources, the LocalModel CRD and ``namespace``."""
    async with Emulator() as emulator, kmock.Server(emulator) as server:
        emulator.declare_builtins()
        crd = yaml.safe_load(CRD.read_text())
        emulator.declare_crd(crd)
        await emulator.apply_create(kmock.resource("apiextensions.k8s.io/v1/customresourcedefinitions"), None, crd)
        await emulator.apply_create(kmock.resource("v1/namespaces"), None, {"metadata": {"name": namespace}})
        yield ApiServer(emulator, str(server.url).rstrip("/"), namespace)


async def control_plane(api: ApiServer, settings: Settings, **options: Any) -> KubeControlPlane:
    configuration, namespace = await connect(api.url, api.namespace)
    return KubeControlPlane(KubeClient(configuration, namespace), settings, RouterMetrics(), **options)


@dataclass
class Router:
    url: str
    control: KubeControlPlane
    server: uvicorn.Server


@asynccontextmanager
async def router_in_process(api: ApiServer, settings: Settings, **options: Any) -> AsyncIterator[Router]:
    """The router app with a KubeControlPlane (``options``: its keyword arguments) on a real socket,
    in this event loop, so the test can play the operator while requests wait."""
    control = await control_plane(api, settings, **options)
    app = build_kube_app(control, settings, control.metrics)
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", ws="none", lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    await eventually(lambda: server.started or task.done(), what="the router to start")
    if task.done():
        task.result()
        raise RuntimeError("the router did not start")
    try:
        yield Router(f"http://127.0.0.1:{port}", control, server)
    finally:
        server.should_exit = True
        await task


async def eventually(check: Callable[[], T], what: str = "a condition", within: float = 30.0) -> T:
    """Poll ``check`` until it returns something truthy: synchronisation on observable state."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        value = check()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {within:.0f}s waiting for {what}")
        await asyncio.sleep(0.02)


def metric(text: str, name: str, **labels: str) -> float | None:
    """One sample from Prometheus text, or None."""
    want = {f'{k}="{v}"' for k, v in labels.items()}
    for line in text.splitlines():
        m = re.match(rf"^{name}(?:\{{(.*)\}})? (\S+)$", line)
        if m and set(filter(None, (m.group(1) or "").split(","))) == want:
            return float(m.group(2))
    return None
