"""A real `llmi runtime` with a tiny chat model whose context is long enough that a generation
outlives the test: clients that leave stop it, the concurrency bound answers 429, the token caps
hold. Waits are on the runtime's own counters (/v1/health in_flight, /metrics queue gauges)."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.servers import RuntimeProcess, runtime_env, start_runtime
from tests.tiny_models import IM_END

pytestmark = pytest.mark.slow
aio = pytest.mark.asyncio(loop_scope="session")
MODEL = "long-chat"
LIMIT = 20_000
LONG = 19_000  # far more tokens than a test lasts


@pytest.fixture(scope="module")
def runtime(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeProcess]:
    root = tmp_path_factory.mktemp("long-chat")
    folder = shutil.copytree(tiny_models["tiny-llama-chat"], root / MODEL)
    config = json.loads((folder / "config.json").read_text())
    config["max_position_embeddings"] = 32_768
    (folder / "config.json").write_text(json.dumps(config))
    env = runtime_env(
        LLM_VLLM_MAX_MODEL_LEN=str(32_768),
        LLM_MAX_REQUESTS_PER_MODEL="2",
        LLM_MAX_TOKENS_DEFAULT="3",
        LLM_MAX_TOKENS_LIMIT=str(LIMIT),
    )
    rt = start_runtime(folder, root, name=MODEL, env=env)
    yield rt
    rt.stop()


def eos(tiny_models: dict[str, Path]) -> int:
    tokenizer = json.loads((tiny_models["tiny-llama-chat"] / "tokenizer.json").read_text())
    return next(int(t["id"]) for t in tokenizer["added_tokens"] if t["content"] == IM_END)


def body(tiny_models: dict[str, Path], **extra: object) -> dict[str, object]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Tell me everything."}],
        "temperature": 0,
        "logit_bias": {str(eos(tiny_models)): -100},  # never stops by itself
        **extra,
    }


async def load(client: httpx.AsyncClient, url: str) -> tuple[int, float]:
    """The runtime's admitted requests and the generations on its model thread."""
    health = (await client.get(f"{url}/v1/health")).json()
    text = (await client.get(f"{url}/metrics")).text
    active = re.search(r'^llmi_runtime_queue\{kind="streams_active"\} (\S+)$', text, re.M)
    assert active is not None
    return int(health["in_flight"]), float(active.group(1))


async def until_load(client: httpx.AsyncClient, url: str, want: tuple[int, float]) -> None:
    seen: list[tuple[int, float]] = []

    async def check() -> bool:
        seen.append(await load(client, url))
        return seen[-1] == want

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while not await check():
        assert loop.time() < deadline, f"runtime load stayed {seen[-1]}, wanted {want}"


async def answered_at_once(client: httpx.AsyncClient, url: str, tiny_models: dict[str, Path]) -> None:
    r = await client.post(f"{url}/v1/chat/completions", json=body(tiny_models, max_tokens=2))
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 2


@aio
async def test_abandoned_plain_chat_frees_the_model(runtime: RuntimeProcess, tiny_models: dict[str, Path]) -> None:
    """Acceptance 2: a non-streamed chat whose client leaves mid-generation stops generating."""
    async with httpx.AsyncClient(timeout=120) as client, httpx.AsyncClient(timeout=120) as leaver:
        task = asyncio.create_task(
            leaver.post(f"{runtime.url}/v1/chat/completions", json=body(tiny_models, max_tokens=LONG))
        )
        await until_load(client, runtime.url, (1, 1.0))
        task.cancel()  # the connection closes with the answer still being generated
        with pytest.raises(asyncio.CancelledError):
            await task
        await until_load(client, runtime.url, (0, 0.0))
        await answered_at_once(client, runtime.url, tiny_models)


@aio
async def test_abandoned_stream_frees_the_model(runtime: RuntimeProcess, tiny_models: dict[str, Path]) -> None:
    async with httpx.AsyncClient(timeout=120) as client:
        request = body(tiny_models, max_tokens=LONG, stream=True)
        async with client.stream("POST", f"{runtime.url}/v1/chat/completions", json=request) as r:
            assert (await anext(r.aiter_lines())).startswith("data: ")
            assert await load(client, runtime.url) == (1, 1.0)
        await until_load(client, runtime.url, (0, 0.0))
        await answered_at_once(client, runtime.url, tiny_models)


@aio
async def test_requests_over_the_bound_get_429_with_retry_after(
    runtime: RuntimeProcess, tiny_models: dict[str, Path]
) -> None:
    async with httpx.AsyncClient(timeout=120) as a, httpx.AsyncClient(timeout=120) as b:
        request = body(tiny_models, max_tokens=LONG, stream=True)
        url = f"{runtime.url}/v1/chat/completions"
        async with a.stream("POST", url, json=request) as first, b.stream("POST", url, json=request) as second:
            assert first.status_code == second.status_code == 200
            over = await a.post(url, json=body(tiny_models, max_tokens=2))
            assert over.status_code == 429
            assert over.headers["retry-after"] == "1"
            assert over.json()["error"]["code"] == "too_many_requests"
            assert over.json()["error"]["type"] == "rate_limit_error"
        await until_load(a, runtime.url, (0, 0.0))
        await answered_at_once(a, runtime.url, tiny_models)


@aio
async def test_token_caps(runtime: RuntimeProcess, tiny_models: dict[str, Path]) -> None:
    """LLM_MAX_TOKENS_DEFAULT applies when a request names none; above LLM_MAX_TOKENS_LIMIT is a 400."""
    async with httpx.AsyncClient(timeout=120) as client:
        url = f"{runtime.url}/v1/chat/completions"
        plain = await client.post(url, json=body(tiny_models))
        assert plain.status_code == 200
        assert plain.json()["usage"]["completion_tokens"] == 3
        assert plain.json()["choices"][0]["finish_reason"] == "length"
        over = await client.post(url, json=body(tiny_models, max_completion_tokens=LIMIT + 1))
        assert over.status_code == 400
        assert over.json()["error"]["code"] == "max_tokens_too_large"
        assert over.json()["error"]["param"] == "max_completion_tokens"
        legacy = await client.post(
            f"{runtime.url}/v1/completions", json={"model": MODEL, "prompt": "a", "max_tokens": LIMIT + 1}
        )
        assert legacy.status_code == 400
        assert legacy.json()["error"]["code"] == "max_tokens_too_large"
