"""The router's Kubernetes backend against kmock's API emulator over HTTP.

The test plays the operator: it watches for the router's scale PATCH, starts a real runtime and
writes the LocalModel's status. Every wait is on an observable condition, never a fixed sleep.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import signal
import ssl
from collections.abc import Callable
from pathlib import Path

import httpx
import kmock
import kubernetes.config.kube_config
import numpy as np
import openai
import pytest
import yaml

from llmi.cli import main as cli_main
from llmi.settings import Settings
from llmi_router.embedded.process import free_port
from llmi_router.kube import LAST_REQUEST_ANNOTATION, KubeApi, KubeConnection, KubeControlPlane, parse_quantity
from llmi_router.kube_main import load_connection
from llmi_router.metrics import RouterMetrics
from tests.kube_fixtures import NAMESPACE, cluster, eventually, metric, router_in_process
from tests.servers import RuntimeProcess, poll_ready, runtime_env, spawn_llmi, start_runtime, stop_process

# One loop for kmock, the in-process router and the test, so the test can play the operator.
aio = pytest.mark.asyncio(loop_scope="session")
EMBED, CHAT = "tiny-bert-embed", "tiny-llama-chat"


def settings(**changes: object) -> Settings:
    return Settings().model_copy(update=changes)


def embed_body(model: str = EMBED) -> dict[str, object]:
    return {"model": model, "input": ["a", "b"], "encoding_format": "float"}


@aio
@pytest.mark.slow
async def test_scale_up_on_demand_through_llmi_router(
    tiny_models: dict[str, Path], runtimes: Callable[[str], RuntimeProcess], tmp_path: Path
) -> None:
    """Acceptance: `llmi router --kubernetes` as a process; a request for a model at zero replicas
    scales it up, waits for Ready, and the answer reaches the official client intact."""
    chat = runtimes(CHAT)  # a model the operator already made Ready
    async with cluster() as c:
        await c.create(EMBED, "embedding", memory="512Mi")
        await c.set_status(EMBED, phase="Available")
        await c.create(CHAT, "chat", replicas=1)
        await c.set_status(CHAT, phase="Ready", endpoint=chat.url, placement="cpu")
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
            await c.set_status(EMBED, phase="Ready", endpoint=runtime.url, placement="cpu")

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
            await eventually(lambda: c.annotation_patches(EMBED), what="the last-request annotation")
            stamp = c.obj(EMBED)["metadata"]["annotations"][LAST_REQUEST_ANNOTATION]
            assert stamp.endswith("Z")
            age = dt.datetime.now(dt.UTC) - dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
            assert dt.timedelta(0) <= age < dt.timedelta(minutes=5)
            await client.close()
        finally:
            code = await asyncio.to_thread(stop_process, proc)
            if runtime is not None:
                runtime.stop()
        output = log.read_text(errors="replace")
        # uvicorn shuts down cleanly, then re-raises the signal so the exit status says SIGTERM.
        assert code in (0, -signal.SIGTERM), output
        assert "Application shutdown complete" in output, output
        assert "Traceback" not in output, output


@aio
@pytest.mark.slow
async def test_concurrent_requests_share_one_scale_up(runtimes: Callable[[str], RuntimeProcess]) -> None:
    embed = runtimes(EMBED)
    async with cluster() as c, router_in_process(c, settings()) as router, httpx.AsyncClient(timeout=60) as http:
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
        await c.set_status(EMBED, phase="Ready", endpoint=embed.url)
        answers = await asyncio.gather(*calls)
        assert [a.status_code for a in answers] == [200] * 5
        assert all(len(a.json()["data"]) == 2 for a in answers)
        assert len(c.scale_patches(EMBED)) == 1


@aio
async def test_deadline_is_503_with_retry_after() -> None:
    async with cluster() as c, router_in_process(c, settings(queue_timeout_s=0.5)) as router:
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
    async with cluster() as c, router_in_process(c, settings()) as router, httpx.AsyncClient(timeout=30) as http:
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
async def test_a_refused_scale_up_is_503_with_the_reason() -> None:
    async with cluster() as c, router_in_process(c, settings()) as router, httpx.AsyncClient(timeout=30) as http:
        forbidden = {"kind": "Status", "code": 403, "message": 'cannot patch resource "localmodels/scale"'}
        c.k["patch", c.resource, kmock.subresource("scale")].override << 403 << forbidden
        await c.create(EMBED, "embedding")
        await eventually(lambda: router.control.model_type(EMBED), what="the watch to see the model")
        resp = await http.post(f"{router.url}/v1/embeddings", json=embed_body())
        assert resp.status_code == 503
        assert resp.json()["error"]["code"] == "scale_failed"
        assert "cannot patch" in resp.json()["error"]["message"]


@aio
async def test_unknown_model_is_404_and_a_full_queue_is_429() -> None:
    async with cluster() as c, router_in_process(c, settings(max_queue_per_model=1)) as router:
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
    async with cluster() as c:
        await c.create("a-available", "chat", memory="1Gi")
        await c.set_status("a-available", phase="Available")
        await c.create("b-loading", "embedding", replicas=1, placement="cpu")
        await c.set_status("b-loading", phase="Loading")
        await c.create("c-ready", "reranker", replicas=1)
        await c.set_status("c-ready", phase="Ready", endpoint="http://x:8000", memory=12345, placement="gpu")
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
            await c.set_status("b-loading", phase="Ready", endpoint="http://y:8000")

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
@pytest.mark.slow
async def test_last_request_time_is_patched_once_per_interval(runtimes: Callable[[str], RuntimeProcess]) -> None:
    embed = runtimes(EMBED)
    t0 = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    seconds = itertools.count()
    clock = {"now": lambda: t0 + dt.timedelta(seconds=next(seconds))}  # each request a second later
    async with cluster() as c:
        await c.create(EMBED, "embedding", replicas=1)
        await c.set_status(EMBED, phase="Ready", endpoint=embed.url)
        async with router_in_process(c, settings(), touch_interval_s=3600, **clock) as router:
            async with httpx.AsyncClient(timeout=60) as http:
                for _ in range(3):
                    resp = await http.post(f"{router.url}/v1/embeddings", json=embed_body())
                    assert resp.status_code == 200
            await eventually(lambda: c.annotation_patches(EMBED), what="the last-request annotation")
            assert c.scale_patches(EMBED) == []
        # Closing waits for every patch, then sends the last request time the interval held back:
        # one patch for the burst, one at shutdown (not one per request).
        stamps = [p.data["metadata"]["annotations"][LAST_REQUEST_ANNOTATION] for p in c.annotation_patches(EMBED)]
        assert stamps == ["2030-01-02T03:04:05Z", "2030-01-02T03:04:07Z"]
        assert c.obj(EMBED)["metadata"]["annotations"][LAST_REQUEST_ANNOTATION] == stamps[-1]


@aio
async def test_watch_resumes_from_its_resource_version_and_lists_again_on_410() -> None:
    async with cluster() as c:
        await c.create("m", "chat")
        # The first watch ends after one event (as the server's timeoutSeconds does); the second
        # says its resourceVersion expired (410 Gone); then kmock's own watch takes over.
        script: list[tuple[dict[str, object], ...]] = [
            ({"type": "MODIFIED", "object": {**c.obj("m"), "metadata": {"name": "m", "resourceVersion": "42"}}},),
            ({"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old resource version"}},),
        ]
        c.k["get", c.resource, {"watch": "true"}, lambda _: bool(script)] << (lambda _: script.pop(0))
        async with router_in_process(c, settings()) as router:
            await eventually(lambda: len(c.requests("GET")) >= 4, what="list, watch, watch, list")
            gets = c.requests("GET")
            assert [r.params.get("watch") for r in gets[:4]] == [None, "true", "true", None]
            assert gets[2].params["resourceVersion"] == "42"
            await c.create("n", "embedding")
            await eventually(lambda: router.control.model_type("n"), what="the new watch to deliver events")


def test_llmi_router_needs_kubernetes(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["router"]) == 2
    err = capsys.readouterr().err
    assert "--kubernetes" in err
    assert "llmi serve" in err


@aio
async def test_startup_fails_with_the_reason_when_localmodels_cannot_be_listed() -> None:
    dead = KubeControlPlane(
        KubeApi(KubeConnection(f"http://127.0.0.1:{free_port()}"), NAMESPACE),
        settings(),
        RouterMetrics(),
        sync_timeout_s=1,
    )
    with pytest.raises(RuntimeError, match=r"cannot list LocalModels at .*ConnectError"):
        await dead.start()
    async with kmock.KubernetesEmulator() as k, kmock.Server(k) as server:  # no LocalModel resource
        api = KubeApi(KubeConnection(str(server.url)), NAMESPACE)
        no_crd = KubeControlPlane(api, settings(), RouterMetrics(), sync_timeout_s=1)
        with pytest.raises(RuntimeError, match="CRD installed"):
            await no_crd.start()


@aio
async def test_api_calls_carry_the_authorization_header() -> None:
    async with cluster() as c:
        api = KubeApi(KubeConnection(c.url, authorization=lambda: "Bearer t0k3n"), NAMESPACE)
        try:
            await api.list()
        finally:
            await api.aclose()
        assert c.requests("GET")[0].headers["Authorization"] == "Bearer t0k3n"


def test_kubeconfig_gives_server_token_namespace_and_tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kubeconfig = tmp_path / "config"
    cluster_ = {"server": "https://k8s.example:6443", "insecure-skip-tls-verify": True}
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": cluster_}],
                "users": [{"name": "u", "user": {"token": "abc"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u", "namespace": "models"}}],
                "current-context": "x",
            }
        )
    )
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))
    connection, namespace = load_connection(None, None)
    assert (connection.server, namespace) == ("https://k8s.example:6443", "models")
    assert connection.authorization is not None
    assert connection.authorization() == "Bearer abc"
    assert isinstance(connection.verify, ssl.SSLContext)
    assert connection.verify.verify_mode == ssl.CERT_NONE
    assert load_connection(None, "other")[1] == "other"
    assert load_connection("http://127.0.0.1:8001", None) == (KubeConnection("http://127.0.0.1:8001"), "default")


def test_quantities() -> None:
    assert parse_quantity("6Gi") == 6 * 2**30
    assert parse_quantity("512Mi") == 512 * 2**20
    assert parse_quantity("6G") == 6 * 10**9
    assert parse_quantity("1.5Gi") == 3 * 2**29
    assert parse_quantity(1234) == 1234
    assert parse_quantity("12345") == 12345
    assert parse_quantity("lots") is None
    assert parse_quantity(None) is None
    assert parse_quantity(True) is None
