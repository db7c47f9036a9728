"""The status a LocalModel should show for what reconcile found, and the patch that gets it there.

Why a diff: status is written only when something in it changes (a no-op reconcile writes
nothing, so the timer does not flood the API server or wake every watcher), and a condition keeps
its ``lastTransitionTime`` until its status really flips.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from llmi.localmodel import Phase, format_time, parse_time
from llmi.planner import gib

MANAGED = (
    "phase",
    "message",
    "node",
    "placement",
    "memory",
    "replicas",
    "endpoint",
    "lastRequestTime",
    "observedGeneration",
    "conditions",
)


@dataclass(frozen=True)
class Outcome:
    """What one reconcile pass concluded about a model."""

    phase: Phase
    reason: str  # CamelCase, for the conditions: RuntimeReady, WaitingForRoom, Unschedulable, ...
    message: str = ""
    scheduled: bool = False  # the Deployment is scaled up on ``node`` (False while only reserved)
    node: str | None = None  # where it runs, or where room is being made for it
    placement: str | None = None
    memory_bytes: int | None = None  # what the node budget counts for it (its estimate when not placed)
    ready_replicas: int = 0
    endpoint: str | None = None  # only once Ready: a set endpoint means "send requests here"


def _condition(
    current: list[Mapping[str, Any]], kind: str, ok: bool, reason: str, message: str, generation: int, now: float
) -> dict[str, Any]:
    status = "True" if ok else "False"
    previous = next((c for c in current if c.get("type") == kind), None)
    keep = previous is not None and previous.get("status") == status and previous.get("lastTransitionTime")
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": previous["lastTransitionTime"] if keep and previous else format_time(now),
        "observedGeneration": generation,
    }


def scheduled_message(outcome: Outcome) -> str:
    where = f"node {outcome.node}" if outcome.node else "a node the scheduler picks"
    memory = f", {gib(outcome.memory_bytes)} of its budget" if outcome.memory_bytes else ""
    return f"{where}, placement {outcome.placement}{memory}"


def desired_status(
    current: Mapping[str, Any], outcome: Outcome, *, generation: int, last_request: str | None, now: float
) -> dict[str, Any]:
    """The full managed part of the status for ``outcome`` (absent keys are to be removed)."""
    conditions = list(current.get("conditions") or [])
    ready = outcome.phase == "Ready"
    scheduled_reason = "Placed" if outcome.scheduled else outcome.reason
    scheduled_text = scheduled_message(outcome) if outcome.scheduled else outcome.message
    status: dict[str, Any] = {
        "phase": outcome.phase,
        "replicas": outcome.ready_replicas,
        "observedGeneration": generation,
        "conditions": [
            _condition(conditions, "Ready", ready, outcome.reason, outcome.message, generation, now),
            _condition(conditions, "Scheduled", outcome.scheduled, scheduled_reason, scheduled_text, generation, now),
        ],
    }
    optional = {
        "message": outcome.message or None,
        "node": outcome.node,
        "placement": outcome.placement,
        "memory": outcome.memory_bytes,
        "endpoint": outcome.endpoint if ready else None,
    }
    status.update({k: v for k, v in optional.items() if v is not None})
    when = parse_time(last_request)
    if when is not None:
        status["lastRequestTime"] = format_time(when)
    elif current.get("lastRequestTime"):
        status["lastRequestTime"] = current["lastRequestTime"]
    return status


def status_patch(current: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """Only the managed keys that differ; ``None`` removes a key (JSON merge patch)."""
    return {k: desired.get(k) for k in MANAGED if current.get(k) != desired.get(k)}
