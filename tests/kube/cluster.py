"""Test helpers: a real kopf operator in the test's event loop, the controllers kmock lacks, waiting.

``FakeCluster`` plays the Deployment controller and the kubelet on the emulator: a Deployment
scaled to one gets a pod on the node its nodeSelector names, the pod becomes ready (unless held),
and a Deployment scaled to zero loses its pod (unless held, to model a slow termination). It
writes through the emulator's server-side operations, so every change is a logged write.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import kmock
import kopf

from llmi.localmodel import ANNOTATION_FOOTPRINT, LABEL_NAME, PORT_NAME, RUNTIME_APP, SERVICE_NAME_LABEL
from llmi_operator.children import HOSTNAME_LABEL
from llmi_operator.handlers import register
from llmi_operator.settings import OperatorSettings
from tests.kube.realism import Emulator, Write
from tests.kube_fixtures import SLICES, eventually
from tests.servers import RuntimeProcess, runtime_env, start_runtime

__all__ = ["eventually"]

T = TypeVar("T")
LM = kmock.resource("llmi.dev/v1alpha1/localmodels")
DEPLOYMENTS = kmock.resource("apps/v1/deployments")
SERVICES = kmock.resource("v1/services")
PODS = kmock.resource("v1/pods")
NODES = kmock.resource("v1/nodes")
EVENTS = kmock.resource("v1/events")
GIB = 1024**3


def operator_settings(namespace: str, models_dir: Path, **overrides: Any) -> OperatorSettings:
    """Real settings with short intervals, so timers and retries happen within a test."""
    values: dict[str, Any] = {
        "namespace": namespace,
        "models_dir": models_dir,
        "models_pvc": "llmi-models",
        "runtime_image": "llmi-runtime:test",
        "vllm_image": "",
        "node_budget_gb": 8,
        "reconcile_interval_s": 0.3,
        "retry_delay_s": 0.2,
        "discovery_interval_s": 0.5,
        "drain_grace_s": 0.3,
        "drain_timeout_s": 60,
    }
    return OperatorSettings(**(values | overrides))


@contextlib.asynccontextmanager
async def running_operator(settings: OperatorSettings, stop_within_s: float = 30.0) -> AsyncIterator[None]:
    """kopf with a fresh registry, standalone, in its own thread and event loop; stopped on exit.

    Its own loop because kopf, when it stops, cancels every task created in its loop while it ran,
    and the emulated API server's connection tasks live in the test's loop.
    """
    registry = kopf.OperatorRegistry()
    register(registry, settings)
    stop, ready = threading.Event(), threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(
                kopf.operator(
                    registry=registry,
                    standalone=True,
                    clusterwide=False,
                    namespaces=[settings.namespace],
                    stop_flag=stop,
                    ready_flag=ready,
                    memo=kopf.Memo(),
                )
            )
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=run, name="kopf-operator", daemon=True)
    thread.start()
    try:
        assert await asyncio.to_thread(ready.wait, 30), "the operator did not start"
        yield
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, stop_within_s)
        assert not thread.is_alive(), "the operator did not stop"
    if failure:
        raise failure[0]


def node(name: str, budget: str | None = "8Gi", **labels: str) -> dict[str, Any]:
    annotations = {"llmi.dev/memory-budget": budget} if budget else {}
    return {
        "metadata": {
            "name": name,
            "labels": {HOSTNAME_LABEL: name, "nvidia.com/gpu.present": "true", **labels},
            "annotations": annotations,
        },
        "status": {"allocatable": {"nvidia.com/gpu": "1"}, "capacity": {"nvidia.com/gpu": "1"}},
    }


def local_model(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "llmi.dev/v1alpha1",
        "kind": "LocalModel",
        "metadata": {"name": name},
        "spec": {"path": name, "type": "chat", "replicas": 0, **spec},
    }


@dataclass
class FakeCluster:
    """The Deployment controller, the kubelet and the EndpointSlice controller, as far as the
    operator and the router can observe them.

    A Deployment in ``runtimes`` (its name → a model folder) runs a real ``llmi runtime`` process
    for its pod: the pod is ready when the runtime answers /readyz, the EndpointSlice points at the
    process, and deleting the pod stops the process with SIGTERM (the runtime drains, like a
    kubelet's grace period). Other pods are ready at once unless held, with a placeholder address.
    """

    emulator: Emulator
    namespace: str
    hold_ready: set[str] = field(default_factory=set)  # Deployment names whose pods stay unready
    hold_pods: set[str] = field(default_factory=set)  # Deployment names whose pods do not go away
    runtimes: dict[str, Path] = field(default_factory=dict)  # Deployment name -> model folder to serve
    log_dir: Path | None = None
    on_pod_gone: Callable[[str], None] | None = None  # called with the Deployment name
    period_s: float = 0.02  # the controllers' resync period
    processes: dict[str, RuntimeProcess] = field(default_factory=dict)  # pod name -> its runtime
    _ready: set[str] = field(default_factory=set)  # pods whose runtime answered /readyz
    _stopping: dict[str, asyncio.Task[int]] = field(default_factory=dict)
    _slices: dict[str, dict[str, Any]] = field(default_factory=dict)  # what was last written
    _task: asyncio.Task[None] | None = None
    _http: httpx.AsyncClient | None = None

    async def __aenter__(self) -> FakeCluster:
        self._http = httpx.AsyncClient(timeout=2)
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        for runtime in self.processes.values():
            await asyncio.to_thread(runtime.stop)
        await asyncio.gather(*self._stopping.values(), return_exceptions=True)
        if self._http is not None:
            await self._http.aclose()

    async def _run(self) -> None:
        while True:
            await self.sync()
            await asyncio.sleep(self.period_s)  # a controller's resync period, not a test synchronisation

    async def sync(self) -> None:
        e, ns = self.emulator, self.namespace
        deployments = {d["metadata"]["name"]: d for d in e.find_all(DEPLOYMENTS, ns)}
        pods: dict[str, list[dict[str, Any]]] = {}
        for pod in e.find_all(PODS, ns):
            owner = pod["metadata"]["labels"].get("fake/deployment")
            wanted = deployments.get(owner or "")
            if (wanted is None or wanted["spec"].get("replicas", 1) == 0) and owner not in self.hold_pods:
                await self._terminate(pod, owner or "")
            pods.setdefault(owner or "", []).append(pod)
        for name, deployment in deployments.items():
            mine = [p for p in pods.get(name, []) if e.find(PODS, ns, p["metadata"]["name"]) is not None]
            replicas = int(deployment["spec"].get("replicas", 1))
            if replicas > 0 and not mine:
                mine.append(await e.apply_create(PODS, ns, self._pod(name, deployment)))
            ready_pods = [p for p in mine if await self._pod_ready(name, p)]
            ready = 1 if replicas > 0 and ready_pods and name not in self.hold_ready else 0
            status = {
                "observedGeneration": deployment["metadata"]["generation"],
                "replicas": len(mine),
                "readyReplicas": ready,
            }
            if {k: (deployment.get("status") or {}).get(k) for k in status} != status:
                await e.apply_patch(DEPLOYMENTS, ns, name, {"status": status}, subresource="status")
            await self._slice(name, mine, ready_pods if ready else [])

    async def _terminate(self, pod: Mapping[str, Any], owner: str) -> None:
        """A pod going away: its runtime gets SIGTERM and the pod object goes once it has exited."""
        name = pod["metadata"]["name"]
        runtime = self.processes.get(name)
        if runtime is not None:
            task = self._stopping.get(name)
            if task is None:
                self._ready.discard(name)
                self._stopping[name] = asyncio.create_task(asyncio.to_thread(runtime.stop))
                return
            if not task.done():
                return  # still terminating: the pod still holds its node's memory
            del self.processes[name], self._stopping[name]
        await self.emulator.apply_delete(PODS, self.namespace, name)
        if self.on_pod_gone is not None:
            self.on_pod_gone(owner)

    async def _pod_ready(self, deployment: str, pod: Mapping[str, Any]) -> bool:
        name = pod["metadata"]["name"]
        if deployment not in self.runtimes:
            return True
        if name in self._stopping:
            return False
        runtime = self.processes.get(name)
        if runtime is None:
            log_dir = self.log_dir or Path(tempfile.mkdtemp())
            model = deployment.removeprefix("llmi-")  # the name clients send, as the operator passes it
            runtime = start_runtime(self.runtimes[deployment], log_dir, name=model, env=runtime_env(), wait=False)
            self.processes[name] = runtime
        if name not in self._ready and self._http is not None:
            with contextlib.suppress(httpx.TransportError):
                if (await self._http.get(f"{runtime.url}/readyz")).status_code == 200:
                    self._ready.add(name)
        return name in self._ready

    async def _slice(self, deployment: str, pods: list[dict[str, Any]], ready: list[dict[str, Any]]) -> None:
        """The Service's EndpointSlice: one endpoint per pod, ready as the pod is."""
        port = 8000
        endpoints = []
        for pod in pods:
            runtime = self.processes.get(pod["metadata"]["name"])
            if runtime is not None:
                port = int(runtime.url.rsplit(":", 1)[1])
            ok = pod["metadata"]["name"] in {p["metadata"]["name"] for p in ready}
            endpoints.append({"addresses": ["127.0.0.1"], "conditions": {"ready": ok}})
        body = {
            "metadata": {
                "name": f"{deployment}-slice",
                "labels": {SERVICE_NAME_LABEL: deployment, LABEL_NAME: RUNTIME_APP},
            },
            "addressType": "IPv4",
            "ports": [{"name": PORT_NAME, "port": port, "protocol": "TCP"}],
            "endpoints": endpoints,
        }
        name = body["metadata"]["name"]
        if self._slices.get(name) == body:
            return  # written already (only this controller writes slices)
        if self.emulator.find(SLICES, self.namespace, name) is None:
            await self.emulator.apply_create(SLICES, self.namespace, body)
        else:
            await self.emulator.apply_patch(SLICES, self.namespace, name, body)
        self._slices[name] = body

    def _pod(self, name: str, deployment: Mapping[str, Any]) -> dict[str, Any]:
        template = deployment["spec"]["template"]
        spec = dict(template["spec"])
        spec["nodeName"] = (spec.get("nodeSelector") or {}).get(HOSTNAME_LABEL, "node-any")
        labels = {**template["metadata"]["labels"], "fake/deployment": name}
        meta = {"name": f"{name}-{deployment['metadata']['generation']}", "labels": labels}
        meta["annotations"] = dict(template["metadata"].get("annotations") or {})
        return {"metadata": meta, "spec": spec}


def footprint(obj: Mapping[str, Any]) -> int:
    return int((obj.get("metadata") or {}).get("annotations", {}).get(ANNOTATION_FOOTPRINT, 0))


def replay_budget(writes: list[Write], budgets: Mapping[str, int]) -> list[tuple[str, int]]:
    """Replay every write in order; at each step no node may hold more than its budget.

    A model holds its footprint on a node from the moment its Deployment is scaled up there
    until its Deployment is scaled down and its last pod is gone. Returns the order in which
    Deployments' replicas changed.
    """
    deployments: dict[str, tuple[int, str | None, int]] = {}
    pods: dict[str, tuple[str, str, int]] = {}
    changes: list[tuple[str, int]] = []
    for write in writes:
        obj = write.object
        if write.resource == DEPLOYMENTS:
            replicas = int(obj["spec"].get("replicas", 1)) if write.type != "DELETED" else 0
            template = obj["spec"]["template"]
            where = (template["spec"].get("nodeSelector") or {}).get("kubernetes.io/hostname")
            previous = deployments.get(write.name)
            deployments[write.name] = (replicas, where, footprint(template))
            if previous is None or previous[0] != replicas:
                changes.append((write.name, replicas))
        elif write.resource == PODS:
            if write.type == "DELETED":
                pods.pop(write.name, None)
            else:
                pods[write.name] = (
                    obj["metadata"]["labels"]["fake/deployment"],
                    obj["spec"]["nodeName"],
                    footprint(obj),
                )
        held: dict[tuple[str, str], int] = {}
        for name, (replicas, where, size) in deployments.items():
            if replicas > 0 and where:
                held[where, name] = size
        for owner, where, size in pods.values():
            held[where, owner] = max(size, held.get((where, owner), 0))
        for where, budget in budgets.items():
            total = sum(size for (n, _), size in held.items() if n == where)
            assert total <= budget, f"node {where} holds {total / GIB:.1f} GiB at write {write.rv}: {held}"
    return changes
