"""kmock's Kubernetes emulator set up for LocalModels, and helpers that play the operator.

kmock 0.8 stores objects and streams watch events, but answers a scale PATCH with the whole
object, never sets resourceVersion, and a POST does not fill in metadata.namespace (so objects
are always created with it here: namespaced watches match on it).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import kmock
import uvicorn
import yaml

from llmi.settings import Settings
from llmi_router.app import build_router_app
from llmi_router.embedded.process import free_port
from llmi_router.kube import KubeApi, KubeConnection, KubeControlPlane
from llmi_router.metrics import RouterMetrics

NAMESPACE = "llmi-test"
CRD = Path(__file__).resolve().parents[1] / "crds" / "localmodels.llmi.dev.yaml"
T = TypeVar("T")


def localmodel_resource(k: kmock.KubernetesEmulator) -> kmock.resource:
    """Declare LocalModel for discovery and listing (from the CRD when the repository has it)."""
    names: dict[str, Any] = {"kind": "LocalModel", "plural": "localmodels", "singular": "localmodel"}
    group, version, subresources = "llmi.dev", "v1alpha1", {"status", "scale"}
    if CRD.is_file():
        crd = yaml.safe_load(CRD.read_text())
        names, group = crd["spec"]["names"], crd["spec"]["group"]
        served = next(v for v in crd["spec"]["versions"] if v.get("served"))
        version, subresources = served["name"], set(served.get("subresources") or {})
    resource = kmock.resource(f"{group}/{version}/{names['plural']}")
    k.resources[resource] = kmock.ResourceInfo(
        kind=names["kind"],
        singular=names.get("singular"),
        namespaced=True,
        shortnames=set(names.get("shortNames") or []),
        categories=set(names.get("categories") or []),
        subresources=subresources,
        verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
    )
    # The emulator already merges {"spec": {"replicas": N}} into the object (specReplicasPath is
    # .spec.replicas); a real API server answers with an autoscaling/v1 Scale, so do that too.
    k["patch", resource, kmock.subresource("scale")] << (lambda req: _scale(k, resource, req))
    return resource


def _scale(k: kmock.KubernetesEmulator, resource: kmock.resource, req: kmock.Request) -> dict[str, Any]:
    obj = k.objects[resource, req.namespace, req.name]
    return {
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": {"name": req.name, "namespace": req.namespace},
        "spec": {"replicas": obj.get("spec", {}).get("replicas", 0)},
        "status": {"replicas": obj.get("status", {}).get("replicas", 0)},
    }


@dataclass
class Cluster:
    """The emulator, its URL, and the operator's side of the LocalModel contract."""

    k: kmock.KubernetesEmulator
    resource: kmock.resource
    url: str
    http: httpx.AsyncClient

    @property
    def base(self) -> str:
        r = self.resource
        return f"/apis/{r.group}/{r.version}/namespaces/{NAMESPACE}/{r.plural}"

    async def create(self, name: str, type_: str, replicas: int = 0, **spec: Any) -> None:
        body = {
            "apiVersion": f"{self.resource.group}/{self.resource.version}",
            "kind": "LocalModel",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"path": name, "type": type_, "replicas": replicas, **spec},
        }
        (await self.http.post(self.base, json=body)).raise_for_status()

    async def set_status(self, name: str, **status: Any) -> None:
        """What the operator does: a merge patch of /status (the watch sees MODIFIED)."""
        resp = await self.http.patch(
            f"{self.base}/{name}/status",
            content=json.dumps({"status": status}),
            headers={"Content-Type": "application/merge-patch+json"},
        )
        resp.raise_for_status()

    async def delete(self, name: str) -> None:
        (await self.http.delete(f"{self.base}/{name}")).raise_for_status()

    def obj(self, name: str) -> dict[str, Any]:
        return dict(self.k.objects[self.resource, NAMESPACE, name].raw)

    def requests(self, method: str, name: str | None = None, subresource: str | None = None) -> list[kmock.Request]:
        """Recorded requests on LocalModels (``name`` None: collection requests)."""
        return [
            r
            for r in self.k
            if r.resource == self.resource
            and r.method == method
            and r.name == name
            and r.subresource == subresource
            and r.namespace == NAMESPACE
        ]

    def scale_patches(self, name: str) -> list[kmock.Request]:
        return self.requests("PATCH", name, "scale")

    def annotation_patches(self, name: str) -> list[kmock.Request]:
        return [r for r in self.requests("PATCH", name) if "annotations" in (r.data or {}).get("metadata", {})]


@asynccontextmanager
async def cluster() -> AsyncIterator[Cluster]:
    async with kmock.KubernetesEmulator() as k, kmock.Server(k) as server:
        resource = localmodel_resource(k)
        url = str(server.url).rstrip("/")
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            yield Cluster(k, resource, url, http)


@dataclass
class Router:
    url: str
    control: KubeControlPlane
    server: uvicorn.Server


@asynccontextmanager
async def router_in_process(c: Cluster, settings: Settings, **options: Any) -> AsyncIterator[Router]:
    """The router app with a KubeControlPlane (``options``: its keyword arguments) on a real socket,
    in this event loop, so the test can play the operator in kmock while requests wait."""
    metrics = RouterMetrics()
    control = KubeControlPlane(KubeApi(KubeConnection(c.url), NAMESPACE), settings, metrics, **options)
    app = build_router_app(control, settings, metrics, startup=control.start)
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


async def eventually(check: Callable[[], T], timeout_s: float = 30.0, what: str = "a condition") -> T:
    """Poll ``check`` until it returns something truthy: synchronisation on observable state."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.02)


def metric(text: str, name: str, **labels: str) -> float | None:
    """One sample from Prometheus text, or None."""
    want = {f'{k}="{v}"' for k, v in labels.items()}
    for line in text.splitlines():
        m = re.match(rf"^{name}(?:\{{(.*)\}})? (\S+)$", line)
        if m and set(filter(None, (m.group(1) or "").split(","))) == want:
            return float(m.group(2))
    return None
