"""Carry out what the pure modules decide: one reconcile pass per LocalModel.

Every pass reads fresh state from the API server, derives the desired children and status, and
writes only differences. Passes run under one lock per operator: a scale-up decision reads every
model on a node and may scale others to zero, so two decisions must never interleave (the
operator runs standalone, one replica, so an in-process lock is enough).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmi.catalog.scan import describe
from llmi_operator import budget as b
from llmi_operator.children import (
    LABEL_MANAGED_BY,
    LABEL_NAME,
    ChildConfig,
    Placed,
    child_name,
    desired_deployment,
    desired_service,
    endpoint,
    patch_ops,
    selector_labels,
)
from llmi_operator.kube import JSON_PATCH, Conflict, Kube, api_path
from llmi_operator.localmodel import (
    ANNOTATION_EVICTED_BY,
    ANNOTATION_LAST_REQUEST,
    GROUP,
    PLURAL,
    VERSION,
    InvalidSpec,
    ModelRef,
    ModelSpec,
    parse_spec,
    ref_of,
)
from llmi_operator.observe import (
    deployment_replicas,
    last_used,
    node_from,
    occupants,
    placed_from_deployment,
    pod_is_live,
    pod_node,
    pod_problem,
    ready_replicas,
)
from llmi_operator.settings import OperatorSettings
from llmi_operator.status import Outcome, desired_status, status_patch

log = logging.getLogger("llmi.operator")
Notify = Callable[[Mapping[str, Any], str, str, str], None]  # (object, type, reason, message)


@dataclass(frozen=True)
class Result:
    """How a pass ended, for the handler: retry soon (waiting for room), or the spec is unusable."""

    retry_after: float | None = None
    invalid: str | None = None


def lm_path(namespace: str, name: str | None = None, sub: str | None = None) -> str:
    return api_path(f"{GROUP}/{VERSION}", PLURAL, namespace, name, sub)


def selector(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in labels.items())


class Reconciler:
    """Reconciles LocalModels through a ``Kube`` port; ``notify`` posts Kubernetes Events."""

    def __init__(
        self, kube: Kube, settings: OperatorSettings, notify: Notify, clock: Callable[[], float] = time.time
    ) -> None:
        self.kube = kube
        self.settings = settings
        self.notify = notify
        self.clock = clock
        self.config = ChildConfig.from_settings(settings)
        self.lock = threading.Lock()
        self._estimates: dict[tuple[str, float], int | None] = {}

    # Entry points (each takes the lock).

    def reconcile(self, namespace: str, name: str) -> Result:
        with self.lock:
            return self._reconcile(namespace, name)

    def scale_idle(self, namespace: str, name: str) -> bool:
        """Scale a Ready, unpinned model to zero once unused for longer than its idleTimeout."""
        with self.lock:
            body = self.kube.get(lm_path(namespace, name))
            if body is None or (body.get("status") or {}).get("phase") != "Ready":
                return False
            try:
                spec = parse_spec(body.get("spec") or {})
            except InvalidSpec:
                return False
            if spec.replicas != 1 or spec.pinned or spec.idle_timeout_s is None:
                return False
            idle = self.clock() - last_used(body)
            if idle <= spec.idle_timeout_s:
                return False
            if not self._scale_to_zero(body, {}):
                return False
            log.info("%s/%s: idle for %.0fs, scaling to zero", namespace, name, idle)
            self.notify(
                body, "Normal", "ScaledToZero", f"no requests for {idle:.0f}s (idleTimeout {spec.idle_timeout_s:.0f}s)"
            )
            return True

    def delete_children(self, namespace: str, name: str) -> None:
        """Explicit cleanup on delete (ownerReferences would also let the garbage collector do it)."""
        with self.lock:
            for api_version, plural in (("apps/v1", "deployments"), ("v1", "services")):
                self.kube.delete(api_path(api_version, plural, namespace, child_name(name)))

    # One pass.

    def _reconcile(self, namespace: str, name: str) -> Result:
        body = self.kube.get(lm_path(namespace, name))
        if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
            return Result()
        result = Result()
        try:
            spec = parse_spec(body.get("spec") or {})
            outcome, result = self._converge(body, ref_of(body), spec)
        except InvalidSpec as exc:
            outcome, result = Outcome("Failed", "InvalidSpec", f"invalid spec: {exc}"), Result(invalid=str(exc))
        self._announce(body, outcome)
        self._write_status(body, outcome)
        return result

    def _converge(self, body: Mapping[str, Any], ref: ModelRef, spec: ModelSpec) -> tuple[Outcome, Result]:
        ns = ref.namespace
        self._ensure(api_path("v1", "services", ns), desired_service(ref))
        deployment = self.kube.get(api_path("apps/v1", "deployments", ns, child_name(ref.name)))
        pods = self.kube.list(api_path("v1", "pods", ns), selector(selector_labels(ref.name)))
        pods = [p for p in pods if pod_is_live(p)]
        memory = self._memory(ref, spec)
        folder = self._folder_present(spec.path)
        kept = placed_from_deployment(deployment, memory or 0) if deployment else None
        if spec.replicas == 0:
            self._ensure_deployment(ref, spec, kept, 0, memory)
            return self._scaled_down(body, spec, memory, folder), Result()
        annotations = (body.get("metadata") or {}).get("annotations") or {}
        if ANNOTATION_EVICTED_BY in annotations:  # wanted again: the eviction mark goes
            self.kube.patch(lm_path(ns, ref.name), {"metadata": {"annotations": {ANNOTATION_EVICTED_BY: None}}})
        placed = kept if kept is not None and deployment_replicas(deployment) > 0 else None
        if placed is None:
            decided = self._blocked(ref, spec, memory, folder, pods) or self._decide(body, ref, spec, memory or 0)
            if not isinstance(decided, Placed):
                self._ensure_deployment(ref, spec, kept, 0, memory)
                return decided
            placed = decided
        deployment = self._ensure_deployment(ref, spec, placed, 1, memory)
        return self._running(ref, placed, deployment, pods), Result()

    def _blocked(
        self, ref: ModelRef, spec: ModelSpec, memory: int | None, folder: bool | None, pods: list[dict[str, Any]]
    ) -> tuple[Outcome, Result] | None:
        """Why a model cannot be placed before the budget is even asked, or None."""
        if folder is False:
            missing = f"model folder {spec.path} is missing from the models volume"
            return Outcome("Failed", "FolderMissing", missing, memory_bytes=memory), Result()
        if memory is None:
            unknown = "spec.memory is not set and the folder cannot be measured"
            return Outcome("Failed", "MemoryUnknown", unknown), Result()
        if pods:
            stopping = f"the previous pod of {ref.name} is still stopping"
            return Outcome("Loading", "WaitingForRoom", stopping, memory_bytes=memory), self._retry()
        return None

    def _ensure_deployment(
        self, ref: ModelRef, spec: ModelSpec, placed: Placed | None, replicas: int, memory: int | None
    ) -> dict[str, Any] | None:
        """Scaled down, a Deployment keeps its last placement (no pointless template change)."""
        if placed is None:
            kind = spec.placement if spec.placement in ("cpu", "offload") else "gpu"
            placed = Placed(None, kind, 0, memory or 0)  # type: ignore[arg-type]
        desired = desired_deployment(ref, spec, placed, replicas, self.config)
        return self._ensure(api_path("apps/v1", "deployments", ref.namespace), desired)

    @staticmethod
    def _scaled_down(body: Mapping[str, Any], spec: ModelSpec, memory: int | None, folder: bool | None) -> Outcome:
        evicted_by = ((body.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_EVICTED_BY)
        if folder is False:
            missing = f"model folder {spec.path} is missing from the models volume"
            return Outcome("Failed", "FolderMissing", missing, memory_bytes=memory)
        if evicted_by:
            return Outcome("Evicted", "Evicted", f"scaled to zero to make room for {evicted_by}", memory_bytes=memory)
        return Outcome("Available", "ScaledToZero", memory_bytes=memory)

    def _running(
        self, ref: ModelRef, placed: Placed, deployment: Mapping[str, Any] | None, pods: list[dict[str, Any]]
    ) -> Outcome:
        ready = ready_replicas(deployment)
        node = placed.node or next((n for n in map(pod_node, pods) if n), None)
        problem = pod_problem(pods)
        if ready >= 1:
            phase, reason, message = "Ready", "RuntimeReady", ""
        elif problem:
            phase, reason, message = "Failed", "RuntimeFailing", problem
        else:
            phase, reason, message = "Loading", "Starting", f"runtime starting on {node or 'a node'}"
        return Outcome(
            phase,  # type: ignore[arg-type]
            reason,
            message,
            scheduled=True,
            node=node,
            placement=placed.placement,
            memory_bytes=placed.footprint_bytes,
            ready_replicas=ready,
            endpoint=endpoint(ref) if ready >= 1 else None,
        )

    # The budget.

    def _decide(
        self, body: Mapping[str, Any], ref: ModelRef, spec: ModelSpec, memory: int
    ) -> Placed | tuple[Outcome, Result]:
        ns = ref.namespace
        nodes = [node_from(n, self.settings.node_budget_bytes) for n in self.kube.list(api_path("v1", "nodes"))]
        models = self.kube.list(lm_path(ns))
        deployments = self.kube.list(api_path("apps/v1", "deployments", ns), f"{LABEL_MANAGED_BY}=llmi-operator")
        pods = self.kube.list(api_path("v1", "pods", ns), f"{LABEL_NAME}=llmi-runtime")
        demand = b.Demand(ref.name, spec.type, memory, spec.placement, spec.node_selector, spec.tolerations)
        decision = b.decide(
            nodes,
            occupants(models, deployments, pods),
            demand,
            self.settings.offload_gpu_bytes,
            offload_auto=self.settings.offload_auto,
            utilization=self.settings.budget_utilization,
        )
        gpu_memory = {n.name: n.gpu_memory_bytes for n in nodes}
        if isinstance(decision, b.Place):
            return Placed(
                decision.node, decision.placement, decision.footprint_bytes, memory, gpu_memory.get(decision.node or "")
            )
        if isinstance(decision, b.Unschedulable):
            return Outcome("Failed", "Unschedulable", decision.reason, memory_bytes=memory), Result()
        if isinstance(decision, b.Wait):
            return Outcome(
                "Loading", "WaitingForRoom", f"waiting for room: {decision.reason}", memory_bytes=memory
            ), self._retry()
        evicted = self._evict(body, decision, {m["metadata"]["name"]: m for m in models})
        message = f"making room on node {decision.node}: waiting for {', '.join(evicted) or 'the victims'} to stop"
        reserved = Outcome(
            "Loading",
            "WaitingForRoom",
            message,
            node=decision.node,
            placement=decision.placement,
            memory_bytes=decision.footprint_bytes,
        )
        return reserved, self._retry()

    def _evict(self, body: Mapping[str, Any], decision: b.Evict, models: Mapping[str, Mapping[str, Any]]) -> list[str]:
        name, ns = body["metadata"]["name"], body["metadata"]["namespace"]
        evicted: list[str] = []
        for victim in decision.victims:
            target = models.get(victim)
            if target is None or not self._scale_to_zero(target, {ANNOTATION_EVICTED_BY: name}):
                continue  # changed meanwhile: the next pass decides again
            evicted.append(victim)
            self.notify(target, "Normal", "Evicted", f"scaled to zero to make room for {name} on node {decision.node}")
            self._reconcile(ns, victim)  # its Deployment goes to zero now, its status says Evicted
        if evicted:
            log.info("%s/%s: evicting %s from node %s", ns, name, ", ".join(evicted), decision.node)
            self.notify(
                body, "Normal", "Evicting", f"scaling {', '.join(evicted)} to zero to make room on node {decision.node}"
            )
        return evicted

    def _scale_to_zero(self, body: Mapping[str, Any], annotations: dict[str, str]) -> bool:
        """spec.replicas 0, guarded by the resourceVersion we decided on (a pin set meanwhile wins)."""
        meta = body["metadata"]
        patch: dict[str, Any] = {"metadata": {"resourceVersion": meta.get("resourceVersion")}, "spec": {"replicas": 0}}
        if annotations:
            patch["metadata"]["annotations"] = annotations
        try:
            return self.kube.patch(lm_path(meta["namespace"], meta["name"]), patch) is not None
        except Conflict:
            return False

    def _retry(self) -> Result:
        return Result(retry_after=self.settings.retry_delay_s)

    # Helpers.

    def _ensure(self, collection: str, desired: dict[str, Any]) -> dict[str, Any] | None:
        """Get, create or patch one child by its deterministic name; nothing is written when it matches."""
        path = f"{collection}/{desired['metadata']['name']}"
        observed = self.kube.get(path)
        if observed is None:
            try:
                return self.kube.create(collection, desired)
            except Conflict:
                observed = self.kube.get(path)
                if observed is None:
                    raise
        ops = patch_ops(observed, desired)
        return self.kube.patch(path, ops, JSON_PATCH) if ops else observed

    def _memory(self, ref: ModelRef, spec: ModelSpec) -> int | None:
        """spec.memory, else the catalog's estimate of the folder (when the volume is mounted here)."""
        if spec.memory_bytes is not None:
            return spec.memory_bytes
        folder = self.settings.models_dir / spec.path
        try:
            key = (str(folder), folder.stat().st_mtime)
        except OSError:
            return None
        if key not in self._estimates:
            try:
                self._estimates[key] = describe(folder, ref.name, self.settings.max_model_len).memory_bytes
            except Exception as exc:  # any unreadable folder: the status says the memory is unknown
                log.warning("cannot estimate %s: %s", folder, exc)
                self._estimates[key] = None
        return self._estimates[key]

    def _folder_present(self, path: str) -> bool | None:
        """None when the models volume is not mounted in the operator (nothing can be said)."""
        root: Path = self.settings.models_dir
        return (root / path).is_dir() if root.is_dir() else None

    def _announce(self, body: Mapping[str, Any], outcome: Outcome) -> None:
        status = body.get("status") or {}
        changed = status.get("phase") != outcome.phase or status.get("message", "") != outcome.message
        if not changed:
            return
        meta = body["metadata"]
        log.info("%s/%s: %s (%s) %s", meta["namespace"], meta["name"], outcome.phase, outcome.reason, outcome.message)
        if outcome.phase == "Failed":
            self.notify(body, "Warning", outcome.reason, outcome.message)
        elif outcome.phase == "Ready" and status.get("phase") != "Ready":
            self.notify(body, "Normal", "Ready", f"serving at {outcome.endpoint} on node {outcome.node}")

    def _write_status(self, body: Mapping[str, Any], outcome: Outcome) -> None:
        meta = body["metadata"]
        current = body.get("status") or {}
        last_request = (meta.get("annotations") or {}).get(ANNOTATION_LAST_REQUEST)
        desired = desired_status(
            current, outcome, generation=int(meta.get("generation") or 0), last_request=last_request, now=self.clock()
        )
        patch = status_patch(current, desired)
        if patch:
            self.kube.patch(lm_path(meta["namespace"], meta["name"], "status"), {"status": patch})
