"""Acceptance (issue 9, item 2): continuous batching keeps every stream what it would be alone.

The engine is real: the runtime's own code loads tiny-llama-chat with its weights redrawn at a
larger scale (``sharp_chat``), so greedy answers are varied text, not one token repeated, and a
row mixed up with another's cache would show. Generators are stepped in
the ModelWorker's order, one item per stream per round, so which stream joins or leaves at which
step is fixed by the test, not by thread timing; the HTTP test runs the same path through a real
runtime process and the official client.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import torch
from transformers import AutoModelForCausalLM

from llmi_runtime.engines.base import LoadOptions
from llmi_runtime.engines.chat import ChatEngine
from llmi_runtime.engines.sampling import Delta, SamplingParams
from llmi_runtime.worker import ModelWorker
from tests.servers import start_runtime

PROMPTS = ["the quick brown fox jumps", "a lazy dog", "hello there my friend, how are you today?", "x"]
GREEDY = SamplingParams(max_tokens=24, temperature=0)


@pytest.fixture(scope="module")
def sharp_chat(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-llama-chat with weights of std 0.3: its greedy output varies from token to token."""
    out = tmp_path_factory.mktemp("sharp") / "sharp-llama-chat"
    shutil.copytree(tiny_models["tiny-llama-chat"], out)
    model = AutoModelForCausalLM.from_pretrained(out)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0, 0.3, generator=generator)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def engine(sharp_chat: Path) -> ChatEngine:
    return ChatEngine(sharp_chat, LoadOptions(device="cpu"))


def prompt(engine: ChatEngine, text: str) -> list[int]:
    return engine.chat_prompt([{"role": "user", "content": text}])


def alone(engine: ChatEngine, text: str, params: SamplingParams) -> list[Delta]:
    return list(engine.generate(prompt(engine, text), params))


def interleave(
    gens: list[Iterator[Delta]], starts: list[int] | None = None, cancel: dict[int, int] | None = None
) -> list[list[Delta]]:
    """Step the generators as the ModelWorker does (each once per round, in order); stream i starts
    at round starts[i] and is closed (its client left) after cancel[i] deltas."""
    starts = starts or [0] * len(gens)
    cancel = cancel or {}
    outs: list[list[Delta]] = [[] for _ in gens]
    live = set(range(len(gens)))
    rnd = 0
    while live:
        for i in sorted(live):
            if starts[i] > rnd:
                continue
            if len(outs[i]) == cancel.get(i, -1):
                gens[i].close()  # type: ignore[attr-defined]
                live.discard(i)
                continue
            try:
                outs[i].append(next(gens[i]))
            except StopIteration:
                live.discard(i)
        rnd += 1
    return outs


def test_four_concurrent_greedy_streams_give_the_tokens_each_gives_alone(engine: ChatEngine) -> None:
    expected = [alone(engine, p, GREEDY) for p in PROMPTS]
    assert all(len({d.token_id for d in e}) > 5 for e in expected)  # varied text, so the check can fail
    before = engine.batcher.largest_batch
    got = interleave([engine.generate(prompt(engine, p), GREEDY) for p in PROMPTS])
    assert got == expected
    assert engine.batcher.largest_batch == 4 or before == 4  # they shared forward passes
    assert engine.batcher.active() == 0


def test_requests_join_a_running_batch_at_the_next_step(engine: ChatEngine) -> None:
    expected = [alone(engine, p, GREEDY) for p in PROMPTS]
    steps = engine.batcher.steps
    got = interleave([engine.generate(prompt(engine, p), GREEDY) for p in PROMPTS], starts=[0, 3, 7, 8])
    assert got == expected
    # Joined without waiting for the batch to drain: fewer steps than running them one after another.
    assert engine.batcher.steps - steps < sum(len(e) for e in expected)


def test_max_tokens_and_stop_strings_hold_per_stream(engine: ChatEngine) -> None:
    reference = "".join(d.text for d in alone(engine, PROMPTS[0], GREEDY))
    stop = reference[8:12]
    assert stop
    assert reference.index(stop) == 8
    params = [
        SamplingParams(max_tokens=24, temperature=0, stop=(stop,)),
        SamplingParams(max_tokens=3, temperature=0),
        SamplingParams(max_tokens=11, temperature=0),
        GREEDY,
    ]
    texts = [PROMPTS[0], PROMPTS[1], PROMPTS[2], PROMPTS[3]]
    expected = [alone(engine, t, p) for t, p in zip(texts, params, strict=True)]
    got = interleave([engine.generate(prompt(engine, t), p) for t, p in zip(texts, params, strict=True)])
    assert got == expected
    assert "".join(d.text for d in got[0]) == reference[:8]
    assert got[0][-1].finish_reason == "stop"
    assert [d.completion_tokens for d in got[1]] == [1, 2, 3]
    assert got[1][-1].finish_reason == "length"


def test_seeded_sampling_is_reproducible_inside_a_batch(engine: ChatEngine) -> None:
    seeded = [
        SamplingParams(max_tokens=16, temperature=1.0, top_p=0.9, seed=7),
        SamplingParams(max_tokens=16, temperature=1.0, seed=8, logit_bias={5: 3.0}, frequency_penalty=0.5),
        SamplingParams(max_tokens=16, temperature=0.8, top_k=20, seed=7),
    ]
    expected = [alone(engine, PROMPTS[i], p) for i, p in enumerate(seeded)]
    got = interleave([engine.generate(prompt(engine, PROMPTS[i]), p) for i, p in enumerate(seeded)], starts=[0, 2, 2])
    assert got == expected
    assert [d.token_id for d in got[0]] != [d.token_id for d in got[2]]  # different params, different draws


def test_a_cancelled_stream_leaves_the_batch_and_the_others_carry_on(engine: ChatEngine) -> None:
    expected = [alone(engine, p, GREEDY) for p in PROMPTS]
    gens = [engine.generate(prompt(engine, p), GREEDY) for p in PROMPTS]
    got = interleave(gens, cancel={1: 5, 3: 0})
    assert got[0] == expected[0]
    assert got[2] == expected[2]
    assert got[1] == expected[1][:5]
    assert got[3] == []
    assert engine.batcher.active() == 0


def test_closing_a_stream_takes_its_row_out_at_once(engine: ChatEngine) -> None:
    first = engine.generate(prompt(engine, PROMPTS[0]), GREEDY)
    second = engine.generate(prompt(engine, PROMPTS[2]), GREEDY)
    next(first), next(second), next(first), next(second)
    assert engine.batcher.active() == 2
    second.close()  # type: ignore[attr-defined]
    assert engine.batcher.active() == 1
    rest = list(first)
    assert [d.token_id for d in rest] == [d.token_id for d in alone(engine, PROMPTS[0], GREEDY)][2:]
    assert engine.batcher.active() == 0


async def test_streams_the_worker_takes_on_in_one_round_share_one_prefill(engine: ChatEngine) -> None:
    # Each stream's first turn only joins the batch (PASS): without it, the first of four
    # arriving together was prefilled alone, then each of the others on its own turn, with
    # partly filled decode steps between.
    expected = [alone(engine, p, GREEDY) for p in PROMPTS]
    worker = ModelWorker()
    gate = threading.Event()
    try:
        busy = asyncio.ensure_future(worker.run(gate.wait))  # the four queue behind a call

        async def collect(text: str) -> list[Delta]:
            return [d async for d in worker.stream(engine.stream(prompt(engine, text), GREEDY))]

        streams = [asyncio.ensure_future(collect(p)) for p in PROMPTS]
        await asyncio.sleep(0)  # one turn of the loop: each collect() runs up to its first wait
        queued = worker.load()
        assert queued["streams_waiting"] + queued["streams_active"] == len(PROMPTS)
        prefills = engine.batcher.prefills
        gate.set()
        await busy
        got = await asyncio.gather(*streams)
    finally:
        worker.close()
    assert got == expected
    assert engine.batcher.prefills - prefills == 1  # one forward prefilled all four
    assert engine.batcher.active() == 0


@pytest.mark.slow
async def test_four_concurrent_streams_over_http_match_each_alone(sharp_chat: Path, tmp_path: Path) -> None:
    rt = start_runtime(sharp_chat, tmp_path, "--device", "cpu")
    client = openai.AsyncOpenAI(base_url=f"{rt.url}/v1", api_key="x", max_retries=0, timeout=120)

    async def streamed(text: str, max_tokens: int) -> tuple[str, str | None, int]:
        stream = await client.chat.completions.create(
            model=rt.name,
            temperature=0,
            max_tokens=max_tokens,
            messages=[{"role": "user", "content": text}],
            stream=True,
            stream_options={"include_usage": True},
        )
        parts, finish, used = [], None, 0
        async for chunk in stream:
            if chunk.usage:
                used = chunk.usage.completion_tokens
            for choice in chunk.choices:
                parts.append(choice.delta.content or "")
                finish = choice.finish_reason or finish
        return "".join(parts), finish, used

    limits = [30, 7, 30, 19]
    try:
        async with client:
            expected = [await streamed(p, n) for p, n in zip(PROMPTS, limits, strict=True)]
            got = await asyncio.gather(*(streamed(p, n) for p, n in zip(PROMPTS, limits, strict=True)))
    finally:
        rt.stop()
    assert list(got) == expected
    assert expected[1][1:] == ("length", 7)
