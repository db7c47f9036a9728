"""Acceptance: concurrent streams and calls complete correctly and do not corrupt each other."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Callable, Iterator

import numpy as np
import openai
import pytest

from llmi_runtime.worker import PASS, ModelWorker, Pass
from tests.servers import RuntimeProcess

Runtimes = Callable[[str], RuntimeProcess]


@pytest.mark.slow
async def test_two_streamed_chats_and_an_embedding_at_once(runtimes: Runtimes) -> None:
    chat_rt, embed_rt = runtimes("tiny-llama-chat"), runtimes("tiny-bert-embed")
    chat = openai.AsyncOpenAI(base_url=f"{chat_rt.url}/v1", api_key="x", max_retries=0, timeout=120)
    embed = openai.AsyncOpenAI(base_url=f"{embed_rt.url}/v1", api_key="x", max_retries=0, timeout=120)
    prompts = ["the quick brown fox", "a lazy dog sleeps"]

    async def alone(prompt: str) -> str:
        out = await chat.chat.completions.create(
            model="tiny-llama-chat", temperature=0, max_tokens=40, messages=[{"role": "user", "content": prompt}]
        )
        return out.choices[0].message.content or ""

    async def streamed(prompt: str) -> str:
        stream = await chat.chat.completions.create(
            model="tiny-llama-chat",
            temperature=0,
            max_tokens=40,
            messages=[{"role": "user", "content": prompt}],
            stream=True,
        )
        return "".join([ch.choices[0].delta.content or "" async for ch in stream if ch.choices])

    async def embedding() -> list[float]:
        out = await embed.embeddings.create(model="tiny-bert-embed", input="over the hill", encoding_format="float")
        return out.data[0].embedding

    async with chat, embed:
        expected = [await alone(p) for p in prompts]
        expected_vector = await embedding()
        first, second, vector = await asyncio.gather(streamed(prompts[0]), streamed(prompts[1]), embedding())
    assert [first, second] == expected
    assert np.allclose(vector, expected_vector, atol=1e-6)


async def test_calls_run_between_steps_of_a_long_stream() -> None:
    """A call submitted while a stream is running is served before the stream ends."""
    worker = ModelWorker()
    call_ran = threading.Event()
    steps: list[int] = []

    def endless() -> Iterator[int]:
        for i in range(1_000_000):
            if call_ran.is_set():
                return
            steps.append(i)
            yield i

    try:
        stream = worker.stream(endless())
        assert await anext(stream) == 0  # the stream is running on the worker
        consumer = asyncio.ensure_future(_drain(stream))
        result = await worker.run(lambda: call_ran.set() or "done")
        count = 1 + await consumer
        assert result == "done"
        assert count < 1_000_000
    finally:
        worker.close()


async def test_streams_advance_in_turn() -> None:
    worker = ModelWorker()
    order: list[str] = []

    def tagged(tag: str) -> Iterator[str]:
        for _ in range(50):
            order.append(tag)
            yield tag

    try:
        await asyncio.gather(_drain(worker.stream(tagged("a"))), _drain(worker.stream(tagged("b"))))
    finally:
        worker.close()
    # Once both are active, neither runs twice in a row until one is finished.
    last = {tag: len(order) - 1 - order[::-1].index(tag) for tag in "ab"}
    both = order[max(order.index("a"), order.index("b")) : min(last.values()) + 1]
    assert len(both) > 50
    assert all(x != y for x, y in itertools.pairwise(both))
    assert order.count("a") == order.count("b") == 50


async def test_leaving_a_stream_stops_its_generator() -> None:
    worker = ModelWorker()
    closed = threading.Event()

    def endless() -> Iterator[int]:
        try:
            while True:
                yield 1
        finally:
            closed.set()

    try:
        stream = worker.stream(endless())
        async for _ in stream:
            break
        await stream.aclose()
        await worker.run(lambda: None)  # the worker has taken at least one more turn
        await worker.run(lambda: None)
        assert closed.is_set()
    finally:
        worker.close()


async def test_errors_reach_the_caller_and_the_worker_survives() -> None:
    worker = ModelWorker()

    def boom() -> None:
        raise ValueError("bad")

    def failing() -> Iterator[int]:
        yield 1
        raise KeyError("gone")

    try:
        with pytest.raises(ValueError, match="bad"):
            await worker.run(boom)
        with pytest.raises(KeyError):
            await _drain(worker.stream(failing()))
        assert await worker.run(lambda: 42) == 42
    finally:
        worker.close()


async def test_a_pass_ends_a_streams_turn_without_an_item() -> None:
    worker = ModelWorker()
    turns: list[str] = []

    def passing(tag: str) -> Iterator[str | Pass]:
        for i in range(3):
            turns.append(tag)
            yield PASS if i == 0 else f"{tag}{i}"

    try:
        a, b = worker.stream(passing("a")), worker.stream(passing("b"))
        got = await asyncio.gather(_items(a), _items(b))
    finally:
        worker.close()
    assert got == [["a1", "a2"], ["b1", "b2"]]  # the consumer never sees PASS
    assert turns.count("a") == turns.count("b") == 3  # but each PASS was a turn


async def _items(stream) -> list[str]:  # type: ignore[no-untyped-def]
    return [item async for item in stream]


async def _drain(stream) -> int:  # type: ignore[no-untyped-def]
    n = 0
    async for _ in stream:
        n += 1
    return n
