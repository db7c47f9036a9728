"""Test helpers: a real kopf operator in the test's event loop, the controllers kmock lacks, waiting.

``FakeCluster`` plays the Deployment controller and the kubelet on the emulator: a Deployment
scaled to one gets a pod on the node its nodeSelector names, the pod becomes ready (unless held),
and a Deployment scaled to zero loses its pod (unless held, to model a slow termination). It
writes through the emulator's server-side operations, so every change is a logged write.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import kmock
import kopf

from llmi_operator.children import ANNOTATION_FOOTPRINT, HOSTNAME_LABEL
from llmi_operator.handlers import register
from llmi_operator.settings import OperatorSettings
from tests.kube.realism import Emulator
from tests.kube_fixtures import eventually

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
async def running_operator(settings: OperatorSettings) -> AsyncIterator[None]:
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
        await asyncio.to_thread(thread.join, 30)
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
    """The Deployment controller and kubelet, as far as the operator can observe them."""

    emulator: Emulator
    namespace: str
    hold_ready: set[str] = field(default_factory=set)  # Deployment names whose pods stay unready
    hold_pods: set[str] = field(default_factory=set)  # Deployment names whose pods do not go away
    _task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> FakeCluster:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        while True:
            await self.sync()
            await asyncio.sleep(0.02)  # a controller's resync period, not a test synchronisation

    async def sync(self) -> None:
        e, ns = self.emulator, self.namespace
        deployments = {d["metadata"]["name"]: d for d in e.find_all(DEPLOYMENTS, ns)}
        pods = e.find_all(PODS, ns)
        for pod in pods:
            owner = pod["metadata"]["labels"].get("fake/deployment")
            wanted = deployments.get(owner or "")
            if (wanted is None or wanted["spec"].get("replicas", 1) == 0) and owner not in self.hold_pods:
                await e.apply_delete(PODS, ns, pod["metadata"]["name"])
        for name, deployment in deployments.items():
            mine = [p for p in e.find_all(PODS, ns, f"fake/deployment={name}")]
            replicas = int(deployment["spec"].get("replicas", 1))
            if replicas > 0 and not mine:
                mine.append(await e.apply_create(PODS, ns, self._pod(name, deployment)))
            ready = 1 if replicas > 0 and mine and name not in self.hold_ready else 0
            status = {
                "observedGeneration": deployment["metadata"]["generation"],
                "replicas": len(mine),
                "readyReplicas": ready,
            }
            if {k: (deployment.get("status") or {}).get(k) for k in status} != status:
                await e.apply_patch(DEPLOYMENTS, ns, name, {"status": status}, subresource="status")

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
