"""The router's Kubernetes backend against the emulated API server over HTTP.

The test plays the operator and the EndpointSlice controller: it watches for the router's scale
PATCH, starts a real runtime and writes the LocalModel's status and the model's EndpointSlice.
Every wait is on an observable condition, never a fixed sleep.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
from collections.abc import Callable
from pathlib import Path

import httpx
import kmock
import kubernetes_asyncio.config.kube_config
import numpy as np
import openai
import pytest
import yaml

from llmi.cli import main as cli_main
from llmi.localmodel import ANNOTATION_LAST_REQUEST, report_key
from llmi.settings import Settings
from llmi_router.kube.client import LOCALMODELS, KubeClient, connect
from llmi_router.kube.control import KubeControlPlane
from llmi_router.kube.publish import Timing
from llmi_router.metrics import RouterMetrics
from tests.kube_fixtures import LM, NAMESPACE, ApiServer, api_server, eventually, metric, router_in_process
from tests.servers import RuntimeProcess, free_port, poll_ready, runtime_env, spawn_llmi, start_runtime, stop_process

# One loop for the emulator, the in-process router and the test, so the test can play the operator.
aio = pytest.mark.asyncio(loop_scope="session")
EMBED, CHAT = "tiny-bert-embed", "tiny-llama-chat"
WATCH = {"true", "True"}  # ?watch= as clients spell it (kubernetes_asyncio: True)


def settings(**changes: object) -> Settings:
    return Settings().model_copy(update=changes)


def embed_body(model: str = EMBED) -> dict[str, object]:
    return {"model": model, "input": ["a", "b"], "encoding_format": "float"}

    return {"model": model, "input": ["a", "b"], "encoding_format": "float"}


@aio
@pytest.mark.slow
async def test_scale_up_on_demand_through_llmi_router(
    tiny_models: dict[str, Path], runtimes: Callable[[str], RuntimeProcess], tmp_path: Path
) -> None:
    """Acceptance: `llmi router --kubernetes` as a process; a request for a model at zero replicas
    scales it up, waits for Ready, and the answer reaches the official client intact."""
    chat = runtimes(CHAT)  # a model the operator already made Ready
    async with api_server() as c:
        await c.create(EMBED, "embedding", memory="512Mi")
        await c.set_status(EMBED, phase="Available")
        await c.create(CHAT, "chat", replicas=1)
        await c.set_ready(CHAT, chat.url, placement="cpu")
        port = free_port()
        log = tmp_path / "router.log"
        args = ["router", "--kubernetes", "--kube-server", c.url, "--namespace", NAMESPACE]
        proc = spawn_llmi([*args, "--host", "127.0.0.1", "--port", str(port)], log, runtime_env())
        url = f"http://127.0.0.1:{port}"
        runtime: RuntimeProcess | None = None
        try:
            await asyncio.to_thread(poll_ready, url, proc, log, 60)
            client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=180)
            pending = asyncio.create_task(client.embeddings.create(**embed_body()))  # type: ignore[arg-type]

            # The operator's part: notice the scale-up, start the runtime, report Ready.
            patch = (await eventually(lambda: c.scale_patches(EMBED), what="the scale PATCH"))[0]
            assert patch.data == {"spec": {"replicas": 1}}
            assert patch.headers["Content-Type"] == "application/merge-patch+json"
            assert c.obj(EMBED)["spec"]["replicas"] == 1
            assert not pending.done()
            await c.set_status(EMBED, phase="Loading")
            runtime = await asyncio.to_thread(start_runtime, tiny_models[EMBED], tmp_path, env=runtime_env())
            await c.set_ready(EMBED, runtime.url, placement="cpu")

            out = await pending
            assert [d.index for d in out.data] == [0, 1]
            assert np.isclose(np.linalg.norm(out.data[0].embedding), 1.0, atol=1e-5)
            assert out.model == EMBED
            assert len(c.scale_patches(EMBED)) == 1

            stream = await client.chat.completions.create(
                model=CHAT,
                messages=[{"role": "user", "content": "hi"}],
                max_tokens=4,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
            )
            chunks = [chunk async for chunk in stream]
            assert chunks[-1].usage is not None
            assert chunks[-1].usage.completion_tokens >= 1
            assert any(ch.choices and ch.choices[0].finish_reason in ("stop", "length") for ch in chunks)
            assert c.scale_patches(CHAT) == []  # Ready already: no scale-up

            models = {m.id: m.model_dump() for m in (await client.models.list()).data}
            assert models[EMBED]["state"] == "ready"
            assert models[EMBED]["memory_bytes"] == 512 * 2**20
            assert models[CHAT]["type"] == "chat"
            assert models[CHAT]["placement"] == "cpu"

            # Finished requests leave the last-request time on the LocalModel (RFC 3339, UTC).
            # (The router's in-flight report is an annotation patch too: wait for the stamp itself.)
            stamp = await eventually(
                lambda: (c.obj(EMBED)["metadata"].get("annotations") or {}).get(ANNOTATION_LAST_REQUEST),
                what="the last-request annotation",
            )
            assert stamp.endswith("Z")
            age = dt.datetime.now(dt.UTC) - dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
            assert dt.timedelta(0) <= age < dt.timedelta(minutes=5)
            await client.close()
        finally:
            code = await asyncio.to_thread(stop_process, proc)
            if runtime is not None:
                runtime.stop()
        output = log.read_text(errors="replace")
        # A clean shutdown: the front drained, then the app's lifespan stopped the control plane.
        assert code in (0, -signal.SIGTERM), output
        assert "shutdown complete: requests drained" in output, output
        assert "Traceback" not in output, output


@aio
@pytest.mark.slow
async def test_concurrent_requests_share_one_scale_up(runtimes: Callable[[str], RuntimeProcess]) -> None:
    embed = runtimes(EMBED)
    async with api_server() as c, router_in_process(c, settings()) as router, httpx.AsyncClient(timeout=60) as http:
        await c.create(EMBED, "embedding")
        await eventually(lambda: router.control.model_type(EMBED), what="the watch to see the model")
        calls = [asyncio.create_task(http.post(f"{router.url}/v1/embeddings", json=embed_body())) for _ in range(5)]

        async def queued() -> float | None:
            return metric((await http.get(f"{router.url}/metrics")).text, "llmi_queue_length", model=EMBED)

        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while await queued() != 5:  # every request waits before the operator answers
            assert loop.time() < deadline, "requests did not queue"
            await asyncio.sleep(0.02)
        await eventually(lambda: c.scale_patches(EMBED), what="the scale PATCH")
        await c.set_ready(EMBED, embed.url)
        answers = await asyncio.gather(*calls)
        assert [a.status_code for a in answers] == [200] * 5
        assert all(len(a.json()["data"]) == 2 for a in answers)
        assert len(c.scale_patches(EMBED)) == 1


@aio
@aio
async def test_deadline_is_503_with_retry_after() -> None:
    async with api_server() as c, router_in_process(c, settings(queue_timeout_s=0.5)) as router:
        await c.create(EMBED, "embedding")
        await eventually(lambda: router.control.model_type(EMBED), what="the watch to see the model")
        async with httpx.AsyncClient(timeout=30) as http:
            resp = await http.post(f"{router.url}/v1/embeddings", json=embed_body())
        assert resp.status_code == 503
        assert resp.headers["Retry-After"] == "1"
        assert resp.json()["error"]["code"] == "model_not_ready"
        assert len(c.scale_patches(EMBED)) == 1


@aio
async def test_failed_phase_is_503_with_the_operators_message() -> None:
    async with api_server() as c, router_in_process(c, settings()) as router, httpx.AsyncClient(timeout=30) as http:
        await c.create(EMBED, "embedding")
        await eventually(lambda: router.control.model_type(EMBED), what="the watch to see the model")
        waiting = asyncio.create_task(http.post(f"{router.url}/v1/embeddings", json=embed_body()))
        await eventually(lambda: c.scale_patches(EMBED), what="the scale PATCH")
        await c.set_status(EMBED, phase="Failed", message="runtime exited: CUDA out of memory")
        resp = await waiting
        assert resp.status_code == 503
        error = resp.json()["error"]
        assert error["code"] == "model_failed"
        assert "CUDA out of memory" in error["message"]
        assert int(resp.headers["Retry-After"]) >= 1
        # While it stays Failed, requests are refused at once and do not scale it again.
        again = await http.post(f"{router.url}/v1/embeddings", json=embed_body())
        assert again.status_code == 503
        assert again.json()["error"]["code"] == "model_failed"
        assert len(c.scale_patches(EMBED)) == 1


@aio
async def test_a_refused_scale_up_is_503_with_the_reason_and_the_next_request_tries_again() -> None:
    quick = settings(queue_timeout_s=1)
    async with api_server() as c, router_in_process(c, quick) as router, httpx.AsyncClient(timeout=30) as http:
        refuse = lambda r: (403, 'cannot patch resource "localmodels/scale"') if r.subresource == "scale" else None  # noqa: E731
        c.emulator.faults.append(refuse)
        await c.create(EMBED, "embedding")
        await eventually(lambda: router.control.model_type(EMBED), what="the watch to see the model")
        resp = await http.post(f"{router.url}/v1/embeddings", json=embed_body())
        assert resp.status_code == 503
        assert resp.json()["error"]["code"] == "scale_failed"
        assert "cannot patch" in resp.json()["error"]["message"]
        c.emulator.faults.remove(refuse)
        again = await http.post(f"{router.url}/v1/embeddings", json=embed_body())
        assert again.json()["error"]["code"] == "model_not_ready"  # scaled this time; no operator here
        assert len(c.scale_patches(EMBED)) == 2
        assert c.obj(EMBED)["spec"]["replicas"] == 1


@aio
async def test_a_waiting_request_whose_client_leaves_as_its_model_changes_stops_waiting() -> None:
    """The cancellation (the client left) lands in the step the watch woke the waiter. On Python
    3.11 ``asyncio.wait_for`` returned instead of raising there, and the request waited on."""
    configuration, namespace = await connect("http://127.0.0.1:9", NAMESPACE)  # never called: no start()
    control = KubeControlPlane(KubeClient(configuration, namespace), settings(), RouterMetrics())
    loading = {"metadata": {"name": CHAT}, "spec": {"type": "chat", "replicas": 1}, "status": {"phase": "Loading"}}
    control._apply_model("ADDED", loading)
    waiting = asyncio.create_task(control.acquire(CHAT, 600))
    await eventually(lambda: control.models[CHAT].waiting == 1, what="the request to wait")
    control._apply_model("MODIFIED", loading)  # wakes the waiter: it would look again
    waiting.cancel()
    done, _ = await asyncio.wait({waiting}, timeout=30)  # a guard against a hang, not a measurement
    assert waiting in done, "the request went on waiting after its client left"
    assert waiting.cancelled()
    assert control.models[CHAT].waiting == 0


@aio
async def test_unknown_model_is_404_and_a_full_queue_is_429() -> None:
    async with api_server() as c, router_in_process(c, settings(max_queue_per_model=1)) as router:
        await c.create(EMBED, "embedding")
        await eventually(lambda: router.control.model_type(EMBED), what="the watch to see the model")
        client = openai.AsyncOpenAI(base_url=f"{router.url}/v1", api_key="x", max_retries=0, timeout=30)
        with pytest.raises(openai.NotFoundError) as info:
            await client.embeddings.create(**embed_body("no-such-model"))  # type: ignore[arg-type]
        assert info.value.code == "model_not_found"
        first = asyncio.create_task(client.embeddings.create(**embed_body()))  # type: ignore[arg-type]
        await eventually(lambda: c.scale_patches(EMBED), what="the first request to wait")
        with pytest.raises(openai.RateLimitError):
            await client.embeddings.create(**embed_body())  # type: ignore[arg-type]
        await c.set_status(EMBED, phase="Failed", message="gave up")
        with pytest.raises(openai.InternalServerError):
            await first
        await client.close()


@aio
async def test_models_list_follows_the_watch() -> None:
    async with api_server() as c:
        await c.create("a-available", "chat", memory="1Gi")
        await c.set_status("a-available", phase="Available")
        await c.create("b-loading", "embedding", replicas=1, placement="cpu")
        await c.set_status("b-loading", phase="Loading")
        await c.create("c-ready", "reranker", replicas=1)
        await c.set_ready("c-ready", "http://10.0.0.1:8000", memory=12345, placement="gpu")
        await c.create("d-evicted", "vision", memory=2000)
        await c.set_status("d-evicted", phase="Evicted")
        await c.create("e-failed", "multimodal", memory="6G")
        await c.set_status("e-failed", phase="Failed", message="no node has room")
        async with router_in_process(c, settings()) as router, httpx.AsyncClient(timeout=30) as http:
            data = (await http.get(f"{router.url}/v1/models")).json()["data"]
            assert [m["id"] for m in data] == ["a-available", "b-loading", "c-ready", "d-evicted", "e-failed"]
            assert [m["state"] for m in data] == ["available", "loading", "ready", "available", "failed"]
            assert [m["type"] for m in data] == ["chat", "embedding", "reranker", "vision", "multimodal"]
            assert [m["memory_bytes"] for m in data] == [2**30, None, 12345, 2000, 6 * 10**9]
            assert [m["placement"] for m in data] == [None, "cpu", "gpu", None, None]
            assert all(m["object"] == "model" and m["owned_by"] == "llmi" for m in data)
            assert data[4]["error"] == "no node has room"
            one = (await http.get(f"{router.url}/v1/models/c-ready")).json()
            assert one["state"] == "ready"
            health = (await http.get(f"{router.url}/v1/health")).json()
            assert health["backend"] == "kubernetes"
            assert health["models"]["b-loading"] == "Loading"

            # Later changes arrive through the watch.
            await c.create("f-new", "chat")
            await c.delete("a-available")
            await c.set_ready("b-loading", "http://10.0.0.2:8000")

            async def ids() -> dict[str, str]:
                return {m["id"]: m["state"] for m in (await http.get(f"{router.url}/v1/models")).json()["data"]}

            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            while (seen := await ids()) != {
                "b-loading": "ready",
                "c-ready": "ready",
                "d-evicted": "available",
                "e-failed": "failed",
                "f-new": "available",
            }:
                assert loop.time() < deadline, seen
                await asyncio.sleep(0.02)


@aio
@aio
@pytest.mark.slow
async def test_last_request_time_is_patched_once_per_interval(runtimes: Callable[[str], RuntimeProcess]) -> None:
    embed = runtimes(EMBED)
    t0 = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC).timestamp()
    clock = {"t": t0}
    slow = Timing(report_s=3600, heartbeat_s=3600, touch_s=3600)
    async with api_server() as c:
        await c.create(EMBED, "embedding", replicas=1)
        await c.set_ready(EMBED, embed.url)
        async with router_in_process(c, settings(), timing=slow, now=lambda: clock["t"]) as router:
            async with httpx.AsyncClient(timeout=60) as http:
                for i in range(3):
                    clock["t"] = t0 + i  # each request a second later
                    resp = await http.post(f"{router.url}/v1/embeddings", json=embed_body())
                    assert resp.status_code == 200
            await eventually(lambda: stamps(c), what="the last-request annotation")
            assert c.scale_patches(EMBED) == []
        # Closing sends the last request time the interval held back: one stamp for the burst,
        # one at shutdown (not one per request); the in-flight report is gone again.
        assert stamps(c) == ["2030-01-02T03:04:05Z", "2030-01-02T03:04:07Z"]
        annotations = c.obj(EMBED)["metadata"]["annotations"]
        assert annotations[ANNOTATION_LAST_REQUEST] == "2030-01-02T03:04:07Z"
        assert report_key("router") not in annotations


def stamps(c: ApiServer) -> list[str]:
    found = [
        (p.data["metadata"]["annotations"] or {}).get(ANNOTATION_LAST_REQUEST) for p in c.annotation_patches(EMBED)
    ]
    return [s for s in found if s]


@aio
async def test_watch_resumes_from_its_resource_version_and_lists_again_on_410() -> None:
    async with api_server() as c:
        await c.create("m", "chat")
        # The first watch ends after one event (as the server's timeoutSeconds does); the second
        # says its resourceVersion expired (410 Gone); then the emulator's own watch takes over.
        script: list[tuple[dict[str, object], ...]] = [
            ({"type": "MODIFIED", "object": {**c.obj("m"), "metadata": {"name": "m", "resourceVersion": "42"}}},),
            (
                {
                    "type": "ERROR",
                    "object": {
                        "kind": "Status",
                        "code": 410,
                        "reason": "Expired",
                        "message": "too old resource version",
                    },
                },
            ),
        ]
        c.emulator["get", LM, {"watch": WATCH}, lambda _: bool(script)] << (lambda _: script.pop(0))
        async with router_in_process(c, settings()) as router:
            await eventually(lambda: len(c.requests("GET")) >= 4, what="list, watch, watch, list")
            gets = c.requests("GET")
            assert [r.params.get("watch") in WATCH for r in gets[:4]] == [False, True, True, False]
            assert gets[2].params["resourceVersion"] == "42"
            await c.create("n", "embedding")
            await eventually(lambda: router.control.model_type("n"), what="the new watch to deliver events")


@aio
async def test_readyz_follows_the_health_of_the_watch() -> None:
    async with api_server() as c:
        await c.create("m", "chat")
        broken = {"on": False}
        c.emulator.faults.append(lambda r: (500, "etcd is down") if broken["on"] and r.resource == LM else None)

        def fail_then_end(_: object) -> tuple[dict[str, object], ...]:
            broken["on"] = True  # from now on lists fail too
            return (
                {
                    "type": "ERROR",
                    "object": {"kind": "Status", "code": 500, "reason": "InternalError", "message": "etcd is down"},
                },
            )

        first = {"done": False}
        c.emulator["get", LM, {"watch": WATCH}, lambda _: not first["done"]] << (
            lambda r: (first.update(done=True), fail_then_end(r))[1]
        )
        async with router_in_process(c, settings()) as router, httpx.AsyncClient(timeout=10) as http:

            async def readyz() -> int:
                return (await http.get(f"{router.url}/readyz")).status_code

            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            while await readyz() != 503:
                assert loop.time() < deadline, "readyz stayed 200 while the watch failed"
                await asyncio.sleep(0.02)
            body = (await http.get(f"{router.url}/readyz")).json()
            assert "etcd is down" in body["watches"]["LocalModels"]["last_error"]
            assert (await http.get(f"{router.url}/healthz")).status_code == 200  # alive, just not ready
            broken["on"] = False
            while await readyz() != 200:
                assert loop.time() < deadline + 30, "readyz did not recover with the watch"
                await asyncio.sleep(0.02)


@aio
@pytest.mark.slow
async def test_endpoints_not_ready_then_ready_is_answered_without_502(
    runtimes: Callable[[str], RuntimeProcess],
) -> None:
    """Ready in the status runs ahead of the endpoints: the router waits for a ready endpoint."""
    embed = runtimes(EMBED)
    async with api_server() as c, router_in_process(c, settings()) as router, httpx.AsyncClient(timeout=60) as http:
        await c.create(EMBED, "embedding", replicas=1)
        await c.set_endpoints(EMBED, embed.url, ready=False)
        await c.set_status(EMBED, phase="Ready", endpoint="http://llmi-tiny-bert-embed.llmi-test.svc:8000")
        await eventually(lambda: router.control.models.get(EMBED) and router.control.models[EMBED].view.ready, "Ready")
        pending = asyncio.create_task(http.post(f"{router.url}/v1/embeddings", json=embed_body()))
        await eventually(lambda: router.control.models[EMBED].waiting == 1, what="the request to wait")
        assert not pending.done()
        await c.set_endpoints(EMBED, embed.url, ready=True)
        resp = await pending
        assert resp.status_code == 200, resp.text
        assert c.scale_patches(EMBED) == []


@aio
@pytest.mark.slow
async def test_a_refused_endpoint_is_retried_on_the_next_one(runtimes: Callable[[str], RuntimeProcess]) -> None:
    """An endpoint that refuses connections (a pod gone before its slice says so) costs no 502:
    the router waits for the EndpointSlice to change within the request's deadline."""
    embed = runtimes(EMBED)
    dead = f"http://127.0.0.1:{free_port()}"
    async with api_server() as c, router_in_process(c, settings()) as router, httpx.AsyncClient(timeout=60) as http:
        await c.create(EMBED, "embedding", replicas=1)
        await c.set_ready(EMBED, dead)
        await eventually(
            lambda: router.control.models.get(EMBED) and router.control._usable(router.control.models[EMBED]),
            "the dead endpoint in view",
        )
        pending = asyncio.create_task(http.post(f"{router.url}/v1/embeddings", json=embed_body()))
        await eventually(lambda: router.control.models[EMBED].refused, what="the refused connection")
        await c.set_endpoints(EMBED, embed.url)
        resp = await pending
        assert resp.status_code == 200, resp.text


def test_llmi_router_needs_kubernetes(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["router"]) == 2
    err = capsys.readouterr().err
    assert "--kubernetes" in err
    assert "llmi serve" in err


@aio
async def test_startup_fails_with_the_reason_when_localmodels_cannot_be_listed() -> None:
    configuration, _ = await connect(f"http://127.0.0.1:{free_port()}", NAMESPACE)
    dead = KubeControlPlane(KubeClient(configuration, NAMESPACE), settings(), RouterMetrics(), sync_timeout_s=1)
    with pytest.raises(RuntimeError, match=r"cannot list LocalModels at .*(Cannot connect|ClientConnector)"):
        await dead.start()
    async with kmock.KubernetesEmulator() as k, kmock.Server(k) as server:  # no LocalModel resource
        configuration, _ = await connect(str(server.url), NAMESPACE)
        no_crd = KubeControlPlane(KubeClient(configuration, NAMESPACE), settings(), RouterMetrics(), sync_timeout_s=1)
        with pytest.raises(RuntimeError, match="CRD installed"):
            await no_crd.start()


def kubeconfig_file(path: Path, server: str, user: dict[str, object], **cluster: object) -> Path:
    context = {"cluster": "c", "user": "u", "namespace": "models"}
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": server, **cluster}}],
                "users": [{"name": "u", "user": user}],
                "contexts": [{"name": "x", "context": context}],
                "current-context": "x",
            }
        )
    )
    return path


@aio
async def test_kubeconfig_credentials_reach_the_api_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with api_server("models") as c:
        config = kubeconfig_file(tmp_path / "config", c.url, {"token": "t0k3n"})
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        monkeypatch.setattr(kubernetes_asyncio.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(config))
        configuration, namespace = await connect(None, None, service_account=tmp_path / "none")
        assert namespace == "models"
        kube = KubeClient(configuration, namespace)
        try:
            await kube.list(LOCALMODELS)
        finally:
            await kube.close()
        lists = [r for r in c.emulator if r.resource == LM and r.namespace == "models"]
        assert lists[0].headers["Authorization"] == "Bearer t0k3n"
        assert (await connect(None, "other", service_account=tmp_path / "none"))[1] == "other"


@aio
async def test_kubeconfig_tls_and_in_cluster_service_account(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = kubeconfig_file(
        tmp_path / "config", "https://k8s.example:6443", {"token": "abc"}, **{"insecure-skip-tls-verify": True}
    )
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setattr(kubernetes_asyncio.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(config))
    configuration, namespace = await connect(None, None, service_account=tmp_path / "none")
    assert (configuration.host, namespace) == ("https://k8s.example:6443", "models")
    assert configuration.verify_ssl is False
    assert await configuration.get_api_key_with_prefix("BearerToken") == "Bearer abc"

    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text("pod-token")
    (account / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    (account / "namespace").write_text("llmi\n")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    configuration, namespace = await connect(None, None, service_account=account)
    assert (configuration.host, namespace) == ("https://10.96.0.1:443", "llmi")
    assert await configuration.get_api_key_with_prefix("BearerToken") == "Bearer pod-token"
    assert configuration.ssl_ca_cert == str(account / "ca.crt")
    explicit, namespace = await connect("http://127.0.0.1:8001", None)
    assert (explicit.host, namespace) == ("http://127.0.0.1:8001", "default")
