"""Acceptance (embedded mode): `llmi serve` as a real process switching models under a budget."""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from tests.images import b64, picture
from tests.serve_process import ServeProcess, model_folder, start_serve
from tests.servers import runtime_env

pytestmark = pytest.mark.slow
FIVE = ["tiny-llama-chat", "tiny-bert-embed", "tiny-bert-reranker", "tiny-vit", "tiny-clip"]


@pytest.fixture(scope="module")
def serve(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """Five models of 1 GiB each (llmi.yaml) in a 2.5 GiB budget: room for two."""
    root = tmp_path_factory.mktemp("serve")
    models = model_folder(tiny_models, root / "models", FIVE, memory="1GiB")
    env = runtime_env(LLM_MODEL_CACHE_SIZE="4", LLM_AUTO_UNLOAD_MODELS="false")
    server = start_serve(models, root, "--cpu-memory-gb", "2.5", env=env)
    yield server
    server.stop()


def states(serve: ServeProcess) -> dict[str, str]:
    data = httpx.get(f"{serve.url}/v1/models", timeout=30).json()["data"]
    return {m["id"]: m["state"] for m in data}


def metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.match(rf"^{name}(?:\{{(.*)\}})? (\S+)$", line)
        if m and ",".join(sorted((m.group(1) or "").split(","))).strip(",") == want:
            return float(m.group(2))
    return 0.0


def call(serve: ServeProcess, model: str) -> None:
    client = openai.OpenAI(base_url=f"{serve.url}/v1", api_key="x", max_retries=0, timeout=180)
    img = b64(picture(1))
    if model == "tiny-llama-chat":
        out = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4, temperature=0
        )
        assert out.choices[0].finish_reason in ("stop", "length")
    elif model == "tiny-bert-embed":
        out_e = client.embeddings.create(model=model, input=["a", "b"], encoding_format="float")
        assert len(out_e.data) == 2
        assert np.isclose(np.linalg.norm(out_e.data[0].embedding), 1.0, atol=1e-5)
    elif model == "tiny-bert-reranker":
        r = httpx.post(
            f"{serve.url}/v1/rerank",
            timeout=180,
            json={"model": model, "query": "q", "documents": ["a", "b", "c"], "top_n": 2},
        )
        assert r.status_code == 200, r.text
        assert len(r.json()["results"]) == 2
    elif model == "tiny-vit":
        r = httpx.post(f"{serve.url}/v1/vision/encode", json={"model": model, "images": [img]}, timeout=180)
        assert r.status_code == 200, r.text
        assert r.json()["dimensions"] > 0
    else:
        r = httpx.post(
            f"{serve.url}/v1/multimodal/match", json={"model": model, "images": [img], "texts": ["a", "b"]}, timeout=180
        )
        assert r.status_code == 200, r.text
        assert np.allclose(np.sum(r.json()["probabilities"], axis=1), 1.0, atol=1e-5)


def test_every_type_in_turn_with_lru_eviction(serve: ServeProcess) -> None:
    assert set(states(serve)) == set(FIVE)
    assert set(states(serve).values()) == {"available"}
    order = [*FIVE, "tiny-llama-chat", "tiny-bert-embed"]
    resident: list[str] = []
    evicted: list[str] = []
    for model in order:
        call(serve, model)
        if model in resident:
            resident.remove(model)
        elif len(resident) == 2:
            evicted.append(resident.pop(0))  # least recently used goes first
        resident.append(model)
        now = states(serve)
        assert sorted(m for m, s in now.items() if s == "ready") == sorted(resident), (model, now)
        assert all(now[m] == "available" for m in FIVE if m not in resident), now
    assert evicted == ["tiny-llama-chat", "tiny-bert-embed", "tiny-bert-reranker", "tiny-vit", "tiny-clip"]

    text = httpx.get(f"{serve.url}/metrics", timeout=30).text
    for model in FIVE:
        assert metric(text, "llmi_model_evictions_total", model=model) == evicted.count(model)
        assert metric(text, "llmi_model_loads_total", model=model, result="ok") == order.count(model)
    assert (
        metric(text, "llmi_requests_total", model="tiny-llama-chat", endpoint="/v1/chat/completions", status="200") == 2
    )
    assert metric(text, "llmi_memory_budget_bytes") == 2.5 * 2**30
    assert metric(text, "llmi_memory_planned_bytes") == 2 * 2**30
    health = httpx.get(f"{serve.url}/v1/health", timeout=30).json()
    assert health["planned_bytes"] <= health["budget_bytes"]


def test_router_errors_are_openai_shaped(serve: ServeProcess) -> None:
    cases = [
        ("/v1/embeddings", {"model": "nope", "input": "x"}, 404),
        ("/v1/embeddings", {"model": "../tiny-bert-embed", "input": "x"}, 404),
        ("/v1/embeddings", {"model": "tiny-llama-chat", "input": "x"}, 400),
        ("/v1/chat/completions", {"model": "tiny-llama-chat", "messages": []}, 400),
        ("/v1/rerank", {"model": "tiny-bert-reranker", "query": "q", "documents": "nope"}, 400),
    ]
    for path, body, status in cases:
        r = httpx.post(f"{serve.url}{path}", json=body, timeout=30)
        assert r.status_code == status, (path, body, r.text)
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = httpx.post(f"{serve.url}/v1/chat/completions", content=b"{oops", timeout=30)
    assert r.status_code == 400


def test_sigterm_leaves_no_child_process(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    models = model_folder(tiny_models, tmp_path / "models", ["tiny-bert-embed", "tiny-vit"])
    server = start_serve(models, tmp_path, env=runtime_env())
    try:
        call(server, "tiny-bert-embed")
        call(server, "tiny-vit")
        assert len(server.runtime_pids()) == 2
    finally:
        code = server.stop()
    # A clean shutdown: the front drained, then the app's lifespan stopped the control plane.
    assert code in (0, -signal.SIGTERM), server.output()
    assert "shutdown complete: requests drained" in server.output()
    assert server.runtime_pids() == []


def wait_until(predicate, deadline_s: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    """Poll a condition the server reaches by itself (rescans, idle timers), with a deadline."""
    import time

    end = time.monotonic() + deadline_s
    while not predicate():
        assert time.monotonic() < end, "condition not reached before the deadline"
        time.sleep(0.1)


def test_new_folders_are_picked_up_and_idle_models_unload(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    models = model_folder(tiny_models, tmp_path / "models", ["tiny-bert-embed"])
    env = runtime_env(LLM_RESCAN_INTERVAL_S="0.2", LLM_IDLE_TIMEOUT_S="1", LLM_AUTO_UNLOAD_MODELS="true")
    server = start_serve(models, tmp_path, env=env)
    try:
        assert set(states(server)) == {"tiny-bert-embed"}
        model_folder(tiny_models, models, ["tiny-vit"])
        wait_until(lambda: "tiny-vit" in states(server))
        call(server, "tiny-vit")
        wait_until(lambda: states(server)["tiny-vit"] == "available")
        assert server.runtime_pids("tiny-vit") == []
        assert "idle" in server.output()
    finally:
        server.stop()


def test_head_through_the_router_is_its_get_without_a_body(serve: ServeProcess) -> None:
    with httpx.Client(base_url=serve.url, timeout=30) as client:
        for path in ("/v1/models", "/v1/health"):
            head, get = client.head(path), client.get(path)
            assert head.status_code == get.status_code == 200, path
            assert head.content == b"", path
            assert head.headers["content-type"] == get.headers["content-type"]
        assert client.get("/v1/models").status_code == 200, "the keep-alive connection survives a HEAD"
