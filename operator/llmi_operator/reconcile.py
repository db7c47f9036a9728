"""One reconcile pass per LocalModel: observe (fresh reads into frozen inputs), plan (pure), apply.

Locks, and why: passes of one model never interleave (a per-model lock); a budget decision reads
every model on the nodes it may use and may drain or stop some of them, so decisions that share a
node are serialised by per-node locks, taken in name order (no deadlock), and held until the plan
is written. Passes that decide nothing (a running model, a scale-down, status only) take no node
lock, so they never wait for a decision elsewhere. The operator runs one active replica (kopf
standalone, or kopf peering electing one), so in-process locks are enough.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmi.catalog.scan import describe
from llmi.localmodel import LABEL_MANAGED_BY, LABEL_NAME, OPERATOR_APP, RUNTIME_APP, busy, child_name, reports_of
from llmi_operator import budget as b
from llmi_operator.apply import Applier, Notify, lm_path
from llmi_operator.children import ChildConfig, selector_labels
from llmi_operator.kube import Conflict, Kube, api_path
from llmi_operator.localmodel import InvalidSpec, ModelSpec, parse_spec, ref_of
from llmi_operator.observe import last_used, node_from, occupants, pod_is_live
from llmi_operator.plan import ClusterInputs, ModelInputs, NeedsCluster, Plan, Timing, plan_pass
from llmi_operator.settings import OperatorSettings

log = logging.getLogger("llmi.operator")

__all__ = ["Notify", "Reconciler", "Result", "lm_path"]


@dataclass(frozen=True)
class Result:
    """How a pass ended, for the handler: retry soon (waiting for room, draining), or the spec is unusable."""

    retry_after: float | None = None
    invalid: str | None = None


def selector(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in labels.items())


@functools.lru_cache(maxsize=1024)
def _estimate(folder: str, mtime: float, name: str, max_model_len: int) -> int | None:
    """The catalog's estimate of one folder version (bounded: old versions fall out)."""
    del mtime  # part of the key only: a changed folder is estimated again
    try:
        return describe(Path(folder), name, max_model_len).memory_bytes
    except Exception as exc:  # any unreadable folder: the status says the memory is unknown
        log.warning("cannot estimate %s: %s", folder, exc)
        return None


class _Locks:
    """One lock per key, made on first use (models and nodes of one namespace: a bounded set)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)

    @contextlib.contextmanager
    def holding(self, *keys: str) -> Iterator[None]:
        with self._guard:
            locks = [self._locks[k] for k in sorted(set(keys))]
        with contextlib.ExitStack() as stack:
            for lock in locks:
                stack.enter_context(lock)
            yield


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
        self.timing = Timing(
            retry_s=settings.retry_delay_s,
            drain_grace_s=settings.drain_grace_s,
            drain_timeout_s=settings.drain_timeout_s,
            report_stale_s=settings.report_stale_s,
            offload_gpu_bytes=settings.offload_gpu_bytes,
            offload_auto=settings.offload_auto,
            utilization=settings.budget_utilization,
        )
        self.applier = Applier(kube, notify, clock)
        self._models = _Locks()
        self._nodes = _Locks()

    # Entry points.

    def reconcile(self, namespace: str, name: str) -> Result:
        with self._models.holding(name):
            return self._pass(namespace, name)

    def _pass(self, namespace: str, name: str, body: Mapping[str, Any] | None = None) -> Result:
        inputs = self.observe(namespace, name, body)
        if inputs is None:
            return Result()
        plan = plan_pass(inputs, None, self.config, self.timing)
        if isinstance(plan, NeedsCluster):
            decided = self._decide(namespace, name, plan)
            if decided is None:
                return Result()
            plan = decided
        else:
            self.applier.apply(inputs.body, plan, inputs.deployment)
        return Result(plan.retry_after, plan.invalid)

    def tick(self, namespace: str, name: str) -> Result:
        """The timer's pass: scale an idle model to zero (the spec change brings the pass that
        follows it), else reconcile, from one read of the model."""
        with self._models.holding(name):
            body = self.kube.get(lm_path(namespace, name))
            if body is None or self._scaled_idle(body):
                return Result()
            return self._pass(namespace, name, body)

    def _scaled_idle(self, body: Mapping[str, Any]) -> bool:
        """Scale a Ready, unpinned model to zero once unused for longer than its idleTimeout and with
        no request in flight at any router."""
        if (body.get("status") or {}).get("phase") != "Ready":
            return False
        try:
            spec = parse_spec(body.get("spec") or {})
        except InvalidSpec:
            return False
        if spec.replicas != 1 or spec.pinned or spec.idle_timeout_s is None:
            return False
        now = self.clock()
        idle = now - last_used(body)
        annotations = (body.get("metadata") or {}).get("annotations") or {}
        if idle <= spec.idle_timeout_s or busy(reports_of(annotations), now, self.settings.report_stale_s):
            return False
        meta = body["metadata"]
        patch = {"metadata": {"resourceVersion": meta.get("resourceVersion")}, "spec": {"replicas": 0}}
        try:
            if self.kube.patch(lm_path(meta["namespace"], meta["name"]), patch) is None:
                return False
        except Conflict:
            return False
        log.info("%s/%s: idle for %.0fs, scaling to zero", meta["namespace"], meta["name"], idle)
        self.notify(
            body, "Normal", "ScaledToZero", f"no requests for {idle:.0f}s (idleTimeout {spec.idle_timeout_s:.0f}s)"
        )
        return True

    def delete_children(self, namespace: str, name: str) -> None:
        """Explicit cleanup on delete (ownerReferences would also let the garbage collector do it)."""
        with self._models.holding(name):
            for api_version, plural in (("apps/v1", "deployments"), ("v1", "services")):
                self.kube.delete(api_path(api_version, plural, namespace, child_name(name)))

    # Observe.

    def observe(self, namespace: str, name: str, body: Mapping[str, Any] | None = None) -> ModelInputs | None:
        """The model (unless just read), its Deployment and live pods, its memory and folder; None
        when it is gone."""
        body = body if body is not None else self.kube.get(lm_path(namespace, name))
        if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
            return None
        ref = ref_of(body)
        try:
            spec: ModelSpec | None = parse_spec(body.get("spec") or {})
            invalid = None
        except InvalidSpec as exc:
            spec, invalid = None, str(exc)
        if spec is None:
            return ModelInputs(body, ref, None, invalid, None, (), None, None, self.clock())
        deployment = self.kube.get(api_path("apps/v1", "deployments", namespace, child_name(name)))
        pods = self.kube.list(api_path("v1", "pods", namespace), selector(selector_labels(name)))
        live = tuple(p for p in pods if pod_is_live(p))
        return ModelInputs(
            body,
            ref,
            spec,
            None,
            deployment,
            live,
            self._memory(name, spec),
            self._folder_present(spec.path),
            self.clock(),
        )

    def observe_cluster(self, namespace: str, nodes: list[b.Node]) -> ClusterInputs:
        models = self.kube.list(lm_path(namespace))
        deployments = self.kube.list(
            api_path("apps/v1", "deployments", namespace), f"{LABEL_MANAGED_BY}={OPERATOR_APP}"
        )
        pods = self.kube.list(api_path("v1", "pods", namespace), f"{LABEL_NAME}={RUNTIME_APP}")
        held = occupants(models, deployments, pods, self.clock(), self.settings.report_stale_s)
        return ClusterInputs(tuple(nodes), {m["metadata"]["name"]: m for m in models}, tuple(held))

    # Decide, under the locks of every node the model may go to.

    def _decide(self, namespace: str, name: str, need: NeedsCluster) -> Plan | None:
        nodes = [node_from(n, self.settings.node_budget_bytes) for n in self.kube.list(api_path("v1", "nodes"))]
        keys = [n.name for n in nodes if b.eligible(n, need.demand)]
        with self._nodes.holding(*keys):
            inputs = self.observe(namespace, name)  # again, now that no decision on these nodes runs
            if inputs is None:
                return None
            plan = plan_pass(inputs, self.observe_cluster(namespace, nodes), self.config, self.timing)
            assert not isinstance(plan, NeedsCluster)
            self.applier.apply(inputs.body, plan, inputs.deployment)
            return plan

    # Helpers.

    def _memory(self, name: str, spec: ModelSpec) -> int | None:
        """spec.memory, else the catalog's estimate of the folder (when the volume is mounted here)."""
        if spec.memory_bytes is not None:
            return spec.memory_bytes
        folder = self.settings.models_dir / spec.path
        try:
            mtime = folder.stat().st_mtime
        except OSError:
            return None
        return _estimate(str(folder), mtime, name, self.settings.max_model_len)

    def _folder_present(self, path: str) -> bool | None:
        """None when the models volume is not mounted in the operator (nothing can be said)."""
        root: Path = self.settings.models_dir
        return (root / path).is_dir() if root.is_dir() else None
