"""The real operator and the real router on one emulated API server: the drain protocol end to end.

kopf runs the operator in its own thread; the router (KubeControlPlane, with the gateway app where
HTTP matters) runs in the test's loop; FakeCluster plays the Deployment controller, the kubelet and
the EndpointSlice controller, starting real runtime processes where a test asks for them. A request
in flight is a held lease: exactly what a router counts and reports.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import openai
import pytest

from llmi.errors import NotReadyInTime
from llmi.localmodel import ANNOTATION_EVICTED_BY, Report, child_name, reports_of
from llmi.settings import Settings
from llmi_router.kube.control import KubeControlPlane
from llmi_router.kube.publish import Timing
from llmi_router.ports import OnceLease
from tests.kube.cluster import (
    DEPLOYMENTS,
    EVENTS,
    GIB,
    LM,
    NODES,
    FakeCluster,
    local_model,
    node,
    replay_budget,
    running_operator,
)
from tests.kube.cluster import operator_settings as base_operator_settings
from tests.kube.conftest import KubeEnv
from tests.kube_fixtures import control_plane, eventually, router_in_process

CHAT, EMBED = "tiny-llama-chat", "tiny-bert-embed"
FAST = Timing(report_s=0.1, heartbeat_s=5.0, touch_s=30.0)  # reports at once; tests read them


def operator_settings(env: KubeEnv, tmp_path: Path, **overrides: Any) -> Any:
    return base_operator_settings(env.namespace, tmp_path / "absent", **overrides)


def settings(**changes: object) -> Settings:
    return Settings().model_copy(update={"queue_timeout_s": 120, **changes})


def lm(env: KubeEnv, name: str) -> dict[str, Any]:
    return env.emulator.find(LM, env.namespace, name) or {}


def phase(env: KubeEnv, name: str) -> str | None:
    return (lm(env, name).get("status") or {}).get("phase")


def reports(env: KubeEnv, name: str) -> tuple[Report, ...]:
    return reports_of((lm(env, name).get("metadata") or {}).get("annotations") or {})


def busy_routers(env: KubeEnv, name: str) -> dict[str, int]:
    return {r.router: r.in_flight for r in reports(env, name)}


def events(env: KubeEnv, name: str) -> list[str]:
    found = env.emulator.find_all(EVENTS, env.namespace)
    return [x["reason"] for x in found if x.get("involvedObject", {}).get("name") == name]


def stopped(obj: dict[str, Any]) -> bool:
    """A LocalModel as the operator leaves it when it scales it to zero for another model."""
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    return (obj.get("spec") or {}).get("replicas") == 0 and ANNOTATION_EVICTED_BY in annotations


async def two_models_one_node(env: KubeEnv, first: str = "a", second: str = "b", **spec: Any) -> None:
    """Two 5 GiB models on one 8 GiB node: only one fits at a time."""
    await env.emulator.apply_create(NODES, None, node("node-a", budget="8Gi"))
    await env.emulator.apply_create(LM, env.namespace, local_model(first, memory="5Gi", **spec))
    await env.emulator.apply_create(LM, env.namespace, local_model(second, memory="5Gi", **spec))


async def ready_lease(control: KubeControlPlane, model: str) -> OnceLease:
    return await control.acquire(model, 120)


@pytest.mark.slow
async def test_a_swap_drains_the_busy_model_and_cuts_nothing(
    kube_env: KubeEnv, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """Acceptance: a request for a model at zero is answered; a request for a second model that
    does not fit waits while the first drains, and is answered; a long request to the first model,
    in flight during that swap, completes."""
    e, ns = kube_env.emulator, kube_env.namespace
    await e.apply_create(NODES, None, node("node-a", budget="8Gi"))
    await e.apply_create(LM, ns, local_model(CHAT, memory="5Gi"))
    await e.apply_create(LM, ns, local_model(EMBED, type="embedding", memory="5Gi"))
    served = {child_name(CHAT): tiny_models[CHAT], child_name(EMBED): tiny_models[EMBED]}
    async with (
        FakeCluster(e, ns, runtimes=served, log_dir=tmp_path) as cluster,
        running_operator(operator_settings(kube_env, tmp_path)),
        router_in_process(kube_env.api, settings(), router_id="r1", timing=FAST) as router,
    ):
        client = openai.AsyncOpenAI(base_url=f"{router.url}/v1", api_key="x", max_retries=0, timeout=300)
        messages = [{"role": "user", "content": "hello"}]
        first = await client.chat.completions.create(model=CHAT, messages=messages, max_tokens=4)  # type: ignore[arg-type]
        assert first.choices[0].finish_reason in ("stop", "length")
        assert phase(kube_env, CHAT) == "Ready"

        # The long request: the runtime is frozen, so the request stays in flight until we let it go.
        (chat_runtime,) = cluster.processes.values()
        os.kill(chat_runtime.proc.pid, signal.SIGSTOP)
        try:

            async def long_request() -> list[Any]:
                stream = await client.chat.completions.create(
                    model=CHAT,
                    messages=messages,  # type: ignore[arg-type]
                    max_tokens=16,
                    stream=True,
                )
                return [chunk async for chunk in stream]

            long = asyncio.create_task(long_request())
            await eventually(lambda: busy_routers(kube_env, CHAT) == {"r1": 1}, "r1 to report the request")
            embedding = asyncio.create_task(client.embeddings.create(model=EMBED, input=["a", "b"]))
            await eventually(lambda: phase(kube_env, CHAT) == "Draining", f"{CHAT} draining")
            waiting = await eventually(
                lambda: (
                    "drain" in ((lm(kube_env, EMBED).get("status") or {}).get("message") or "") and lm(kube_env, EMBED)
                ),
                f"{EMBED} waiting for the drain",
            )
            assert waiting["status"]["phase"] == "Loading"
            assert lm(kube_env, CHAT)["spec"]["replicas"] == 1
            assert e.find(DEPLOYMENTS, ns, child_name(CHAT))["spec"]["replicas"] == 1  # type: ignore[index]
            assert not long.done()
            assert not embedding.done()
        finally:
            os.kill(chat_runtime.proc.pid, signal.SIGCONT)
        chunks = await long
        assert any(c.choices and c.choices[0].finish_reason in ("stop", "length") for c in chunks)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        vectors = await embedding
        assert [d.index for d in vectors.data] == [0, 1]
        await eventually(lambda: phase(kube_env, CHAT) == "Evicted", f"{CHAT} evicted")
        assert phase(kube_env, EMBED) == "Ready"
        await client.close()
    # The first model went to zero only once its router's report said nothing was in flight.
    stop = next(w for w in e.writes if w.resource == LM and w.name == CHAT and stopped(w.object))
    assert reports_of(stop.object["metadata"].get("annotations") or {}) == ()
    replay_budget(e.writes, {"node-a": 8 * GIB})
    assert "Draining" in events(kube_env, CHAT)
    assert "DrainTimeout" not in events(kube_env, CHAT)


async def test_two_router_replicas_both_hold_the_drain(kube_env: KubeEnv, tmp_path: Path) -> None:
    e = kube_env.emulator
    await two_models_one_node(kube_env)
    async with (
        FakeCluster(e, kube_env.namespace),
        running_operator(operator_settings(kube_env, tmp_path)),
    ):
        r1 = await control_plane(kube_env.api, settings(), router_id="r1", timing=FAST)
        r2 = await control_plane(kube_env.api, settings(), router_id="r2", timing=FAST)
        await r1.start()
        await r2.start()
        try:
            one, two = await ready_lease(r1, "a"), await ready_lease(r2, "a")
            await eventually(lambda: busy_routers(kube_env, "a") == {"r1": 1, "r2": 1}, "both reports")
            wanted = asyncio.create_task(r1.acquire("b", 120))
            await eventually(lambda: phase(kube_env, "a") == "Draining", "a draining")
            assert r2._usable(r2.models["a"]) is None  # neither router sends it anything new
            one.release()
            await eventually(lambda: busy_routers(kube_env, "a") == {"r2": 1}, "r1's report gone")
            message = await eventually(
                lambda: "(1 in flight)" in (m := (lm(kube_env, "b").get("status") or {}).get("message") or "") and m,
                "the operator to see one request left",
            )
            assert "a" in message
            assert lm(kube_env, "a")["spec"]["replicas"] == 1  # r2 still has one there
            assert not wanted.done()
            two.release()
            lease = await wanted
            assert phase(kube_env, "b") == "Ready"
            assert phase(kube_env, "a") == "Evicted"
            lease.release()
        finally:
            await r1.close()
            await r2.close()
    replay_budget(e.writes, {"node-a": 8 * GIB})


async def test_a_router_restart_mid_drain_releases_what_it_held(kube_env: KubeEnv, tmp_path: Path) -> None:
    """A router that goes away while it has requests on a draining model: its requests went with
    it, and its restart (same id) clears its report at once, so the drain completes without waiting
    for the drain timeout; the restarted router sends nothing to the draining model."""
    e = kube_env.emulator
    await two_models_one_node(kube_env)
    async with (
        FakeCluster(e, kube_env.namespace),
        running_operator(operator_settings(kube_env, tmp_path, drain_timeout_s=600)),
    ):
        r1 = await control_plane(kube_env.api, settings(), router_id="r1", timing=FAST)
        other = await control_plane(kube_env.api, settings(), router_id="r2", timing=FAST)
        await r1.start()
        await other.start()
        try:
            await ready_lease(r1, "a")  # never released: the process "dies" with it
            await eventually(lambda: busy_routers(kube_env, "a") == {"r1": 1}, "r1's report")
            wanted = asyncio.create_task(other.acquire("b", 120))
            await eventually(lambda: phase(kube_env, "a") == "Draining", "a draining")
            await r1.close()  # the old process goes; its last report still counts one request
            assert busy_routers(kube_env, "a") == {"r1": 1}
            assert not wanted.done()

            r1 = await control_plane(kube_env.api, settings(), router_id="r1", timing=FAST)
            await r1.start()
            assert r1.models["a"].view.drain is not None
            assert r1._usable(r1.models["a"]) is None
            with pytest.raises(NotReadyInTime):
                await r1.acquire("a", 0)  # not forwarded while it drains
            lease = await wanted
            assert phase(kube_env, "a") == "Evicted"
            assert "DrainTimeout" not in events(kube_env, "a")
            assert busy_routers(kube_env, "a") == {}
            lease.release()
        finally:
            await r1.close()
            await other.close()


async def test_the_drain_timeout_bounds_a_stuck_request(kube_env: KubeEnv, tmp_path: Path) -> None:
    e = kube_env.emulator
    await two_models_one_node(kube_env)
    async with (
        FakeCluster(e, kube_env.namespace),
        running_operator(operator_settings(kube_env, tmp_path, drain_timeout_s=1.0)),
    ):
        r1 = await control_plane(kube_env.api, settings(), router_id="r1", timing=FAST)
        await r1.start()
        try:
            stuck = await ready_lease(r1, "a")  # a request that never ends
            await eventually(lambda: busy_routers(kube_env, "a") == {"r1": 1}, "r1's report")
            lease = await r1.acquire("b", 120)
            assert phase(kube_env, "a") == "Evicted"
            assert "DrainTimeout" in events(kube_env, "a")
            assert busy_routers(kube_env, "a") == {"r1": 1}  # the router still counts it; the operator moved on
            lease.release()
            stuck.release()
        finally:
            await r1.close()
    replay_budget(e.writes, {"node-a": 8 * GIB})
