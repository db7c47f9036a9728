"""A real `llmi runtime` with a tiny chat model whose context is long enough that a generation
outlives the test: clients that leave stop it, the concurrency bound answers 429, the token caps
hold. Waits are on the runtime's own counters (/v1/health in_flight, /metrics queue gauges)."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.serve_process import ServeProcess, model_folder, start_serve
from tests.servers import RuntimeProcess, runtime_env, start_runtime
from tests.tiny_models import IM_END

pytestmark = pytest.mark.slow
aio = pytest.mark.asyncio(loop_scope="session")
MODEL, EMBED = "long-chat", "tiny-bert-embed"
LIMIT = 20_000
LONG = 19_000  # far more tokens than a test lasts


@pytest.fixture(scope="module")
def runtime(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeProcess]:
    root = tmp_path_factory.mktemp("long-chat")
    folder = long_chat(tiny_models, root)
    env = runtime_env(
        LLM_VLLM_MAX_MODEL_LEN=str(32_768),
        LLM_MAX_REQUESTS_PER_MODEL="2",
        LLM_MAX_TOKENS_DEFAULT="3",
        LLM_MAX_TOKENS_LIMIT=str(LIMIT),
    )
    rt = start_runtime(folder, root, name=MODEL, env=env)
    yield rt
    rt.stop()


def long_chat(tiny_models: dict[str, Path], root: Path) -> Path:
    """The tiny chat model with a context long enough that a generation outlives any test."""
    folder = Path(shutil.copytree(tiny_models["tiny-llama-chat"], root / MODEL))
    config = json.loads((folder / "config.json").read_text())
    config["max_position_embeddings"] = 32_768
    (folder / "config.json").write_text(json.dumps(config))
    return folder


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


async def decoded_rows(client: httpx.AsyncClient, url: str) -> float:
    """Sequence-steps the chat batcher has decoded so far (one per running sequence per forward)."""
    text = (await client.get(f"{url}/metrics")).text
    found = re.search(r'^llmi_runtime_batch_size_sum\{kind="chat"\} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


async def until_rows_above(client: httpx.AsyncClient, url: str, floor: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while await decoded_rows(client, url) <= floor:
        assert loop.time() < deadline, "the batcher decoded nothing more"


@aio
async def test_abandoned_stream_frees_the_model(runtime: RuntimeProcess, tiny_models: dict[str, Path]) -> None:
    """Acceptance 2, streamed: a stream whose client leaves mid-generation leaves the batch.

    Observed in order: a token chunk has arrived and the batcher goes on decoding (mid-generation);
    the client closes the connection; the request leaves the runtime (in flight 0) and its worker
    stream ends; a new two-token request is then decoded alone, one row in one forward: had the
    abandoned sequence stayed in the batch it would have shared that forward (two rows)."""
    async with httpx.AsyncClient(timeout=120) as client, httpx.AsyncClient(timeout=120) as leaver:
        request = body(tiny_models, max_tokens=LONG, stream=True)
        async with leaver.stream("POST", f"{runtime.url}/v1/chat/completions", json=request) as r:
            lines = r.aiter_lines()  # held: dropping a half-read line iterator closes the connection
            async for line in lines:
                if line.startswith("data: ") and "content" in json.loads(line[6:])["choices"][0]["delta"]:
                    break  # a generated token has arrived
            await until_load(client, runtime.url, (1, 1.0))
            await until_rows_above(client, runtime.url, await decoded_rows(client, runtime.url))
        # The response closed half-read: the connection is gone with the generation running.
        await until_load(client, runtime.url, (0, 0.0))
        before = await decoded_rows(client, runtime.url)
        await answered_at_once(client, runtime.url, tiny_models)  # 2 tokens: a prefill, then one decode
        assert await decoded_rows(client, runtime.url) - before == 1


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


@pytest.fixture(scope="module")
def serve(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """`llmi serve` with room for one of its two models: the long chat and an embedder."""
    root = tmp_path_factory.mktemp("serve-leaving")
    models = model_folder(tiny_models, root / "models", [EMBED], memory="1GiB")
    long_chat(tiny_models, models)
    (models / MODEL / "llmi.yaml").write_text("memory: 1GiB\n")
    env = runtime_env(LLM_VLLM_MAX_MODEL_LEN=str(32_768), LLM_AUTO_UNLOAD_MODELS="false")
    server = start_serve(models, root, "--cpu-memory-gb", "1.5", env=env)
    yield server
    server.stop()


def queued(text: str, model: str) -> float:
    found = re.search(rf'^llmi_queue_length\{{model="{re.escape(model)}"\}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


@aio
async def test_request_abandoned_while_waiting_for_room_starts_no_load(
    serve: ServeProcess, tiny_models: dict[str, Path]
) -> None:
    """Acceptance 2 end to end: a busy chat fills the budget, so an embedding request waits; its
    client leaves; it leaves the queue and, once the chat is idle, no embedder is loaded.
    (Holds with today's supervisor, which plans a load only for a waiting request.)"""
    async with httpx.AsyncClient(timeout=120) as client, httpx.AsyncClient(timeout=120) as leaver:
        request = body(tiny_models, max_tokens=LONG, stream=True)
        async with client.stream("POST", f"{serve.url}/v1/chat/completions", json=request) as r:
            lines = r.aiter_lines()
            line = await anext(lines)
            while not line or line.startswith(": loading"):  # the chat is loading cold
                line = await anext(lines)
            assert line.startswith("data: ")
            waiting = asyncio.create_task(
                leaver.post(f"{serve.url}/v1/embeddings", json={"model": EMBED, "input": "a"})
            )
            await eventually_async(client, serve.url, lambda text: queued(text, EMBED) == 1)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            await eventually_async(client, serve.url, lambda text: queued(text, EMBED) == 0)
        done = await client.post(f"{serve.url}/v1/chat/completions", json=body(tiny_models, max_tokens=2))
        assert done.status_code == 200  # the chat's release has been processed by now
        models = {m["id"]: m for m in (await client.get(f"{serve.url}/v1/models")).json()["data"]}
        assert models[EMBED]["state"] == "available"
        assert serve.runtime_pids(EMBED) == []


async def eventually_async(client: httpx.AsyncClient, url: str, check: Callable[[str], bool]) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while not check((await client.get(f"{url}/metrics")).text):
        assert loop.time() < deadline, "the router's queue gauge never showed what was expected"
