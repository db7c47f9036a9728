"""The per-node memory budget: which node a model scales up on, and who makes room. Pure.

The operator, not the GPU device plugin, schedules accelerator memory (several runtime pods share
one GPU), so before a model scales up it is given a node whose budget still holds it, or room is
made there by scaling least recently used models to zero. Each node is planned with the shared
planner (``llmi.planner.plan``), so the rules are the embedded mode's: least recently used first,
only as many as needed, never pinned ones, never ones still starting or still going away.

Why pure: the promise "no node's models ever add up to more than its budget" is property-tested
here, away from the API calls that carry the decision out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from llmi.modeltypes import ModelType
from llmi.planner import Budget, Load, Loaded, Placement, PlacementKind, PlacementOverride, Wait, gib, placement, plan
from llmi.planner import Refuse as PlanRefuse

UNLIMITED_PER_TYPE = 1_000_000  # Kubernetes limits models by memory only, not per type


@dataclass(frozen=True)
class Node:
    """A node that can host models, with its budget (the annotation, else the operator default)."""

    name: str
    budget_bytes: int
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[Mapping[str, Any], ...] = ()
    gpu: bool = True
    schedulable: bool = True
    gpu_memory_bytes: int | None = None


@dataclass(frozen=True)
class Occupant:
    """A model that holds part of a node's budget: running, starting, reserved or still going away.

    ``evictable`` is true only for a model that is Ready, still wanted and not draining already; one
    that is loading or whose pod is terminating cannot make room any sooner by being asked.
    """

    name: str
    node: str
    type: ModelType
    footprint_bytes: int
    last_used: float
    pinned: bool = False
    evictable: bool = True
    in_flight: int = 0  # requests the routers report in flight there
    draining_for: str | None = None  # finishing its requests before it makes room for this model


@dataclass(frozen=True)
class Demand:
    """The model asking to scale up."""

    name: str
    type: ModelType
    memory_bytes: int
    placement: PlacementOverride = "auto"
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True)
class Place:
    """Scale up now on ``node`` (None: a cpu model, left to the Kubernetes scheduler)."""

    node: str | None
    placement: PlacementKind
    footprint_bytes: int


@dataclass(frozen=True)
class Evict:
    """Drain ``victims`` on ``node`` (idle ones first chosen), then scale them to zero; scale up
    once their pods are gone."""

    node: str
    victims: tuple[str, ...]
    placement: PlacementKind
    footprint_bytes: int


@dataclass(frozen=True)
class Unschedulable:
    """No node can ever hold the model as things stand (budgets, pins, selectors)."""

    reason: str


# Wait is the planner's own: room held by models still starting or going away; decide again shortly.
Decision = Place | Evict | Wait | Unschedulable


def tolerates(tolerations: Sequence[Mapping[str, Any]], taint: Mapping[str, Any]) -> bool:
    """Kubernetes' toleration rule for one taint (only NoSchedule/NoExecute taints keep pods off)."""
    if taint.get("effect") not in ("NoSchedule", "NoExecute"):
        return True
    for t in tolerations:
        if t.get("effect") not in (None, "", taint.get("effect")):
            continue
        if t.get("operator") == "Exists" and t.get("key") in (None, "", taint.get("key")):
            return True
        if t.get("key") == taint.get("key") and t.get("value", "") == taint.get("value", ""):
            return True
    return False


def eligible(node: Node, demand: Demand) -> bool:
    return (
        node.gpu
        and node.schedulable
        and all(node.labels.get(k) == v for k, v in demand.node_selector.items())
        and all(tolerates(demand.tolerations, taint) for taint in node.taints)
    )


BUSY_AFTER = 1e12  # added to a busy model's last use: it goes after every idle one (LRU among the busy)


def merged(occupants: Sequence[Occupant], node: str, exclude: str, busy_may_go: bool = False) -> list[Loaded]:
    """One Loaded per model on ``node`` (a model seen both as pod and Deployment counts once).

    Busy models (requests in flight) are never evicted at once; with ``busy_may_go`` they count as
    idle but most recently used, so the planner takes idle ones first and busy ones only if it must
    (they drain before they stop)."""
    by_name: dict[str, Loaded] = {}
    for o in occupants:
        if o.node != node or o.name == exclude:
            continue
        seen = by_name.get(o.name)
        loading = not o.evictable or (seen is not None and seen.loading)
        footprint = max(o.footprint_bytes, seen.footprint_bytes if seen else 0)
        in_flight = max(o.in_flight, seen.in_flight if seen else 0)
        last = o.last_used
        if in_flight and busy_may_go:
            in_flight, last = 0, BUSY_AFTER + o.last_used
        by_name[o.name] = Loaded(o.name, o.type, footprint, last, o.pinned, in_flight=in_flight, loading=loading)
    return sorted(by_name.values(), key=lambda m: m.name)


def node_budget(node: Node, offload_gpu_bytes: int, offload_auto: bool = False, utilization: float = 1.0) -> Budget:
    """The node's budget as the embedded planner sees a GPU: ``utilization`` of it may be planned,
    and with ``offload_auto`` a model with placement auto above ``offload_gpu_bytes`` is offloaded
    (LLM_GPU_MEMORY_UTILIZATION and LLM_ENABLE_GPU_MEMORY_OFFLOAD, as in `llmi serve`)."""
    return Budget(int(node.budget_bytes * utilization), True, offload_auto, offload_gpu_bytes, UNLIMITED_PER_TYPE)


def _cpu_only(demand: Demand) -> Place | None:
    return Place(None, "cpu", 0) if demand.placement == "cpu" else None


def decide(
    nodes: Sequence[Node],
    occupants: Sequence[Occupant],
    demand: Demand,
    offload_gpu_bytes: int,
    *,
    offload_auto: bool = False,
    utilization: float = 1.0,
) -> Decision:
    """Where ``demand`` scales up: the best-fitting node that needs no eviction, else the one that
    needs the fewest bytes evicted; Wait when only models still starting or stopping stand in
    the way; Unschedulable when no node could hold it even after evicting every unpinned model."""
    cpu = _cpu_only(demand)
    if cpu is not None:
        return cpu
    candidates = [n for n in nodes if eligible(n, demand)]
    if not candidates:
        return Unschedulable(f"no schedulable GPU node matches the nodeSelector and tolerations of {demand.name}")
    for busy_may_go in (False, True):  # idle victims anywhere before busy ones
        decision = _decide(candidates, occupants, demand, offload_gpu_bytes, offload_auto, utilization, busy_may_go)
        if not isinstance(decision, Wait):
            return decision
    return decision


def _decide(
    candidates: Sequence[Node],
    occupants: Sequence[Occupant],
    demand: Demand,
    offload_gpu_bytes: int,
    offload_auto: bool,
    utilization: float,
    busy_may_go: bool,
) -> Decision:
    options: list[tuple[tuple[int, int, int, str], Place | Evict]] = []
    waits: list[str] = []
    refusals: list[str] = []
    for node in sorted(candidates, key=lambda n: n.name):
        budget = node_budget(node, offload_gpu_bytes, offload_auto, utilization)
        where = placement(demand.memory_bytes, budget, demand.placement)
        if not isinstance(where, Placement):
            refusals.append(
                f"{node.name}: {demand.name} needs {gib(demand.memory_bytes)}, the budget is {gib(budget.total_bytes)}"
            )
            continue
        loaded = merged(occupants, node.name, demand.name, busy_may_go)
        answer = plan(budget, loaded, demand.name, demand.type, where.footprint_bytes)
        if isinstance(answer, PlanRefuse):
            refusals.append(f"{node.name}: {answer.reason}")
        elif isinstance(answer, Wait):
            waits.append(f"{node.name}: {answer.reason}")
        elif isinstance(answer, Load):
            size = {m.name: m.footprint_bytes for m in loaded}
            evicted = sum(size[v] for v in answer.evict)
            free = budget.total_bytes - sum(size.values()) + evicted - where.footprint_bytes
            key = (len(answer.evict) > 0, evicted, free, node.name)
            if answer.evict:
                options.append((key, Evict(node.name, answer.evict, where.kind, where.footprint_bytes)))
            else:
                options.append((key, Place(node.name, where.kind, where.footprint_bytes)))
    if options:
        return min(options, key=lambda o: o[0])[1]
    if waits:
        return Wait("; ".join(waits))
    return Unschedulable("fits on no node: " + "; ".join(refusals))
