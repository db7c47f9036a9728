"""The runtime app before and after loading, in-process (no model needed)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from llmi.modeltypes import ModelType
from llmi.settings import Settings
from llmi_runtime.app import build_app
from llmi_runtime.engines.base import LoadOptions
from llmi_runtime.state import Phase, RuntimeState


class WatchedEvent(asyncio.Event):
    """An event that tells when someone starts waiting on it."""

    def __init__(self) -> None:
        super().__init__()
        self.waited = asyncio.Event()

    async def wait(self) -> bool:
        self.waited.set()
        return await super().wait()


@pytest.fixture
async def app_state(tmp_path: Path):  # type: ignore[no-untyped-def]
    state = RuntimeState("m", ModelType.EMBEDDING, tmp_path, LoadOptions(device="cpu"), Settings())
    # No lifespan: the model never starts loading, so the app stays in "loading".
    transport = httpx.ASGITransport(app=build_app(state))
    async with httpx.AsyncClient(transport=transport, base_url="http://runtime") as client:
        yield client, state
    state.close()


async def test_not_ready_while_loading(app_state) -> None:  # type: ignore[no-untyped-def]
    client, _ = app_state
    assert (await client.get("/healthz")).status_code == 200
    ready = await client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["status"] == "loading"
    response = await client.post("/v1/embeddings", json={"model": "m", "input": "x"})
    assert response.status_code == 503
    assert response.headers["retry-after"] == "2"
    assert response.json()["error"]["code"] == "model_not_ready"
    health = (await client.get("/v1/health")).json()
    assert health["status"] == "loading"
    assert health["type"] == "embedding"


async def test_a_waiting_readiness_probe_answers_when_loading_ends(app_state) -> None:  # type: ignore[no-untyped-def]
    client, state = app_state
    # Bounded: a load that does not end is answered "loading" when the wait is up.
    assert (await client.get("/readyz", params={"wait": "0.01"})).json()["status"] == "loading"
    state.settled = settled = WatchedEvent()
    probe = asyncio.ensure_future(client.get("/readyz", params={"wait": "30"}))
    await settled.waited.wait()  # the probe is parked on the load's end
    await state.load()  # the folder is empty: loading fails, and the probe hears of it at once
    answer = await probe
    assert answer.status_code == 503
    assert answer.json()["status"] == "failed"


async def test_failed_load_is_reported(app_state) -> None:  # type: ignore[no-untyped-def]
    client, state = app_state
    await state.load()  # the folder is empty: loading fails
    assert state.phase is Phase.FAILED
    ready = await client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["status"] == "failed"
    assert ready.json()["error"]
    response = await client.post("/v1/embeddings", json={"model": "m", "input": "x"})
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "model_failed"


async def test_metrics_count_requests_by_endpoint_and_status(app_state) -> None:  # type: ignore[no-untyped-def]
    client, _ = app_state
    await client.post("/v1/embeddings", content=b"{")
    await client.post("/v1/embeddings", json={"model": "m", "input": "x"})
    await client.post("/v1/../../etc/passwd", json={})
    text = (await client.get("/metrics")).text
    assert 'llmi_runtime_requests_total{endpoint="/v1/embeddings",status="400"} 1.0' in text
    assert 'llmi_runtime_requests_total{endpoint="/v1/embeddings",status="503"} 1.0' in text
    assert 'llmi_runtime_requests_total{endpoint="other",status="404"} 1.0' in text
    assert 'llmi_runtime_ready{model="m",type="embedding"} 0.0' in text


def test_settings_keep_the_original_environment_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_PORT", "16000")
    monkeypatch.setenv("LLM_MODELS_DIR", "/srv/models")
    monkeypatch.setenv("LLM_ENABLE_GPU_MEMORY_OFFLOAD", "false")
    monkeypatch.setenv("LLM_AVAILABLE_GPU_MEMORY_GB", "12")
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert s.port == 16000
    assert str(s.models_dir) == "/srv/models"
    assert s.enable_gpu_memory_offload is False
    assert s.available_gpu_memory_gb == 12
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    monkeypatch.delenv("LLM_PORT")
    assert Settings(_env_file=None).port == 15530  # type: ignore[call-arg]
    assert defaults.gpu_memory_offload_threshold_gb == 4.0
