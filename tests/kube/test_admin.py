"""The admin endpoints, `/v1/events` and the status page on the Kubernetes router, with the real
operator (kopf, in its own thread) and FakeCluster on the emulated API server: load, unload and pin
act on the LocalModel, and the phases the operator writes arrive as events."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmi.errors import Unavailable
from llmi.localmodel import ANNOTATION_DRAIN, ANNOTATION_LAST_REQUEST, Drain, LocalModelView, encode_drain, reports_of
from llmi.settings import Settings
from llmi_router.kube.events import event_kind, shown_phase
from llmi_router.kube.publish import Timing
from tests.kube.cluster import LM, NODES, FakeCluster, local_model, node, operator_settings, running_operator
from tests.kube.conftest import KubeEnv
from tests.kube_fixtures import eventually, router_in_process

FAST = Timing(report_s=0.1, heartbeat_s=5.0, touch_s=30.0)


def settings() -> Settings:
    return Settings().model_copy(update={"queue_timeout_s": 120})


def lm(env: KubeEnv, name: str) -> dict[str, Any]:
    return env.emulator.find(LM, env.namespace, name) or {}


def phase(env: KubeEnv, name: str) -> str | None:
    return (lm(env, name).get("status") or {}).get("phase")


@contextlib.asynccontextmanager
async def reading_events(url: str) -> AsyncIterator[list[dict[str, Any]]]:
    """`/v1/events` read into a list (the snapshot first) until the block ends."""
    events: list[dict[str, Any]] = []

    async def read() -> None:
        timeout = httpx.Timeout(30, read=None)
        async with httpx.AsyncClient(timeout=timeout) as client, client.stream("GET", f"{url}/v1/events") as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))

    task = asyncio.create_task(read())
    try:
        await eventually(lambda: events or task.done(), "the events snapshot")
        if task.done():
            task.result()
        yield events
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def annotations(obj: dict[str, Any]) -> dict[str, str]:
    return (obj.get("metadata") or {}).get("annotations") or {}


def kinds(events: list[dict[str, Any]], model: str) -> list[str]:
    return [e["kind"] for e in events if e.get("model") == model]


async def test_admin_load_pin_and_unload_act_on_the_localmodel_and_arrive_as_events(
    kube_env: KubeEnv, tmp_path: Path
) -> None:
    e, ns = kube_env.emulator, kube_env.namespace
    await e.apply_create(NODES, None, node("node-a", budget="8Gi"))
    await e.apply_create(LM, ns, local_model("a", memory="5Gi"))
    async with (
        FakeCluster(e, ns),
        running_operator(operator_settings(ns, tmp_path / "absent")),
        router_in_process(kube_env.api, settings(), router_id="r1", timing=FAST) as router,
        httpx.AsyncClient(base_url=router.url, timeout=120) as http,
        reading_events(router.url) as events,
    ):
        assert [m["id"] for m in events[0]["models"]] == ["a"]

        loaded = await http.post("/v1/admin/models/a/load")
        assert loaded.status_code == 200, loaded.text
        assert loaded.json()["state"] == "ready"
        assert lm(kube_env, "a")["spec"]["replicas"] == 1
        assert phase(kube_env, "a") == "Ready"
        # The load held nothing (no in-flight report was ever written) and counts as a use, so
        # the idle timer starts from it.
        assert not [w for w in e.writes if w.resource == LM and w.name == "a" and reports_of(annotations(w.object))]
        await eventually(lambda: ANNOTATION_LAST_REQUEST in annotations(lm(kube_env, "a")), "the last request time")

        pinned = await http.post("/v1/admin/models/a/pin", json={"pinned": True})
        assert pinned.status_code == 200, pinned.text
        assert pinned.json()["pinned"] is True
        assert lm(kube_env, "a")["spec"]["pinned"] is True
        await eventually(lambda: router.control.describe()[0].pinned, "the watch to show the pin")

        unloaded = await http.post("/v1/admin/models/a/unload")
        assert unloaded.status_code == 200, unloaded.text
        assert lm(kube_env, "a")["spec"]["replicas"] == 0
        await eventually(lambda: "stopped" in kinds(events, "a"), "the stopped event")
        assert phase(kube_env, "a") == "Available"
        assert kinds(events, "a") == ["loading", "ready", "stopped"]
        assert [e["state"] for e in events[1:]] == ["loading", "ready", "available"]

        unpinned = await http.post("/v1/admin/models/a/pin", json={"pinned": False})
        assert unpinned.json()["pinned"] is False
        assert lm(kube_env, "a")["spec"]["pinned"] is False


async def test_a_model_pinned_through_the_router_is_not_evicted_for_another(kube_env: KubeEnv, tmp_path: Path) -> None:
    """Two 5 GiB models on one 8 GiB node: once the first is pinned, the second fails with the
    operator's reason (it fits nowhere), and the first keeps its replica."""
    e, ns = kube_env.emulator, kube_env.namespace
    await e.apply_create(NODES, None, node("node-a", budget="8Gi"))
    await e.apply_create(LM, ns, local_model("a", memory="5Gi"))
    await e.apply_create(LM, ns, local_model("b", memory="5Gi"))
    async with (
        FakeCluster(e, ns),
        running_operator(operator_settings(ns, tmp_path / "absent")),
        router_in_process(kube_env.api, settings(), router_id="r1", timing=FAST) as router,
        httpx.AsyncClient(base_url=router.url, timeout=120) as http,
    ):
        assert (await http.post("/v1/admin/models/a/load")).status_code == 200
        assert (await http.post("/v1/admin/models/a/pin")).json()["pinned"] is True  # no body: pin
        with pytest.raises(Unavailable, match="pinned models hold"):
            await router.control.acquire("b", 120)
        assert phase(kube_env, "b") == "Failed"
        assert lm(kube_env, "a")["spec"]["replicas"] == 1
        assert phase(kube_env, "a") == "Ready"


async def test_admin_on_an_unknown_model_is_404_and_the_page_lists_the_models(kube_env: KubeEnv) -> None:
    e, ns = kube_env.emulator, kube_env.namespace
    await e.apply_create(LM, ns, local_model("a", memory="5Gi"))
    async with (
        router_in_process(kube_env.api, settings(), router_id="r1", timing=FAST) as router,
        httpx.AsyncClient(base_url=router.url, timeout=30) as http,
    ):
        for action in ("load", "unload", "pin"):
            r = await http.post(f"/v1/admin/models/nope/{action}")
            assert r.status_code == 404, (action, r.text)
            assert r.json()["error"]["code"] == "model_not_found"
        page = await http.get("/")
        assert page.status_code == 200
        assert 'data-model="a"' in page.text


@pytest.mark.parametrize(
    ("before", "after", "kind"),
    [
        (None, "", "found"),
        (None, "Ready", "found"),
        ("", "Available", None),
        ("Available", "Loading", "loading"),
        ("Evicted", "Loading", "loading"),
        ("Loading", "Ready", "ready"),
        ("Loading", "Failed", "failed"),
        ("Ready", "Draining", "evicting"),
        ("Draining", "Evicted", "stopped"),
        ("Ready", "Available", "stopped"),
        ("Draining", "Available", "stopped"),
        ("Failed", "Available", None),
        ("Ready", "Ready", None),
    ],
)
def test_each_phase_change_is_named_as_the_embedded_server_names_it(
    before: str | None, after: str, kind: str | None
) -> None:
    assert event_kind(before, after) == kind


def test_a_ready_model_that_drains_shows_as_draining() -> None:
    ready: dict[str, Any] = {"metadata": {"name": "a"}, "status": {"phase": "Ready"}}
    draining = {**ready, "metadata": {"name": "a", "annotations": {ANNOTATION_DRAIN: encode_drain(Drain("b", 1.0))}}}
    assert shown_phase(LocalModelView.from_object(ready)) == "Ready"
    assert shown_phase(LocalModelView.from_object(draining)) == "Draining"
    assert event_kind("Ready", shown_phase(LocalModelView.from_object(draining))) == "evicting"
