"""The realism layer behaves like an API server where kopf and our clients can tell the difference."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import kmock
import pytest

from tests.kube.conftest import KubeEnv
from tests.kube.realism import JSON_PATCH, MERGE, label_matches, merge_patch

LM = kmock.resource("llmi.dev/v1alpha1/localmodels")
PODS = kmock.resource("v1/pods")
NS = "llmi-test"
LM_URL = f"/apis/llmi.dev/v1alpha1/namespaces/{NS}/localmodels"


def model(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "llmi.dev/v1alpha1", "kind": "LocalModel", "metadata": {"name": name}, "spec": spec}


async def call(
    env: KubeEnv, method: str, url: str, body: Any = None, ctype: str = "application/json"
) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body)
    async with env.emulator.request(method, url, data=data, headers={"Content-Type": ctype}) as resp:
        return resp.status, await resp.json()


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("", True),
        ("a=1", True),
        ("a==1,b=2", True),
        ("a=2", False),
        ("a!=2", True),
        ("c!=2", True),
        ("a", True),
        ("!a", False),
        ("!c", True),
        ("a in (1, 3),b notin (3)", True),
        ("a notin (1)", False),
        ("c in (1)", False),
    ],
)
def test_label_selectors(selector: str, expected: bool) -> None:
    assert label_matches({"a": "1", "b": "2"}, selector) is expected


def test_merge_patch_follows_rfc_7386() -> None:
    target = {"a": {"b": 1, "c": [1, 2]}, "d": 1}
    assert merge_patch(target, {"a": {"b": None, "c": [3]}, "e": {"f": 1}}) == {"a": {"c": [3]}, "d": 1, "e": {"f": 1}}
    assert merge_patch({"a": 1}, {"a": {"b": 2}}) == {"a": {"b": 2}}
    assert target == {"a": {"b": 1, "c": [1, 2]}, "d": 1}


async def test_create_fills_metadata_and_refuses_duplicates(kube_env: KubeEnv) -> None:
    status, created = await call(kube_env, "POST", LM_URL, model("m1", path="m1", type="chat"))
    assert status == 201
    meta = created["metadata"]
    assert meta["namespace"] == NS
    assert meta["uid"]
    assert meta["creationTimestamp"].endswith("Z")
    assert meta["generation"] == 1
    assert int(meta["resourceVersion"]) > 0
    status, body = await call(kube_env, "POST", LM_URL, model("m1", path="m1", type="chat"))
    assert status == 409
    assert body["reason"] == "AlreadyExists"
    status, event = await call(
        kube_env, "POST", f"/api/v1/namespaces/{NS}/events", {"metadata": {"generateName": "e-"}}
    )
    status2, event2 = await call(
        kube_env, "POST", f"/api/v1/namespaces/{NS}/events", {"metadata": {"generateName": "e-"}}
    )
    assert (status, status2) == (201, 201)
    assert event["metadata"]["name"].startswith("e-")
    assert event["metadata"]["name"] != event2["metadata"]["name"]


async def test_writes_bump_resource_version_and_noops_write_nothing(kube_env: KubeEnv) -> None:
    _, created = await call(kube_env, "POST", LM_URL, model("m1", path="m1", type="chat"))
    rv = int(created["metadata"]["resourceVersion"])
    _, patched = await call(kube_env, "PATCH", f"{LM_URL}/m1", {"spec": {"replicas": 1}}, MERGE)
    assert int(patched["metadata"]["resourceVersion"]) == rv + 1
    assert patched["metadata"]["generation"] == 2
    _, again = await call(kube_env, "PATCH", f"{LM_URL}/m1", {"spec": {"replicas": 1}}, MERGE)
    assert again["metadata"]["resourceVersion"] == patched["metadata"]["resourceVersion"]
    _, annotated = await call(kube_env, "PATCH", f"{LM_URL}/m1", {"metadata": {"annotations": {"a": "b"}}}, MERGE)
    assert annotated["metadata"]["generation"] == 2  # metadata changes leave the generation alone
    assert [w.type for w in kube_env.emulator.writes if w.resource == LM] == ["ADDED", "MODIFIED", "MODIFIED"]


async def test_preconditions_conflict(kube_env: KubeEnv) -> None:
    _, created = await call(kube_env, "POST", LM_URL, model("m1", path="m1", type="chat"))
    stale = {"metadata": {"resourceVersion": "1"}, "spec": {"replicas": 1}}
    status, body = await call(kube_env, "PATCH", f"{LM_URL}/m1", stale, MERGE)
    assert status == 409
    assert body["reason"] == "Conflict"
    ops = [{"op": "test", "path": "/metadata/resourceVersion", "value": "1"}]
    status, _ = await call(kube_env, "PATCH", f"{LM_URL}/m1", ops, JSON_PATCH)
    assert status == 422
    current = created["metadata"]["resourceVersion"]
    ops = [{"op": "test", "path": "/metadata/resourceVersion", "value": current}]
    ops.append({"op": "add", "path": "/metadata/finalizers", "value": ["x"]})
    status, body = await call(kube_env, "PATCH", f"{LM_URL}/m1", ops, JSON_PATCH)
    assert status == 200
    assert body["metadata"]["finalizers"] == ["x"]


async def test_status_subresource_separates_status_from_the_rest(kube_env: KubeEnv) -> None:
    await call(kube_env, "POST", LM_URL, {**model("m1", path="m1", type="chat"), "status": {"phase": "Ready"}})
    assert "status" not in kube_env.emulator.find(LM, NS, "m1")  # type: ignore[operator]
    _, body = await call(kube_env, "PATCH", f"{LM_URL}/m1", {"status": {"phase": "Ready"}}, MERGE)
    assert "status" not in body
    patch = {"status": {"phase": "Loading"}, "spec": {"replicas": 1}}
    _, body = await call(kube_env, "PATCH", f"{LM_URL}/m1/status", patch, MERGE)
    assert body["status"] == {"phase": "Loading"}
    assert "replicas" not in body["spec"]
    assert body["metadata"]["generation"] == 1


async def test_scale_subresource_reads_and_writes_spec_replicas(kube_env: KubeEnv) -> None:
    await call(kube_env, "POST", LM_URL, model("m1", path="m1", type="chat", replicas=0))
    status, scale = await call(kube_env, "GET", f"{LM_URL}/m1/scale")
    assert status == 200
    assert scale["kind"] == "Scale"
    assert scale["spec"]["replicas"] == 0
    status, scale = await call(kube_env, "PATCH", f"{LM_URL}/m1/scale", {"spec": {"replicas": 1}}, MERGE)
    assert status == 200
    assert scale["spec"]["replicas"] == 1
    assert kube_env.emulator.find(LM, NS, "m1")["spec"]["replicas"] == 1  # type: ignore[index]
    status, scale = await call(kube_env, "PUT", f"{LM_URL}/m1/scale", {**scale, "spec": {"replicas": 0}})
    assert status == 200
    assert kube_env.emulator.find(LM, NS, "m1")["spec"]["replicas"] == 0


async def test_list_filters_by_label_selector(kube_env: KubeEnv) -> None:
    for name, labels in (("p1", {"app": "a", "tier": "x"}), ("p2", {"app": "b"})):
        await call(kube_env, "POST", f"/api/v1/namespaces/{NS}/pods", {"metadata": {"name": name, "labels": labels}})
    _, listed = await call(kube_env, "GET", f"/api/v1/namespaces/{NS}/pods?labelSelector=app%3Da")
    assert [p["metadata"]["name"] for p in listed["items"]] == ["p1"]
    _, listed = await call(kube_env, "GET", f"/api/v1/namespaces/{NS}/pods?labelSelector=!tier")
    assert [p["metadata"]["name"] for p in listed["items"]] == ["p2"]
    _, listed = await call(kube_env, "GET", "/api/v1/pods?fieldSelector=metadata.name%3Dp2")
    assert [p["metadata"]["name"] for p in listed["items"]] == ["p2"]


async def test_delete_waits_for_finalizers(kube_env: KubeEnv) -> None:
    await call(kube_env, "POST", LM_URL, {**model("m1", path="m1", type="chat")})
    await call(kube_env, "PATCH", f"{LM_URL}/m1", {"metadata": {"finalizers": ["x"]}}, MERGE)
    status, body = await call(kube_env, "DELETE", f"{LM_URL}/m1")
    assert status == 200
    assert body["metadata"]["deletionTimestamp"]
    assert kube_env.emulator.find(LM, NS, "m1") is not None
    await call(kube_env, "PATCH", f"{LM_URL}/m1", {"metadata": {"finalizers": None}}, MERGE)
    assert kube_env.emulator.find(LM, NS, "m1") is None
    assert kube_env.emulator.writes[-1].type == "DELETED"
    status, body = await call(kube_env, "GET", f"{LM_URL}/m1")
    assert status == 404
    assert body["reason"] == "NotFound"


async def test_watch_from_a_resource_version_replays_later_writes(kube_env: KubeEnv) -> None:
    await call(kube_env, "POST", LM_URL, model("m1", path="m1", type="chat"))
    _, listed = await call(kube_env, "GET", LM_URL)
    await call(kube_env, "POST", LM_URL, model("m2", path="m2", type="chat"))
    url = f"{LM_URL}?watch=true&resourceVersion={listed['metadata']['resourceVersion']}"
    async with kube_env.emulator.get(url) as resp:
        first = json.loads(await asyncio.wait_for(resp.content.readline(), 5))
        await call(kube_env, "PATCH", f"{LM_URL}/m1", {"spec": {"replicas": 1}}, MERGE)
        second = json.loads(await asyncio.wait_for(resp.content.readline(), 5))
    assert (first["type"], first["object"]["metadata"]["name"]) == ("ADDED", "m2")
    assert (second["type"], second["object"]["metadata"]["name"]) == ("MODIFIED", "m1")


async def test_unknown_resources_are_not_found(kube_env: KubeEnv) -> None:
    status, _ = await call(kube_env, "GET", f"/apis/example.com/v1/namespaces/{NS}/things")
    assert status == 404
