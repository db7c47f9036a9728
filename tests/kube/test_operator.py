"""The operator end to end: a real kopf, the official client, an emulated API server over HTTP.

The test plays the Deployment controller and kubelet (tests/kube/cluster.py); every write the
API server accepted is in ``emulator.writes``, in order, so the budget is checked at every step.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import kmock

from llmi.localmodel import format_time
from llmi_operator.kube import RestKube, load_api_client
from llmi_operator.reconcile import Reconciler
from tests.kube.cluster import (
    DEPLOYMENTS,
    EVENTS,
    GIB,
    LM,
    NODES,
    PODS,
    SERVICES,
    FakeCluster,
    eventually,
    local_model,
    node,
    operator_settings,
    replay_budget,
    running_operator,
)
from tests.kube.conftest import KubeEnv
from tests.kube.realism import MERGE


def status(env: KubeEnv, name: str) -> dict[str, Any]:
    return dict((env.emulator.find(LM, env.namespace, name) or {}).get("status") or {})


def phase_is(env: KubeEnv, name: str, phase: str) -> bool:
    return status(env, name).get("phase") == phase


async def patch(env: KubeEnv, url: str, body: Any) -> Any:
    async with env.emulator.request("PATCH", url, data=json.dumps(body), headers={"Content-Type": MERGE}) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def scale(env: KubeEnv, name: str, replicas: int) -> None:
    """What the router does: PATCH the scale subresource."""
    url = f"/apis/llmi.dev/v1alpha1/namespaces/{env.namespace}/localmodels/{name}/scale"
    await patch(env, url, {"spec": {"replicas": replicas}})


async def annotate_last_request(env: KubeEnv, name: str, seconds_ago: float) -> None:
    url = f"/apis/llmi.dev/v1alpha1/namespaces/{env.namespace}/localmodels/{name}"
    when = format_time(time.time() - seconds_ago)
    await patch(env, url, {"metadata": {"annotations": {"llmi.dev/last-request-time": when}}})


def events(env: KubeEnv, name: str) -> list[dict[str, Any]]:
    return [e for e in env.emulator.find_all(EVENTS, env.namespace) if e.get("involvedObject", {}).get("name") == name]


def children(env: KubeEnv, name: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    selector = f"llmi.dev/model={name}"
    return (
        env.emulator.find_all(DEPLOYMENTS, env.namespace, selector),
        env.emulator.find_all(SERVICES, env.namespace, selector),
    )


async def test_reconcile_creates_the_runtime_deployment_and_service(kube_env: KubeEnv, tmp_path: Path) -> None:
    e, ns = kube_env.emulator, kube_env.namespace
    taint = {"key": "dedicated", "value": "llm", "effect": "NoSchedule"}
    gpu_a = node("node-a", gpu="a100")
    gpu_a["spec"] = {"taints": [taint]}
    await e.apply_create(NODES, None, gpu_a)
    await e.apply_create(NODES, None, node("node-b"))
    spec = {
        "memory": "3Gi",
        "replicas": 1,
        "nodeSelector": {"gpu": "a100"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "llm", "effect": "NoSchedule"}],
        "resources": {"requests": {"cpu": "1", "memory": "4Gi"}, "limits": {"memory": "8Gi"}},
        "engineArgs": ["--dtype", "float16"],
    }
    async with FakeCluster(e, ns), running_operator(operator_settings(ns, tmp_path / "absent")):
        await e.apply_create(LM, ns, local_model("qwen", path="org/Qwen-7B", **spec))
        await eventually(lambda: phase_is(kube_env, "qwen", "Ready"), "qwen Ready")
    model = e.find(LM, ns, "qwen")
    assert model is not None
    deployment = e.find(DEPLOYMENTS, ns, "llmi-qwen")
    service = e.find(SERVICES, ns, "llmi-qwen")
    assert deployment is not None
    assert service is not None
    labels = {
        "app.kubernetes.io/name": "llmi-runtime",
        "app.kubernetes.io/managed-by": "llmi-operator",
        "llmi.dev/model": "qwen",
    }
    owner = {"apiVersion": "llmi.dev/v1alpha1", "kind": "LocalModel", "name": "qwen", "uid": model["metadata"]["uid"]}
    for child in (deployment, service):
        assert child["metadata"]["labels"] == labels
        assert child["metadata"]["annotations"]["llmi.dev/spec-hash"]
        assert [{k: r[k] for k in owner} for r in child["metadata"]["ownerReferences"]] == [owner]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"] + container["args"] == [
        "llmi", "runtime", "--model", "/models/org/Qwen-7B", "--name", "qwen", "--type", "chat",
        "--host", "0.0.0.0", "--port", "8000", "--placement", "gpu", "--dtype", "float16",
    ]  # fmt: skip
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in container["volumeMounts"]
    assert container["resources"] == spec["resources"]
    assert pod["nodeSelector"] == {"gpu": "a100", "kubernetes.io/hostname": "node-a"}
    assert pod["tolerations"] == spec["tolerations"]
    assert service["spec"]["ports"][0]["port"] == 8000
    got = status(kube_env, "qwen")
    assert got["endpoint"] == f"http://llmi-qwen.{ns}.svc:8000"
    assert (got["node"], got["placement"], got["memory"], got["replicas"]) == ("node-a", "gpu", 3 * GIB, 1)
    assert got["observedGeneration"] == model["metadata"]["generation"]
    assert {c["type"]: c["status"] for c in got["conditions"]} == {"Ready": "True", "Scheduled": "True"}
    assert [e["reason"] for e in events(kube_env, "qwen")] == ["Ready"]


async def test_reconciling_twice_writes_nothing_the_second_time(kube_env: KubeEnv, tmp_path: Path) -> None:
    e, ns = kube_env.emulator, kube_env.namespace
    await e.apply_create(NODES, None, node("node-a"))
    await e.apply_create(LM, ns, local_model("zero", memory="1Gi"))
    await e.apply_create(LM, ns, local_model("one", memory="1Gi", replicas=1))
    settings = operator_settings(ns, tmp_path / "absent")
    reconciler = Reconciler(RestKube(load_api_client()), settings, lambda *a: None)
    for name in ("zero", "one"):
        await asyncio.to_thread(reconciler.reconcile, ns, name)
        before = len(e.writes)
        await asyncio.to_thread(reconciler.reconcile, ns, name)
        assert e.writes[before:] == []
    assert status(kube_env, "zero")["phase"] == "Available"
    assert status(kube_env, "one")["phase"] == "Loading"
    assert [w.type for w in e.writes if w.resource == DEPLOYMENTS] == ["ADDED", "ADDED"]


async def test_budget_evicts_the_least_recently_used_and_waits_for_its_pod(kube_env: KubeEnv, tmp_path: Path) -> None:
    e, ns = kube_env.emulator, kube_env.namespace
    await e.apply_create(NODES, None, node("node-a", budget="8Gi"))
    for name, size in (("m5", "5Gi"), ("m3", "3Gi"), ("m4", "4Gi")):
        await e.apply_create(LM, ns, local_model(name, memory=size))
    async with FakeCluster(e, ns) as cluster, running_operator(operator_settings(ns, tmp_path / "absent")):
        for name in ("m5", "m3", "m4"):
            await eventually(lambda n=name: phase_is(kube_env, n, "Available"), f"{name} Available")
        await scale(kube_env, "m5", 1)
        await eventually(lambda: phase_is(kube_env, "m5", "Ready"), "m5 Ready")
        await scale(kube_env, "m3", 1)
        await eventually(lambda: phase_is(kube_env, "m3", "Ready"), "m3 Ready (5 + 3 fit in 8)")
        await annotate_last_request(kube_env, "m5", 120)  # m5 served longest ago
        await annotate_last_request(kube_env, "m3", 10)
        cluster.hold_pods.add("llmi-m5")  # m5's pod takes its time to terminate
        await scale(kube_env, "m4", 1)
        await eventually(lambda: phase_is(kube_env, "m5", "Evicted"), "m5 Evicted")
        waiting = await eventually(
            lambda: "m5" in status(kube_env, "m4").get("message", "") and status(kube_env, "m4"), "m4 waiting for m5"
        )
        assert waiting["phase"] == "Loading"
        assert waiting["node"] == "node-a"
        held = await eventually(
            lambda: "hold the room" in status(kube_env, "m4").get("message", "") and status(kube_env, "m4"), "on hold"
        )
        assert "m5" in held["message"], "the message names what holds the room"
        assert e.find(LM, ns, "m5")["spec"]["replicas"] == 0  # type: ignore[index]
        assert e.find_all(PODS, ns, "fake/deployment=llmi-m5"), "m5's pod is still there"
        assert e.find(DEPLOYMENTS, ns, "llmi-m4")["spec"]["replicas"] == 0  # type: ignore[index]
        cluster.hold_pods.clear()
        await eventually(lambda: phase_is(kube_env, "m4", "Ready"), "m4 Ready after m5's pod went")
        assert phase_is(kube_env, "m3", "Ready")
    changes = replay_budget(e.writes, {"node-a": 8 * GIB})
    first_up = changes.index(("llmi-m5", 1))
    assert changes[first_up:] == [("llmi-m5", 1), ("llmi-m3", 1), ("llmi-m5", 0), ("llmi-m4", 1)]
    assert [x["reason"] for x in events(kube_env, "m5") if x["reason"] == "Evicted"] == ["Evicted"]
    assert "Evicting" in [x["reason"] for x in events(kube_env, "m4")]
    assert "m4" in status(kube_env, "m5")["message"]


async def test_idle_models_scale_to_zero_unless_pinned(kube_env: KubeEnv, tmp_path: Path) -> None:
    e, ns = kube_env.emulator, kube_env.namespace
    await e.apply_create(NODES, None, node("node-a"))
    await e.apply_create(LM, ns, local_model("idle", memory="1Gi", replicas=1, idleTimeout="1m"))
    await e.apply_create(LM, ns, local_model("kept", memory="1Gi", replicas=1, idleTimeout="1m", pinned=True))
    async with FakeCluster(e, ns), running_operator(operator_settings(ns, tmp_path / "absent")):
        for name in ("idle", "kept"):
            await eventually(lambda n=name: phase_is(kube_env, n, "Ready"), f"{name} Ready")
            await annotate_last_request(kube_env, name, 120)
        await eventually(lambda: phase_is(kube_env, "idle", "Available"), "idle scaled to zero")
        await eventually(lambda: status(kube_env, "kept").get("lastRequestTime"), "kept's last request mirrored")
        assert e.find(LM, ns, "idle")["spec"]["replicas"] == 0  # type: ignore[index]
        assert e.find(DEPLOYMENTS, ns, "llmi-idle")["spec"]["replicas"] == 0  # type: ignore[index]
        assert phase_is(kube_env, "kept", "Ready")
        assert e.find(LM, ns, "kept")["spec"]["replicas"] == 1  # type: ignore[index]
    assert "ScaledToZero" in [x["reason"] for x in events(kube_env, "idle")]


async def test_a_restart_mid_reconcile_leaves_one_set_of_children(kube_env: KubeEnv, tmp_path: Path) -> None:
    e, ns = kube_env.emulator, kube_env.namespace
    await e.apply_create(NODES, None, node("node-a"))
    settings = operator_settings(ns, tmp_path / "absent")
    async with FakeCluster(e, ns, hold_ready={"llmi-r1", "llmi-r2"}) as cluster:
        async with running_operator(settings):
            await e.apply_create(LM, ns, local_model("r1", memory="1Gi", replicas=1))
            await e.apply_create(LM, ns, local_model("r2", memory="1Gi"))
            await eventually(lambda: phase_is(kube_env, "r1", "Loading"), "r1 loading")
            await eventually(lambda: e.find(DEPLOYMENTS, ns, "llmi-r2"), "r2's Deployment")
        await scale(kube_env, "r2", 1)  # while no operator runs
        async with running_operator(settings):
            await eventually(lambda: phase_is(kube_env, "r2", "Loading"), "r2 loading after the restart")
            cluster.hold_ready.clear()
            for name in ("r1", "r2"):
                await eventually(lambda n=name: phase_is(kube_env, n, "Ready"), f"{name} Ready")
    for name in ("r1", "r2"):
        deployments, services = children(kube_env, name)
        assert (len(deployments), len(services)) == (1, 1)
    models = {m["metadata"]["name"] for m in e.find_all(LM, ns)}
    for child in e.find_all(DEPLOYMENTS, ns) + e.find_all(SERVICES, ns):
        assert child["metadata"]["ownerReferences"][0]["name"] in models, "no orphans"
    created = [w.name for w in e.writes if w.type == "ADDED" and w.resource in (DEPLOYMENTS, SERVICES)]
    assert sorted(created) == ["llmi-r1", "llmi-r1", "llmi-r2", "llmi-r2"]  # one Deployment, one Service each


async def test_deleting_a_model_removes_its_children(kube_env: KubeEnv, tmp_path: Path) -> None:
    e, ns = kube_env.emulator, kube_env.namespace
    await e.apply_create(NODES, None, node("node-a"))
    async with FakeCluster(e, ns), running_operator(operator_settings(ns, tmp_path / "absent")):
        await e.apply_create(LM, ns, local_model("gone", memory="1Gi", replicas=1))
        await eventually(lambda: phase_is(kube_env, "gone", "Ready"), "gone Ready")
        async with e.request("DELETE", f"/apis/llmi.dev/v1alpha1/namespaces/{ns}/localmodels/gone") as response:
            assert response.status == 200
        await eventually(lambda: e.find(LM, ns, "gone") is None, "the LocalModel gone (finalizer released)")
        await eventually(lambda: not e.find_all(PODS, ns), "its pod gone")
    assert children(kube_env, "gone") == ([], [])


async def test_a_model_that_fits_nowhere_fails_with_a_reason(kube_env: KubeEnv, tmp_path: Path) -> None:
    e, ns = kube_env.emulator, kube_env.namespace
    await e.apply_create(NODES, None, node("node-a", budget="8Gi"))
    url = f"/apis/llmi.dev/v1alpha1/namespaces/{ns}/localmodels/huge"
    async with FakeCluster(e, ns), running_operator(operator_settings(ns, tmp_path / "absent")):
        await e.apply_create(LM, ns, local_model("huge", memory="12Gi", replicas=1))
        failed = await eventually(lambda: phase_is(kube_env, "huge", "Failed") and status(kube_env, "huge"), "Failed")
        assert "12.0 GiB" in failed["message"]
        assert "8.0 GiB" in failed["message"]
        warning = await eventually(lambda: [x for x in events(kube_env, "huge") if x["type"] == "Warning"], "Event")
        assert warning[0]["reason"] == "Unschedulable"
        assert "12.0 GiB" in warning[0]["message"]
        assert e.find(LM, ns, "huge")["spec"]["replicas"] == 1  # type: ignore[index]  # the request stands
        assert e.find(DEPLOYMENTS, ns, "llmi-huge")["spec"]["replicas"] == 0  # type: ignore[index]
        await patch(kube_env, url, {"spec": {"memory": "6Gi"}})  # a smaller estimate: now it fits
        await eventually(lambda: phase_is(kube_env, "huge", "Ready"), "Ready once it fits")


async def test_the_operator_survives_api_errors_and_makes_no_duplicates(kube_env: KubeEnv, tmp_path: Path) -> None:
    """Issue 12: a conflict, a server timeout, a 410 and a 500 on the operator's own calls are retried;
    the model still comes up, with exactly one Deployment and one Service."""
    e, ns = kube_env.emulator, kube_env.namespace
    await e.apply_create(NODES, None, node("node-a"))
    refusals = {  # each answered once, to the first matching request
        ("deployments", kmock.action.CREATE): (409, "Operation cannot be fulfilled: the object has been modified"),
        ("services", kmock.action.CREATE): (504, "Timeout: request did not complete within the allowed duration"),
        ("pods", kmock.action.LIST): (410, "Gone: the resource version is too old"),
        ("localmodels", kmock.action.UPDATE): (500, "etcdserver: request timed out"),
    }
    met: set[tuple[str, kmock.action]] = set()

    def flaky(request: Any) -> tuple[int, str] | None:
        key = (request.resource.plural, request.action)
        if key in refusals and key not in met:
            met.add(key)
            return refusals[key]
        return None

    e.faults.append(flaky)
    async with FakeCluster(e, ns), running_operator(operator_settings(ns, tmp_path / "absent")):
        await e.apply_create(LM, ns, local_model("qwen", memory="3Gi", replicas=1))
        await eventually(lambda: phase_is(kube_env, "qwen", "Ready"), "qwen Ready despite the errors", within=60)
    assert met == set(refusals)  # every error was met on the way
    deployments, services = children(kube_env, "qwen")
    assert [d["metadata"]["name"] for d in deployments] == ["llmi-qwen"]
    assert [s["metadata"]["name"] for s in services] == ["llmi-qwen"]
