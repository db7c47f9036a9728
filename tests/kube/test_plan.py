"""One reconcile pass as a pure plan: the drain protocol step by step, without an API server."""

from __future__ import annotations

from typing import Any

from llmi.localmodel import ANNOTATION_DRAIN, ANNOTATION_EVICTED_BY, Drain, encode_drain, encode_report, report_key
from llmi_operator.budget import Node
from llmi_operator.children import ChildConfig, Placed, desired_deployment
from llmi_operator.localmodel import parse_spec, ref_of
from llmi_operator.observe import occupants
from llmi_operator.plan import ClusterInputs, ModelInputs, NeedsCluster, Plan, Timing, plan_pass

GIB = 1024**3
CONFIG = ChildConfig("llmi-runtime:1", "", "models", "shared", 45, 180)
TIMING = Timing(retry_s=2.0, drain_grace_s=3.0, drain_timeout_s=300.0, report_stale_s=90.0)
NOW = 10_000.0


def body(name: str, replicas: int, phase: str, **annotations: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "ns",
            "uid": f"uid-{name}",
            "resourceVersion": "7",
            "annotations": annotations,
        },
        "spec": {"path": name, "type": "chat", "memory": "5Gi", "replicas": replicas},
        "status": {"phase": phase},
    }


def running(obj: dict[str, Any]) -> dict[str, Any]:
    """The Deployment of a model that runs on node-a, ready."""
    spec = parse_spec(obj["spec"])
    deployment = desired_deployment(ref_of(obj), spec, Placed("node-a", "gpu", 5 * GIB, 5 * GIB), 1, CONFIG)
    deployment["metadata"]["generation"] = 1
    deployment["status"] = {"observedGeneration": 1, "readyReplicas": 1}
    return deployment


def inputs(obj: dict[str, Any], deployment: dict[str, Any] | None, now: float = NOW) -> ModelInputs:
    return ModelInputs(obj, ref_of(obj), parse_spec(obj["spec"]), None, deployment, (), 5 * GIB, None, now)


def cluster(*models: dict[str, Any]) -> ClusterInputs:
    deployments = [running(m) for m in models if m["spec"]["replicas"] == 1]
    pods = [
        {
            "metadata": {"labels": {"llmi.dev/model": m["metadata"]["name"]}},
            "spec": {"nodeName": "node-a"},
            "status": {},
        }
        for m in models
        if m["spec"]["replicas"] == 1
    ]
    held = occupants(models, deployments, pods, NOW, TIMING.report_stale_s)
    return ClusterInputs((Node("node-a", 8 * GIB),), {m["metadata"]["name"]: m for m in models}, tuple(held))


def test_a_demand_that_needs_room_drains_the_victim_first() -> None:
    victim = body("a", 1, "Ready")
    demand = body("b", 1, "Available")
    assert isinstance(plan_pass(inputs(demand, None), None, CONFIG, TIMING), NeedsCluster)
    plan = plan_pass(inputs(demand, None), cluster(victim, demand), CONFIG, TIMING)
    assert isinstance(plan, Plan)
    (write,) = plan.victims
    assert (write.name, write.action, write.for_model) == ("a", "drain", "b")
    assert write.patch["metadata"]["resourceVersion"] == "7"  # guarded by what the decision read
    assert write.patch["metadata"]["annotations"][ANNOTATION_DRAIN] == encode_drain(Drain("b", NOW))
    assert "spec" not in write.patch  # not scaled down yet
    assert (plan.outcome.phase, plan.outcome.node, plan.retry_after) == ("Loading", "node-a", 2.0)
    assert plan.deployment is not None
    assert plan.deployment["spec"]["replicas"] == 0


def test_the_demand_stops_its_victim_once_drained_and_not_before() -> None:
    mark = encode_drain(Drain("b", NOW - 10))
    busy_victim = body("a", 1, "Draining", **{ANNOTATION_DRAIN: mark, report_key("r1"): encode_report(1, NOW - 5)})
    demand = body("b", 1, "Loading")
    waiting = plan_pass(inputs(demand, None), cluster(busy_victim, demand), CONFIG, TIMING)
    assert isinstance(waiting, Plan)
    assert waiting.victims == ()
    assert "a (1 in flight)" in waiting.outcome.message
    idle_victim = body("a", 1, "Draining", **{ANNOTATION_DRAIN: mark})
    stopping = plan_pass(inputs(demand, None), cluster(idle_victim, demand), CONFIG, TIMING)
    assert isinstance(stopping, Plan)
    (write,) = stopping.victims
    assert (write.action, write.patch["spec"], write.status["phase"]) == ("stop", {"replicas": 0}, "Evicted")
    assert write.patch["metadata"]["annotations"] == {ANNOTATION_EVICTED_BY: "b", ANNOTATION_DRAIN: None}
    assert write.event[1] == "Evicted"


def test_a_draining_model_keeps_serving_and_says_why() -> None:
    victim = body(
        "a",
        1,
        "Ready",
        **{ANNOTATION_DRAIN: encode_drain(Drain("b", NOW - 10)), report_key("r1"): encode_report(2, NOW)},
    )
    plan = plan_pass(inputs(victim, running(victim)), None, CONFIG, TIMING)
    assert isinstance(plan, Plan)
    assert plan.outcome.phase == "Draining"
    assert "finishing 2 request(s)" in plan.outcome.message
    assert plan.outcome.endpoint is None  # routers send nothing new
    assert plan.deployment is not None
    assert plan.deployment["spec"]["replicas"] == 1
    assert plan.victims == ()


def test_a_drain_past_its_timeout_stops_the_model_with_a_warning() -> None:
    old = encode_drain(Drain("b", NOW - 301))
    victim = body("a", 1, "Draining", **{ANNOTATION_DRAIN: old, report_key("r1"): encode_report(1, NOW)})
    plan = plan_pass(inputs(victim, running(victim)), None, CONFIG, TIMING)
    assert isinstance(plan, Plan)
    (write,) = plan.victims
    assert (write.name, write.action, write.event[:2]) == ("a", "stop", ("Warning", "DrainTimeout"))


def test_scaled_down_by_hand_while_draining_drops_the_mark() -> None:
    victim = body("a", 0, "Draining", **{ANNOTATION_DRAIN: encode_drain(Drain("b", NOW))})
    plan = plan_pass(inputs(victim, running(victim)), None, CONFIG, TIMING)
    assert isinstance(plan, Plan)
    assert plan.own_patch == {"metadata": {"annotations": {ANNOTATION_DRAIN: None}}}
    assert plan.outcome.phase == "Available"
