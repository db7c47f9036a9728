"""Status is derived, diffed and written only when it changes (pure parts)."""

from __future__ import annotations

from llmi_operator.status import Outcome, desired_status, status_patch

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def test_a_repeated_outcome_patches_nothing() -> None:
    where = {"scheduled": True, "node": "a", "placement": "gpu", "memory_bytes": 5}
    outcome = Outcome("Ready", "RuntimeReady", ready_replicas=1, endpoint="http://llmi-m.ns.svc:8000", **where)  # type: ignore[arg-type]
    first = desired_status({}, outcome, generation=3, last_request=None, now=T0)
    assert first["phase"] == "Ready"
    assert first["endpoint"] == "http://llmi-m.ns.svc:8000"
    assert first["observedGeneration"] == 3
    assert status_patch(first, desired_status(first, outcome, generation=3, last_request=None, now=T0 + 60)) == {}


def test_conditions_keep_their_transition_time_until_they_flip() -> None:
    loading = Outcome("Loading", "Starting", "runtime starting", scheduled=True, node="a", placement="gpu")
    ready = Outcome("Ready", "RuntimeReady", scheduled=True, node="a", placement="gpu", ready_replicas=1, endpoint="e")
    s1 = desired_status({}, loading, generation=1, last_request=None, now=T0)
    s2 = desired_status(s1, ready, generation=1, last_request=None, now=T0 + 30)
    cond = {c["type"]: c for c in s2["conditions"]}
    assert cond["Ready"]["status"] == "True"
    assert cond["Ready"]["lastTransitionTime"] == "2026-01-01T00:00:30Z"
    assert cond["Scheduled"]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    patch = status_patch(s1, s2)
    assert set(patch) == {"phase", "message", "replicas", "endpoint", "conditions"}
    assert patch["message"] is None  # removed: Ready says nothing more


def test_scaled_down_clears_where_it_ran_and_mirrors_the_last_request() -> None:
    ready = Outcome("Ready", "RuntimeReady", scheduled=True, node="a", placement="gpu", ready_replicas=1, endpoint="e")
    s1 = desired_status({}, ready, generation=1, last_request=None, now=T0)
    down = Outcome("Evicted", "Evicted", "scaled to zero to make room for x", memory_bytes=7)
    s2 = desired_status(s1, down, generation=2, last_request="2026-01-01T00:01:00+00:00", now=T0 + 90)
    patch = status_patch(s1, s2)
    assert patch["node"] is None
    assert patch["endpoint"] is None
    assert patch["placement"] is None
    assert patch["lastRequestTime"] == "2026-01-01T00:01:00Z"
    assert patch["memory"] == 7
