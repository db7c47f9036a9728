"""One reconcile pass as a pure function: frozen inputs in, a Plan (children, status, victims) out.

Why pure: every rule of a pass (scale down, keep running, drain before evict, wait for room, fail
with a reason) is here, testable without an API server; ``apply.py`` only writes what a Plan says,
and ``reconcile.py`` only reads, locks and calls the two.

The drain protocol, as the operator plays it: a victim is first marked ``llmi.dev/drain`` (routers
stop sending it new requests and report what they still have in flight); once the mark is older
than the grace period and no fresh report counts a request there, or the drain timeout passed,
the victim is scaled to zero (marked ``llmi.dev/evicted-by``). The model that asked waits for it
in Loading with the node reserved, and scales up once the victim's pod is gone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from llmi.localmodel import (
    ANNOTATION_DRAIN,
    ANNOTATION_EVICTED_BY,
    Drain,
    DrainState,
    Report,
    busy,
    drain_of,
    drain_state,
    encode_drain,
    reports_of,
)
from llmi.planner import Wait
from llmi_operator import budget as b
from llmi_operator.children import ChildConfig, Placed, desired_deployment, desired_service, endpoint
from llmi_operator.localmodel import ModelRef, ModelSpec
from llmi_operator.observe import deployment_replicas, placed_from_deployment, pod_node, pod_problem, ready_replicas
from llmi_operator.status import Outcome


@dataclass(frozen=True)
class Timing:
    """The operator's clock-driven rules (OperatorSettings): retries and the drain protocol."""

    retry_s: float
    drain_grace_s: float
    drain_timeout_s: float
    report_stale_s: float
    offload_gpu_bytes: int = 0
    offload_auto: bool = False
    utilization: float = 1.0


@dataclass(frozen=True)
class ModelInputs:
    """What one pass read about its model (fresh from the API server) and the time it read it."""

    body: Mapping[str, Any]
    ref: ModelRef
    spec: ModelSpec | None
    invalid: str | None
    deployment: Mapping[str, Any] | None
    pods: tuple[Mapping[str, Any], ...]  # live pods only
    memory: int | None
    folder: bool | None  # None: the models volume is not mounted in the operator
    now: float


@dataclass(frozen=True)
class ClusterInputs:
    """What a budget decision needs: nodes, every LocalModel, and who holds which node's budget."""

    nodes: tuple[b.Node, ...]
    models: Mapping[str, Mapping[str, Any]]
    occupants: tuple[b.Occupant, ...]


@dataclass(frozen=True)
class VictimWrite:
    """A write to another model: ``drain`` marks it, ``stop`` scales it to zero for ``for_model``.
    Guarded by ``resource_version`` (what the decision read: a pin set meanwhile wins)."""

    name: str
    resource_version: str
    action: Literal["drain", "stop"]
    for_model: str
    node: str | None
    patch: Mapping[str, Any]
    status: Mapping[str, Any]
    event: tuple[str, str, str]  # type, reason, message on the victim


@dataclass(frozen=True)
class Plan:
    """Everything one pass writes, in the order the applier writes it."""

    outcome: Outcome
    service: dict[str, Any] | None = None
    deployment: dict[str, Any] | None = None
    own_patch: Mapping[str, Any] | None = None  # a merge patch of the model itself (annotations, spec)
    victims: tuple[VictimWrite, ...] = ()
    events: tuple[tuple[str, str, str], ...] = ()
    retry_after: float | None = None
    invalid: str | None = None


@dataclass(frozen=True)
class NeedsCluster:
    """The pass must decide where the model goes: read the cluster (under the nodes' locks) and plan again."""

    demand: b.Demand
    reason: str = field(default="scale up")


def stop_patch(resource_version: str, for_model: str) -> dict[str, Any]:
    meta = {
        "resourceVersion": resource_version,
        "annotations": {ANNOTATION_EVICTED_BY: for_model, ANNOTATION_DRAIN: None},
    }
    return {"metadata": meta, "spec": {"replicas": 0}}


def drain_patch(resource_version: str, drain: Drain) -> dict[str, Any]:
    return {"metadata": {"resourceVersion": resource_version, "annotations": {ANNOTATION_DRAIN: encode_drain(drain)}}}


def _default_placed(spec: ModelSpec, memory: int | None) -> Placed:
    kind = spec.placement if spec.placement in ("cpu", "offload") else "gpu"
    return Placed(None, kind, 0, memory or 0)


def plan_pass(
    inputs: ModelInputs, cluster: ClusterInputs | None, config: ChildConfig, timing: Timing
) -> Plan | NeedsCluster:
    """The pass for one model; NeedsCluster when a budget decision is due and ``cluster`` is None."""
    if inputs.spec is None:
        outcome = Outcome("Failed", "InvalidSpec", f"invalid spec: {inputs.invalid}")
        return Plan(outcome, invalid=inputs.invalid)
    ref, spec, memory = inputs.ref, inputs.spec, inputs.memory
    meta = inputs.body.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    drain = drain_of(annotations)
    service = desired_service(ref)
    kept = placed_from_deployment(inputs.deployment, memory or 0) if inputs.deployment else None

    def deployment(placed: Placed | None, replicas: int) -> dict[str, Any]:
        """Scaled down, a Deployment keeps its last placement (no pointless template change)."""
        return desired_deployment(ref, spec, placed or kept or _default_placed(spec, memory), replicas, config)

    if spec.replicas == 0:
        own = {"metadata": {"annotations": {ANNOTATION_DRAIN: None}}} if drain is not None else None
        return Plan(_scaled_down(annotations, spec, memory, inputs.folder), service, deployment(kept, 0), own)
    own_patch = (
        {"metadata": {"annotations": {ANNOTATION_EVICTED_BY: None}}} if ANNOTATION_EVICTED_BY in annotations else None
    )
    running = kept if kept is not None and deployment_replicas(inputs.deployment) > 0 else None
    if running is not None:
        if drain is not None:
            return _draining(inputs, drain, running, service, deployment, timing)
        outcome = _running(ref, running, inputs.deployment, inputs.pods)
        return Plan(outcome, service, deployment(running, 1), own_patch)
    blocked = _blocked(ref, spec, memory, inputs.folder, inputs.pods, timing)
    if blocked is not None:
        outcome, retry = blocked
        return Plan(outcome, service, deployment(kept, 0), own_patch, retry_after=retry)
    assert memory is not None
    demand = b.Demand(ref.name, spec.type, memory, spec.placement, spec.node_selector, spec.tolerations)
    if cluster is None:
        return NeedsCluster(demand)
    return _decided(inputs, cluster, demand, service, deployment, own_patch, timing)


def _drain_state(drain: Drain, reports: tuple[Report, ...], now: float, timing: Timing) -> DrainState:
    """Whether a victim marked ``drain`` may stop, from the routers' in-flight reports."""
    return drain_state(
        drain,
        reports,
        now,
        grace_s=timing.drain_grace_s,
        stale_s=timing.report_stale_s,
        timeout_s=timing.drain_timeout_s,
    )


def _draining(
    inputs: ModelInputs, drain: Drain, running: Placed, service: dict[str, Any], deployment: Any, timing: Timing
) -> Plan:
    """A victim's own pass: it keeps serving what it has; once drained (or timed out) it stops."""
    reports = reports_of((inputs.body.get("metadata") or {}).get("annotations") or {})
    state = _drain_state(drain, reports, inputs.now, timing)
    if state != "draining":
        victim = _stop(inputs.body, drain.for_model, running.node, state, inputs.now, timing)
        outcome = Outcome("Evicted", "Evicted", f"scaled to zero to make room for {drain.for_model}")
        return Plan(outcome, service, deployment(running, 1), None, (victim,))
    left = busy(reports, inputs.now, timing.report_stale_s)
    message = f"finishing {left} request(s) in flight before making room for {drain.for_model}"
    outcome = Outcome(
        "Draining",
        "Draining",
        message,
        scheduled=True,
        node=running.node,
        placement=running.placement,
        memory_bytes=running.footprint_bytes,
        ready_replicas=ready_replicas(inputs.deployment),
    )
    return Plan(outcome, service, deployment(running, 1), retry_after=timing.retry_s)


def _stop(
    body: Mapping[str, Any], for_model: str, node: str | None, state: str, now: float, timing: Timing
) -> VictimWrite:
    name = body["metadata"]["name"]
    rv = str(body["metadata"].get("resourceVersion") or "")
    if state == "timed_out":
        event = (
            "Warning",
            "DrainTimeout",
            f"requests still in flight after {timing.drain_timeout_s:.0f}s; scaled to zero for {for_model}",
        )
    else:
        event = ("Normal", "Evicted", f"scaled to zero to make room for {for_model} on node {node}")
    status = {"phase": "Evicted", "message": f"scaled to zero to make room for {for_model}"}
    return VictimWrite(name, rv, "stop", for_model, node, stop_patch(rv, for_model), status, event)


def _decided(
    inputs: ModelInputs,
    cluster: ClusterInputs,
    demand: b.Demand,
    service: dict[str, Any],
    deployment: Any,
    own_patch: Mapping[str, Any] | None,
    timing: Timing,
) -> Plan:
    me = inputs.ref.name
    status = inputs.body.get("status") or {}
    mine = {
        name: body
        for name, body in cluster.models.items()
        if (d := drain_of((body.get("metadata") or {}).get("annotations") or {})) is not None
        and d.for_model == me
        and (body.get("spec") or {}).get("replicas") == 1
    }
    if mine:  # victims are draining for us: stop those that are done, wait for the rest
        return _waiting_for(inputs, cluster, mine, service, deployment, own_patch, timing, status)
    decision = b.decide(
        cluster.nodes,
        cluster.occupants,
        demand,
        timing.offload_gpu_bytes,
        offload_auto=timing.offload_auto,
        utilization=timing.utilization,
    )
    memory = demand.memory_bytes
    if isinstance(decision, b.Place):
        gpu_memory = {n.name: n.gpu_memory_bytes for n in cluster.nodes}.get(decision.node or "")
        placed = Placed(decision.node, decision.placement, decision.footprint_bytes, memory, gpu_memory)
        starting = Outcome(
            "Loading",
            "Starting",
            f"runtime starting on {decision.node or 'a node'}",
            scheduled=True,
            node=decision.node,
            placement=decision.placement,
            memory_bytes=decision.footprint_bytes,
        )
        return Plan(starting, service, deployment(placed, 1), own_patch)
    if isinstance(decision, b.Unschedulable):
        return Plan(
            Outcome("Failed", "Unschedulable", decision.reason, memory_bytes=memory),
            service,
            deployment(None, 0),
            own_patch,
        )
    if isinstance(decision, Wait):
        # Room made for us (victims stopped, their pods still going) stays reserved meanwhile.
        reserved = status.get("node") if isinstance(status.get("memory"), int) else None
        waiting = Outcome(
            "Loading",
            "WaitingForRoom",
            f"waiting for room: {decision.reason}",
            node=reserved,
            placement=status.get("placement") if reserved else None,
            memory_bytes=status["memory"] if reserved else memory,
        )
        return Plan(waiting, service, deployment(None, 0), own_patch, retry_after=timing.retry_s)
    victims = tuple(
        _drain(cluster.models[v], me, decision.node, inputs.now) for v in decision.victims if v in cluster.models
    )
    names = ", ".join(v.name for v in victims)
    reserved = Outcome(
        "Loading",
        "WaitingForRoom",
        f"making room on node {decision.node}: draining {names}",
        node=decision.node,
        placement=decision.placement,
        memory_bytes=decision.footprint_bytes,
    )
    event = ("Normal", "Evicting", f"draining {names} to make room on node {decision.node}")
    return Plan(reserved, service, deployment(None, 0), own_patch, victims, (event,), retry_after=timing.retry_s)


def _drain(body: Mapping[str, Any], for_model: str, node: str, now: float) -> VictimWrite:
    name = body["metadata"]["name"]
    rv = str(body["metadata"].get("resourceVersion") or "")
    message = f"finishing requests in flight before making room for {for_model}"
    return VictimWrite(
        name,
        rv,
        "drain",
        for_model,
        node,
        drain_patch(rv, Drain(for_model, now)),
        {"phase": "Draining", "message": message},
        ("Normal", "Draining", f"{message} on node {node}"),
    )


def _waiting_for(
    inputs: ModelInputs,
    cluster: ClusterInputs,
    victims: Mapping[str, Mapping[str, Any]],
    service: dict[str, Any],
    deployment: Any,
    own_patch: Mapping[str, Any] | None,
    timing: Timing,
    status: Mapping[str, Any],
) -> Plan:
    writes: list[VictimWrite] = []
    left: list[str] = []
    for name, body in sorted(victims.items()):
        annotations = (body.get("metadata") or {}).get("annotations") or {}
        drain = drain_of(annotations)
        assert drain is not None
        reports = reports_of(annotations)
        state = _drain_state(drain, reports, inputs.now, timing)
        node = (body.get("status") or {}).get("node")
        if state == "draining":
            left.append(f"{name} ({busy(reports, inputs.now, timing.report_stale_s)} in flight)")
        else:
            writes.append(_stop(body, inputs.ref.name, node, state, inputs.now, timing))
    where = status.get("node") or next((o.node for o in cluster.occupants if o.name in victims), None)
    message = f"making room on node {where}: " + (
        f"waiting for {', '.join(left)} to drain" if left else f"waiting for {', '.join(victims)} to stop"
    )
    reserved = Outcome(
        "Loading",
        "WaitingForRoom",
        message,
        node=where,
        placement=status.get("placement"),
        memory_bytes=status.get("memory") if isinstance(status.get("memory"), int) else inputs.memory,
    )
    return Plan(reserved, service, deployment(None, 0), own_patch, tuple(writes), retry_after=timing.retry_s)


def _blocked(
    ref: ModelRef,
    spec: ModelSpec,
    memory: int | None,
    folder: bool | None,
    pods: tuple[Mapping[str, Any], ...],
    timing: Timing,
) -> tuple[Outcome, float | None] | None:
    """Why a model cannot be placed before the budget is even asked, or None."""
    if folder is False:
        missing = f"model folder {spec.path} is missing from the models volume"
        return Outcome("Failed", "FolderMissing", missing, memory_bytes=memory), None
    if memory is None:
        return Outcome("Failed", "MemoryUnknown", "spec.memory is not set and the folder cannot be measured"), None
    if pods:
        stopping = f"the previous pod of {ref.name} is still stopping"
        return Outcome("Loading", "WaitingForRoom", stopping, memory_bytes=memory), timing.retry_s
    return None


def _scaled_down(annotations: Mapping[str, Any], spec: ModelSpec, memory: int | None, folder: bool | None) -> Outcome:
    evicted_by = annotations.get(ANNOTATION_EVICTED_BY)
    if folder is False:
        missing = f"model folder {spec.path} is missing from the models volume"
        return Outcome("Failed", "FolderMissing", missing, memory_bytes=memory)
    if evicted_by:
        return Outcome("Evicted", "Evicted", f"scaled to zero to make room for {evicted_by}", memory_bytes=memory)
    return Outcome("Available", "ScaledToZero", memory_bytes=memory)


def _running(
    ref: ModelRef, placed: Placed, deployment: Mapping[str, Any] | None, pods: tuple[Mapping[str, Any], ...]
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
