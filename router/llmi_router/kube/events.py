"""Model events on Kubernetes, read off the LocalModel watch: what `/v1/events` and the status page
show. The operator does the work and writes the phase; the router sees each phase change once per
watch event and names it with the embedded server's event kinds, so readers need not care which
shape they talk to. Pure: the control plane publishes what ``event_kind`` returns.
"""

from __future__ import annotations

from llmi.localmodel import LocalModelView

# Phase as the router shows it (a Ready model being drained reads as Draining) -> event kind.
_KINDS = {
    "Loading": "loading",
    "Ready": "ready",
    "Draining": "evicting",
    "Evicted": "stopped",
    "Failed": "failed",
}
_RESIDENT = frozenset({"Loading", "Ready", "Draining"})


def shown_phase(view: LocalModelView) -> str:
    """The phase /v1/models and the events show: Draining while a Ready model drains."""
    return "Draining" if view.drain is not None and view.phase == "Ready" else view.phase


def event_kind(before: str | None, after: str) -> str | None:
    """The event for a change of shown phase (``before`` None: the model is new), or None.

    Available after a resident phase is a scale to zero (unload, idle timeout): ``stopped``; a
    model first seen is ``found`` (its first phase, Available, is no news)."""
    if before == after:
        return None
    if before is None:
        return "found"
    if after == "Available":
        return "stopped" if before in _RESIDENT else None
    return _KINDS.get(after)
