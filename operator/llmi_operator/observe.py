"""Read what the API server says (Nodes, LocalModels, Deployments, Pods) into the budget's and the
status's inputs. Pure: lists of API objects in, frozen values out.

Who holds a node's budget: every live runtime pod on it (a terminating pod still holds its GPU
memory), every Deployment scaled to one and pinned to it, and every model that is waiting there
for its victims to go (phase Loading with ``status.node`` set). That last one is a reservation:
the room made for it is not taken by another model that happens to ask a moment later.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, cast

from llmi.localmodel import (
    ANNOTATION_FOOTPRINT,
    ANNOTATION_GPU_MEMORY,
    ANNOTATION_LAST_REQUEST,
    ANNOTATION_NODE_BUDGET,
    ANNOTATION_PLACEMENT,
    LABEL_MODEL,
    busy,
    drain_of,
    label_value,
    parse_time,
    reports_of,
)
from llmi.modeltypes import ModelType
from llmi.planner import PlacementKind
from llmi_operator.budget import Node, Occupant
from llmi_operator.children import HOSTNAME_LABEL, Placed
from llmi_operator.localmodel import InvalidSpec, parse_quantity, parse_spec

GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRESENT_LABEL = "nvidia.com/gpu.present"
GPU_MEMORY_LABEL = "nvidia.com/gpu.memory"  # GPU feature discovery: MiB of one GPU
STUCK_REASONS = {
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "CreateContainerConfigError",
    "CreateContainerError",
    "InvalidImageName",
}


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def node_from(obj: Mapping[str, Any], default_budget: int) -> Node:
    """A Node object as the budget sees it; a node with a GPU, GPU labels or a budget annotation hosts models."""
    meta = _meta(obj)
    labels = dict(meta.get("labels") or {})
    annotations = meta.get("annotations") or {}
    status = obj.get("status") or {}
    budget = default_budget
    if ANNOTATION_NODE_BUDGET in annotations:
        try:
            budget = parse_quantity(annotations[ANNOTATION_NODE_BUDGET])
        except InvalidSpec:
            budget = default_budget
    gpus = max(_int((status.get(k) or {}).get(GPU_RESOURCE)) for k in ("capacity", "allocatable"))
    gpu = gpus > 0 or labels.get(GPU_PRESENT_LABEL) == "true" or ANNOTATION_NODE_BUDGET in annotations
    gpu_memory = _int(labels.get(GPU_MEMORY_LABEL)) * 1024 * 1024 or None
    spec = obj.get("spec") or {}
    return Node(
        name=meta["name"],
        budget_bytes=budget,
        labels=labels,
        taints=tuple(spec.get("taints") or ()),
        gpu=gpu,
        schedulable=not spec.get("unschedulable", False),
        gpu_memory_bytes=gpu_memory,
    )


def pod_is_live(pod: Mapping[str, Any]) -> bool:
    """A pod that holds (or will hold) memory: not yet finished."""
    return (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")


def pod_node(pod: Mapping[str, Any]) -> str | None:
    spec = pod.get("spec") or {}
    return spec.get("nodeName") or (spec.get("nodeSelector") or {}).get(HOSTNAME_LABEL)


def pod_problem(pods: Iterable[Mapping[str, Any]]) -> str | None:
    """Why a runtime container cannot start (crash loop, image pull), from the pods' statuses."""
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in STUCK_REASONS:
                detail = waiting.get("message") or ""
                return f"pod {_meta(pod).get('name')}: {waiting['reason']}" + (f": {detail}" if detail else "")
    return None


def placed_from_deployment(deployment: Mapping[str, Any], memory_bytes: int) -> Placed | None:
    """The placement a Deployment carries (pod template annotations and node pin), or None."""
    template = (deployment.get("spec") or {}).get("template") or {}
    annotations = _meta(template).get("annotations") or {}
    kind = annotations.get(ANNOTATION_PLACEMENT)
    if kind not in ("gpu", "offload", "cpu"):
        return None
    node = ((template.get("spec") or {}).get("nodeSelector") or {}).get(HOSTNAME_LABEL)
    if kind != "cpu" and not node:
        return None
    return Placed(
        node=node,
        placement=cast(PlacementKind, kind),
        footprint_bytes=_int(annotations.get(ANNOTATION_FOOTPRINT)),
        memory_bytes=memory_bytes,
        gpu_memory_bytes=_int(annotations.get(ANNOTATION_GPU_MEMORY)) or None,
    )


def deployment_replicas(deployment: Mapping[str, Any] | None) -> int:
    return _int(((deployment or {}).get("spec") or {}).get("replicas"), 1) if deployment else 0


def ready_replicas(deployment: Mapping[str, Any] | None) -> int:
    """Ready pods, trusted only when the Deployment controller has seen the latest spec."""
    if not deployment:
        return 0
    status = deployment.get("status") or {}
    generation = _int(_meta(deployment).get("generation"))
    if generation and _int(status.get("observedGeneration")) < generation:
        return 0
    return _int(status.get("readyReplicas"))


def last_used(body: Mapping[str, Any]) -> float:
    """When the model last served (router's annotation), else when it became Ready, else created."""
    annotations = _meta(body).get("annotations") or {}
    status = body.get("status") or {}
    ready_since = next(
        (c.get("lastTransitionTime") for c in status.get("conditions") or [] if c.get("type") == "Ready"), None
    )
    for value in (annotations.get(ANNOTATION_LAST_REQUEST), status.get("lastRequestTime"), ready_since):
        when = parse_time(value)
        if when is not None:
            return when
    return parse_time(_meta(body).get("creationTimestamp")) or 0.0


def _model_type(spec: Mapping[str, Any]) -> ModelType:
    try:
        return ModelType(str(spec.get("type")))
    except ValueError:
        return ModelType.CHAT


def _footprint(obj: Mapping[str, Any], fallback: int) -> int:
    value = (_meta(obj).get("annotations") or {}).get(ANNOTATION_FOOTPRINT)
    return _int(value, fallback) if value is not None else fallback


def occupants(
    models: Iterable[Mapping[str, Any]],
    deployments: Iterable[Mapping[str, Any]],
    pods: Iterable[Mapping[str, Any]],
    now: float = 0.0,
    stale_s: float = float("inf"),
) -> list[Occupant]:
    """Everything that holds part of some node's budget, one entry per (model, node, source).

    Requests in flight come from the routers' fresh reports; a model draining for another one is
    not evictable again (it is already going)."""
    by_label: dict[str, list[Mapping[str, Any]]] = {}
    for pod in pods:
        if pod_is_live(pod):
            by_label.setdefault((_meta(pod).get("labels") or {}).get(LABEL_MODEL, ""), []).append(pod)
    deployments_by_label = {(_meta(d).get("labels") or {}).get(LABEL_MODEL, ""): d for d in deployments}
    found: list[Occupant] = []
    for body in models:
        name = _meta(body)["name"]
        raw = body.get("spec") or {}
        try:
            spec = parse_spec(raw)
        except InvalidSpec:
            spec = None
        memory = (spec.memory_bytes if spec else None) or 0
        wanted = spec is not None and spec.replicas == 1
        status = body.get("status") or {}
        annotations = _meta(body).get("annotations") or {}
        draining = drain_of(annotations)
        evictable = wanted and status.get("phase") in ("Ready", "Failed") and draining is None
        common: dict[str, Any] = {
            "type": _model_type(raw),
            "last_used": last_used(body),
            "pinned": bool(spec and spec.pinned),
            "in_flight": busy(reports_of(annotations), now, stale_s),
            "draining_for": draining.for_model if draining is not None and wanted else None,
        }
        for pod in by_label.pop(label_value(name), []):
            node = pod_node(pod)
            if node:
                found.append(
                    Occupant(name, node, footprint_bytes=_footprint(pod, memory), evictable=evictable, **common)
                )
        deployment = deployments_by_label.get(label_value(name))
        if deployment is not None and deployment_replicas(deployment) > 0:
            placed = placed_from_deployment(deployment, memory)
            if placed is not None and placed.node is not None:
                found.append(
                    Occupant(name, placed.node, footprint_bytes=placed.footprint_bytes, evictable=evictable, **common)
                )
        if wanted and status.get("phase") == "Loading" and status.get("node"):
            reserved = _int(status.get("memory"), memory)
            found.append(Occupant(name, status["node"], footprint_bytes=reserved, evictable=False, **common))
    for orphans in by_label.values():  # pods of deleted models still hold memory until they go
        for pod in orphans:
            node = pod_node(pod)
            if node:
                found.append(
                    Occupant(
                        f"pod/{_meta(pod).get('name')}", node, ModelType.CHAT, _footprint(pod, 0), 0.0, evictable=False
                    )
                )
    return found
