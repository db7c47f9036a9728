"""Acceptance (embedded mode): storms, crashes and broken models."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from tests.serve_process import ServeProcess, model_folder, start_serve
from tests.servers import runtime_env

pytestmark = pytest.mark.slow
STORM_MODELS = ["tiny-bert-embed", "tiny-qwen3-embed", "tiny-bert-reranker"]


def request_for(model: str, i: int) -> tuple[str, dict]:
    if model == "tiny-bert-reranker":
        return "/v1/rerank", {"model": model, "query": f"q{i % 3}", "documents": ["a", "b c", "d e f"]}
    return "/v1/embeddings", {"model": model, "input": f"text number {i % 3}", "encoding_format": "float"}


def answer(path: str, body: dict) -> list[float]:
    if path == "/v1/rerank":
        return [r["relevance_score"] for r in sorted(body["results"], key=lambda r: r["index"])]
    return body["data"][0]["embedding"]


async def storm(serve: ServeProcess, n: int = 30) -> tuple[list[httpx.Response], list[dict], int]:
    samples: list[dict] = []
    done = asyncio.Event()

    async def sample(client: httpx.AsyncClient) -> None:
        while not done.is_set():
            samples.append((await client.get("/v1/health")).json())
            await asyncio.sleep(0.02)  # sampling rate only; nothing waits on it

    async with httpx.AsyncClient(base_url=serve.url, timeout=300) as client:
        sampler = asyncio.create_task(sample(client))
        calls = [request_for(STORM_MODELS[i % 3], i) for i in range(n)]
        responses = await asyncio.gather(*(client.post(p, json=b) for p, b in calls))
        done.set()
        await sampler
    return list(responses), samples, n


@pytest.fixture
def storm_models(tiny_models: dict[str, Path], tmp_path: Path) -> Path:
    return model_folder(tiny_models, tmp_path / "models", STORM_MODELS, memory="1GiB")


def test_storm_every_request_answered_within_budget(storm_models: Path, tmp_path: Path) -> None:
    server = start_serve(storm_models, tmp_path, "--cpu-memory-gb", "1.5", env=runtime_env(LLM_MODEL_CACHE_SIZE="3"))
    try:
        # Reference answers, one model at a time.
        expected = {}
        for model in STORM_MODELS:
            for i in range(3):
                path, body = request_for(model, i)
                r = httpx.post(f"{server.url}{path}", json=body, timeout=300)
                assert r.status_code == 200, r.text
                expected[(model, i % 3)] = answer(path, r.json())
        responses, samples, n = asyncio.run(storm(server))
    finally:
        server.stop()
    assert len(responses) == n
    for i, r in enumerate(responses):
        assert r.status_code == 200, r.text
        model = STORM_MODELS[i % 3]
        path, _ = request_for(model, i)
        assert np.allclose(answer(path, r.json()), expected[(model, i % 3)], atol=1e-5)
    assert samples
    assert all(s["planned_bytes"] <= s["budget_bytes"] for s in samples)
    assert max(sum(1 for st in s["models"].values() if st in ("starting", "ready", "draining")) for s in samples) == 1


def test_storm_with_short_deadline_gets_503_with_retry_after(storm_models: Path, tmp_path: Path) -> None:
    server = start_serve(
        storm_models,
        tmp_path,
        "--cpu-memory-gb",
        "1.5",
        env=runtime_env(LLM_MODEL_CACHE_SIZE="3", LLM_QUEUE_TIMEOUT_S="0.2"),
    )
    try:
        responses, samples, n = asyncio.run(storm(server))
        health = httpx.get(f"{server.url}/v1/health", timeout=30).json()
    finally:
        server.stop()
    assert len(responses) == n
    codes = {r.status_code for r in responses}
    assert codes <= {200, 503}
    assert 503 in codes
    for r in responses:
        if r.status_code == 503:
            assert int(r.headers["retry-after"]) >= 1
            assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert all(s["planned_bytes"] <= s["budget_bytes"] for s in samples)
    assert health["planned_bytes"] <= health["budget_bytes"]


def test_runtime_killed_mid_stream_then_reloads(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    models = model_folder(tiny_models, tmp_path / "models", ["tiny-llama-chat", "tiny-bert-embed"])
    # Weights that do not fit their config: readable headers, a load that must fail.
    broken = models / "broken-chat"
    shutil.copytree(tiny_models["tiny-llama-chat"], broken)
    config = json.loads((broken / "config.json").read_text())
    config["intermediate_size"] *= 2
    (broken / "config.json").write_text(json.dumps(config))
    # Weights cut short: the catalog refuses the folder and says why.
    truncated = models / "truncated-chat"
    shutil.copytree(tiny_models["tiny-llama-chat"], truncated)
    for weights in truncated.glob("*.safetensors"):
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    server = start_serve(models, tmp_path, env=runtime_env())
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0, timeout=120)
    eos = "<|im_end|>"
    try:
        tok_id = _token_id(tiny_models["tiny-llama-chat"], eos)
        stream = client.chat.completions.create(
            model="tiny-llama-chat",
            messages=[{"role": "user", "content": "go"}],
            max_tokens=480,
            temperature=0,
            stream=True,
            logit_bias={str(tok_id): -100},
        )
        iterator = iter(stream)
        next(iterator)
        (pid,) = server.runtime_pids("tiny-llama-chat")
        os.kill(pid, signal.SIGKILL)
        with pytest.raises((openai.APIError, httpx.HTTPError)):
            for _ in iterator:
                pass
        again = client.chat.completions.create(
            model="tiny-llama-chat", messages=[{"role": "user", "content": "hi"}], max_tokens=3, temperature=0
        )
        assert again.choices[0].finish_reason in ("stop", "length")

        with pytest.raises(openai.APIStatusError) as info:
            client.chat.completions.create(model="broken-chat", messages=[{"role": "user", "content": "hi"}])
        assert info.value.status_code == 503
        models_now = {m["id"]: m for m in httpx.get(f"{server.url}/v1/models", timeout=30).json()["data"]}
        assert models_now["broken-chat"]["state"] == "failed"
        assert "load" in models_now["broken-chat"]["error"]
        problems = httpx.get(f"{server.url}/v1/health", timeout=30).json()["problems"]
        assert [p["path"] for p in problems] == [str(truncated)]
        assert "truncated-chat" not in models_now
        out = client.embeddings.create(model="tiny-bert-embed", input="still serving", encoding_format="float")
        assert len(out.data[0].embedding) > 0
    finally:
        server.stop()


def _token_id(folder: Path, token: str) -> int:
    from transformers import AutoTokenizer

    return int(AutoTokenizer.from_pretrained(folder).convert_tokens_to_ids(token))


def test_sigterm_drains_an_in_flight_stream(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """SIGTERM while a generation streams: it runs to its end ([DONE], its full length), then the
    server exits and leaves no runtime behind."""
    models = model_folder(tiny_models, tmp_path / "models", ["tiny-llama-chat"])
    server = start_serve(models, tmp_path, env=runtime_env(LLM_DRAIN_TIMEOUT_S="120"))
    tok_id = _token_id(tiny_models["tiny-llama-chat"], "<|im_end|>")
    body = {
        "model": "tiny-llama-chat",
        "messages": [{"role": "user", "content": "go"}],
        "max_tokens": 64,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "logit_bias": {str(tok_id): -100},  # never stops by itself: runs to max_tokens
    }
    events: list[str] = []
    try:
        with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=120) as r:
            assert r.status_code == 200
            lines = (line for line in r.iter_lines() if line.startswith("data: "))
            events.append(next(lines))  # the generation is under way
            server.proc.send_signal(signal.SIGTERM)
            events.extend(lines)
    finally:
        code = server.stop()
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert not any("error" in c for c in chunks)
    assert chunks[-1]["usage"]["completion_tokens"] == 64
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "length"
    assert code in (0, -signal.SIGTERM), server.output()
    assert server.runtime_pids() == []
