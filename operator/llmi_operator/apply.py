"""Write what a Plan says: children, the model's own marks, victims, events, status. Nothing else.

Why apart from the plan: the writes are the only I/O a pass does after reading, in one fixed order
(children before status, a victim's guarded mark before its status), so a restarted or repeated
pass converges on the same objects; every write that finds nothing to change is skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from llmi.localmodel import ANNOTATION_LAST_REQUEST, GROUP, PLURAL, VERSION
from llmi_operator.children import patch_ops
from llmi_operator.kube import JSON_PATCH, Conflict, Kube, api_path
from llmi_operator.plan import Plan, VictimWrite
from llmi_operator.status import Outcome, desired_status, status_patch

log = logging.getLogger("llmi.operator")
Notify = Callable[[Mapping[str, Any], str, str, str], None]  # (object, type, reason, message)


def lm_path(namespace: str, name: str | None = None, sub: str | None = None) -> str:
    return api_path(f"{GROUP}/{VERSION}", PLURAL, namespace, name, sub)


class Applier:
    """Carries out Plans through a ``Kube`` port; ``notify`` posts Kubernetes Events."""

    def __init__(self, kube: Kube, notify: Notify, clock: Callable[[], float]) -> None:
        self.kube = kube
        self.notify = notify
        self.clock = clock

    def apply(self, body: Mapping[str, Any], plan: Plan, deployment: Mapping[str, Any] | None = None) -> None:
        """``deployment``: the Deployment as the pass observed it (saves reading it again)."""
        meta = body["metadata"]
        ns, name = meta["namespace"], meta["name"]
        if plan.own_patch is not None:
            self.kube.patch(lm_path(ns, name), dict(plan.own_patch))
        if plan.service is not None:
            self.ensure(api_path("v1", "services", ns), plan.service)
        if plan.deployment is not None:
            self.ensure(api_path("apps/v1", "deployments", ns), plan.deployment, deployment)
        for victim in plan.victims:
            self.victim(ns, victim)
        for kind, reason, message in plan.events:
            self.notify(body, kind, reason, message)
        self.announce(body, plan.outcome)
        self.write_status(body, plan.outcome)

    def victim(self, ns: str, victim: VictimWrite) -> bool:
        """A guarded write to another model; False when it changed since the decision (decide again)."""
        try:
            written = self.kube.patch(lm_path(ns, victim.name), dict(victim.patch))
        except Conflict:
            return False
        if written is None:
            return False
        self.kube.patch(lm_path(ns, victim.name, "status"), {"status": dict(victim.status)})
        log.info("%s/%s: %s for %s on node %s", ns, victim.name, victim.action, victim.for_model, victim.node)
        self.notify(written, *victim.event)
        return True

    def ensure(
        self, collection: str, desired: dict[str, Any], observed: Mapping[str, Any] | None = None
    ) -> Mapping[str, Any] | None:
        """Get (unless the pass just read it as ``observed``: only passes of this model, which hold its
        lock, write its children), create or patch one child by its deterministic name; nothing is
        written when it matches."""
        path = f"{collection}/{desired['metadata']['name']}"
        if observed is None:
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

    def announce(self, body: Mapping[str, Any], outcome: Outcome) -> None:
        status = body.get("status") or {}
        if status.get("phase") == outcome.phase and status.get("message", "") == outcome.message:
            return
        meta = body["metadata"]
        log.info("%s/%s: %s (%s) %s", meta["namespace"], meta["name"], outcome.phase, outcome.reason, outcome.message)
        if outcome.phase == "Failed":
            self.notify(body, "Warning", outcome.reason, outcome.message)
        elif outcome.phase == "Ready" and status.get("phase") != "Ready":
            self.notify(body, "Normal", "Ready", f"serving at {outcome.endpoint} on node {outcome.node}")

    def write_status(self, body: Mapping[str, Any], outcome: Outcome) -> None:
        meta = body["metadata"]
        current = body.get("status") or {}
        last_request = (meta.get("annotations") or {}).get(ANNOTATION_LAST_REQUEST)
        desired = desired_status(
            current, outcome, generation=int(meta.get("generation") or 0), last_request=last_request, now=self.clock()
        )
        patch = status_patch(current, desired)
        if patch:
            self.kube.patch(lm_path(meta["namespace"], meta["name"], "status"), {"status": patch})
