"""Parking a GPU runtime in host memory, on CPU: a fake device records the moves (there is no GPU here)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from llmi.modeltypes import ModelType
from llmi.settings import Settings
from llmi_runtime.app import build_app
from llmi_runtime.engines.base import LoadOptions
from llmi_runtime.parking import Parker, park_engine, park_refusal, wake_engine
from llmi_runtime.state import Phase, RuntimeState

MEMORY_KEYS = {"measured_bytes", "pss_bytes", "rss_bytes", "gpu_bytes", "gpu_context_bytes", "device"}


@dataclass
class FakeDevice:
    """Records every move and cache release; fails the moves it is told to."""

    moves: list[tuple[Any, str]] = field(default_factory=list)
    freed: int = 0
    fail_to: set[str] = field(default_factory=set)

    def move(self, module: Any, target: str) -> None:
        if target in self.fail_to:
            raise torch.OutOfMemoryError(f"CUDA out of memory moving to {target}")
        self.moves.append((module, target))

    def free_cache(self) -> None:
        self.freed += 1


class FakeGpuEngine:
    """An embedding engine that says it runs on the GPU; its ``model`` is what parking moves."""

    model_type = ModelType.EMBEDDING
    dimensions = 4
    batch_size = 32  # texts per forward

    def __init__(self) -> None:
        self.model = torch.nn.Linear(4, 4)
        self.device = torch.device("cuda", 0)
        self.placement = "gpu"
        self.path = Path("/nowhere")

    def embed(self, inputs: list[str]) -> tuple[torch.Tensor, int]:
        return torch.ones(len(inputs), 4), len(inputs)

    def prepare(self, inputs: list[str]) -> list[list[int]]:
        return [[0] for _ in inputs]  # one token each

    def forward(self, rows: list[list[int]]) -> list[torch.Tensor]:
        return [torch.ones(4) for _ in rows]

    def info(self) -> dict[str, Any]:
        return {"device": str(self.device), "placement": self.placement, "parameters": 20, "memory_bytes": 80}


def test_park_refusals_say_why() -> None:
    assert park_refusal(Phase.READY, "gpu", 0) is None
    assert "CPU" in str(park_refusal(Phase.READY, "cpu", 0))
    assert "offload" in str(park_refusal(Phase.READY, "offload", 0))
    assert "busy (2 requests" in str(park_refusal(Phase.READY, "gpu", 2))
    assert "loading" in str(park_refusal(Phase.LOADING, "gpu", 0))
    assert "failed" in str(park_refusal(Phase.FAILED, "gpu", 0))


def test_park_moves_the_weights_to_host_memory_then_frees_the_cache_and_wake_moves_them_back() -> None:
    engine, device = FakeGpuEngine(), FakeDevice()
    park_engine(engine, device)
    assert device.moves == [(engine.model, "cpu")]
    assert device.freed == 1
    wake_engine(engine, device)
    assert device.moves == [(engine.model, "cpu"), (engine.model, "cuda:0")]


def test_a_wake_that_runs_out_of_memory_leaves_the_weights_in_host_memory() -> None:
    engine, device = FakeGpuEngine(), FakeDevice(fail_to={"cuda:0"})
    with pytest.raises(torch.OutOfMemoryError):
        wake_engine(engine, device)
    assert device.moves == [(engine.model, "cpu")]
    assert device.freed == 1


@pytest.fixture
async def parked_app(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, RuntimeState, FakeDevice]]:
    state = RuntimeState("m", ModelType.EMBEDDING, tmp_path, LoadOptions(device="cpu"), Settings())
    state.engine, state.phase = FakeGpuEngine(), Phase.READY
    app = build_app(state)
    device = FakeDevice()
    app.state.parker = Parker(state, device)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://runtime") as client:
        yield client, state, device
    state.close()


async def test_requests_to_a_parked_model_get_503_with_retry_after_until_it_wakes(
    parked_app: tuple[httpx.AsyncClient, RuntimeState, FakeDevice],
) -> None:
    client, state, device = parked_app
    body = {"model": "m", "input": "hello"}
    assert (await client.post("/v1/embeddings", json=body)).status_code == 200

    parked = await client.post("/admin/park")
    assert parked.status_code == 200
    assert parked.json()["state"] == "parked"
    assert set(parked.json()["memory"]) == MEMORY_KEYS
    assert device.moves == [(state.engine.model, "cpu")]
    refused = await client.post("/v1/embeddings", json=body)
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "model_parked"
    (card,) = (await client.get("/v1/models")).json()["data"]
    assert card["state"] == "parked"
    assert (await client.get("/v1/health")).json()["status"] == "parked"
    assert (await client.get("/readyz")).status_code == 503

    again = await client.post("/admin/park")  # idempotent: nothing moves twice
    assert again.status_code == 200
    assert len(device.moves) == 1

    woken = await client.post("/admin/wake")
    assert woken.status_code == 200
    assert woken.json()["state"] == "ready"
    assert device.moves[-1] == (state.engine.model, "cuda:0")
    assert (await client.post("/v1/embeddings", json=body)).status_code == 200
    assert (await client.post("/admin/wake")).status_code == 200  # idempotent too
    assert len(device.moves) == 2


async def test_a_failed_wake_stays_parked_with_a_503(
    parked_app: tuple[httpx.AsyncClient, RuntimeState, FakeDevice],
) -> None:
    client, state, device = parked_app
    assert (await client.post("/admin/park")).status_code == 200
    device.fail_to = {"cuda:0"}
    woken = await client.post("/admin/wake")
    assert woken.status_code == 503
    assert woken.headers["retry-after"] == "5"
    assert woken.json()["error"]["code"] == "wake_failed"
    assert state.phase is Phase.PARKED
    device.fail_to = set()
    assert (await client.post("/admin/wake")).json()["state"] == "ready"


async def test_a_failed_park_goes_back_to_ready(parked_app: tuple[httpx.AsyncClient, RuntimeState, FakeDevice]) -> None:
    client, state, device = parked_app
    device.fail_to = {"cpu"}
    parked = await client.post("/admin/park")
    assert parked.status_code == 503
    assert parked.json()["error"]["code"] == "park_failed"
    assert state.phase is Phase.READY
    assert device.moves == [(state.engine.model, "cuda:0")]
    assert (await client.post("/v1/embeddings", json={"model": "m", "input": "x"})).status_code == 200


async def test_parking_a_model_that_is_not_ready_or_not_on_a_gpu_is_a_409(
    parked_app: tuple[httpx.AsyncClient, RuntimeState, FakeDevice],
) -> None:
    client, state, device = parked_app
    state.engine.placement = "offload"
    refused = await client.post("/admin/park")
    assert refused.status_code == 409
    assert refused.json()["error"] == {
        "message": "Cannot park 'm': the model runs with placement offload; only a GPU placement can be parked "
        "(there is no device memory to free).",
        "type": "invalid_request_error",
        "param": None,
        "code": "cannot_park",
    }
    state.phase = Phase.LOADING
    assert (await client.post("/admin/wake")).status_code == 409
    assert device.moves == []
