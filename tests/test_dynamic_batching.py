"""Acceptance (issue 9, item 3): concurrent encoder requests are merged into batches and each gets
what it would get alone.

The merging runtime closes a batch only when it holds every item of the N requests
(``LLM_MAX_BATCH_ITEMS`` = their total, ``LLM_BATCH_WAIT_MS`` a minute), so "they were merged"
is a count read from /metrics, not a race against a timer. The reference answers come from the
session's runtime of the same model with default settings, one request at a time.
"""

from __future__ import annotations

import asyncio
import base64
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llmi_runtime.batching import BatchPolicy, DynamicBatcher
from llmi_runtime.engines.features import run_by_length
from llmi_runtime.worker import ModelWorker
from tests.images import b64, picture
from tests.servers import RuntimeProcess, runtime_env, start_runtime

TOL = 1e-5
N = 4
Runtimes = Callable[[str], RuntimeProcess]
TEXTS = [
    ["a quick brown fox", "jumps"],
    ["over the lazy dog and far away into the hills", "hello"],
    ["x", "the capital of France is a city of light and history"],
    ["science", "a photo of a dog"],
]


def embeddings_body(i: int) -> dict[str, Any]:
    body: dict[str, Any] = {"input": TEXTS[i]}
    if i == 0:
        body["encoding_format"] = "base64"
    return body


def embeddings_out(body: dict[str, Any]) -> list[list[float]]:
    rows = []
    for item in body["data"]:
        value = item["embedding"]
        rows.append(np.frombuffer(base64.b64decode(value), dtype="<f4").tolist() if isinstance(value, str) else value)
    return rows


def rerank_body(i: int) -> dict[str, Any]:
    return {"query": TEXTS[i][0], "documents": TEXTS[(i + 1) % N] + TEXTS[(i + 2) % N][:1]}


def rerank_out(body: dict[str, Any]) -> list[list[float]]:
    return [[r["relevance_score"] for r in sorted(body["results"], key=lambda r: r["index"])]]


def vision_body(i: int) -> dict[str, Any]:
    return {"images": [b64(picture(10 + i)), b64(picture(20 + i, size=(24 + 8 * i, 40)))]}


def vision_out(body: dict[str, Any]) -> list[list[float]]:
    return list(body["embeddings"])


def clip_body(i: int) -> dict[str, Any]:
    return {**vision_body(i), "texts": TEXTS[i]}


def clip_out(body: dict[str, Any]) -> list[list[float]]:
    return [*body["image_embeddings"], *body["text_embeddings"]]


CASES = {
    # model: (path, request body i, vectors of a response, items per request, batch kinds)
    "tiny-bert-embed": ("/v1/embeddings", embeddings_body, embeddings_out, 2, ["embeddings"]),
    "tiny-qwen3-embed": ("/v1/embeddings", embeddings_body, embeddings_out, 2, ["embeddings"]),
    "tiny-bert-reranker": ("/v1/rerank", rerank_body, rerank_out, 3, ["rerank"]),
    "tiny-qwen3-reranker": ("/v1/rerank", rerank_body, rerank_out, 3, ["rerank"]),
    "tiny-vit": ("/v1/vision/encode", vision_body, vision_out, 2, ["images"]),
    "tiny-clip": ("/v1/multimodal/encode", clip_body, clip_out, 2, ["images", "texts"]),
}


def samples(metrics: str) -> dict[tuple[str, str], float]:
    """(sample name, kind label) -> value, for the batch metrics."""
    out = {}
    for family in text_string_to_metric_families(metrics):
        for s in family.samples:
            if s.name.startswith("llmi_runtime_batch") and "le" not in s.labels:
                out[s.name, s.labels.get("kind", "")] = s.value
    return out


@pytest.mark.slow
@pytest.mark.parametrize("model", list(CASES))
async def test_concurrent_requests_are_merged_and_match_each_alone(
    model: str, runtimes: Runtimes, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    path, body, vectors, per_request, kinds = CASES[model]
    bodies = [{"model": model, **body(i)} for i in range(N)]
    merged = start_runtime(
        tiny_models[model],
        tmp_path,
        env=runtime_env(LLM_BATCH_WAIT_MS="60000", LLM_MAX_BATCH_ITEMS=str(N * per_request)),
    )
    try:
        async with httpx.AsyncClient(base_url=runtimes(model).url, timeout=120) as single:
            expected = [vectors((await single.post(path, json=b)).raise_for_status().json()) for b in bodies]
        async with httpx.AsyncClient(base_url=merged.url, timeout=120) as client:
            responses = await asyncio.gather(*(client.post(path, json=b) for b in bodies))
            got = [vectors(r.raise_for_status().json()) for r in responses]
            metrics = samples((await client.get("/metrics")).text)
    finally:
        merged.stop()
    for want, have in zip(expected, got, strict=True):
        assert np.array(have).shape == np.array(want).shape
        assert np.abs(np.array(have) - np.array(want)).max() <= TOL
    for kind in kinds:
        assert metrics["llmi_runtime_batches_total", kind] == 1.0  # all N requests in one model call
        assert metrics["llmi_runtime_batch_requests_sum", kind] == N
        assert metrics["llmi_runtime_batch_size_sum", kind] == N * per_request


# -- the batcher on its own: a real worker thread, a recording model call ---------------------


async def test_a_batch_closes_when_full_and_splits_results_back() -> None:
    worker = ModelWorker()
    calls: list[list[int]] = []
    seen: list[tuple[str, int, int]] = []

    def run(items: list[int]) -> list[int]:
        calls.append(list(items))
        return [x * 10 for x in items]

    batcher = DynamicBatcher("k", worker, run, BatchPolicy(max_wait_s=60, max_items=5), lambda *a: seen.append(a))
    try:
        got = await asyncio.gather(batcher.submit([1, 2]), batcher.submit([3]), batcher.submit([4, 5]))
    finally:
        worker.close()
    assert got == [[10, 20], [30], [40, 50]]
    assert calls == [[1, 2, 3, 4, 5]]
    assert seen == [("k", 5, 3)]


async def test_what_arrives_while_a_batch_runs_goes_into_the_next_one() -> None:
    worker = ModelWorker()
    gate, started = threading.Event(), threading.Event()
    calls: list[list[int]] = []

    def run(items: list[int]) -> list[int]:
        calls.append(list(items))
        started.set()
        gate.wait(timeout=60)
        return items

    batcher = DynamicBatcher("k", worker, run, BatchPolicy(max_wait_s=0, max_items=100))
    try:
        first = asyncio.ensure_future(batcher.submit([1]))
        await asyncio.to_thread(started.wait, 60)  # the first batch is on the model's thread
        later = [asyncio.ensure_future(batcher.submit([i])) for i in (2, 3, 4)]
        gate.set()
        assert await first == [1]
        assert [await f for f in later] == [[2], [3], [4]]
    finally:
        worker.close()
    assert calls == [[1], [2, 3, 4]]


async def test_a_batch_holds_one_forward_so_the_first_request_is_answered_while_the_next_computes() -> None:
    worker = ModelWorker()
    gate = threading.Event()
    calls: list[list[int]] = []

    def run(items: list[int]) -> list[int]:
        calls.append(list(items))
        if items[0] == 3:
            gate.wait(timeout=60)  # the second batch is still computing
        return [x * 10 for x in items]

    batcher = DynamicBatcher("k", worker, run, BatchPolicy(max_wait_s=0, max_items=100), size=2)
    try:
        first, second, third = (asyncio.ensure_future(batcher.submit(i)) for i in ([1, 2], [3, 4], [5]))
        assert await first == [10, 20]  # answered before the batch after it has finished
        assert not second.done()
        gate.set()
        assert await second == [30, 40]
        assert await third == [50]
    finally:
        gate.set()
        worker.close()
    assert calls == [[1, 2], [3, 4], [5]]  # one forward's worth each, not one merged batch


async def test_a_failed_batch_fails_each_request_in_it_and_the_next_one_runs() -> None:
    worker = ModelWorker()

    def run(items: list[int]) -> list[int]:
        if 0 in items:
            raise ValueError("bad item")
        return items

    batcher = DynamicBatcher("k", worker, run, BatchPolicy(max_wait_s=60, max_items=3))
    try:
        results = await asyncio.gather(batcher.submit([0, 1]), batcher.submit([2]), return_exceptions=True)
        assert all(isinstance(r, ValueError) for r in results)
        assert await batcher.submit([7, 8, 9]) == [7, 8, 9]  # a request of max_items closes its own batch
    finally:
        worker.close()


async def test_a_request_whose_caller_left_is_not_computed() -> None:
    worker = ModelWorker()
    calls: list[list[int]] = []

    def run(items: list[int]) -> list[int]:
        calls.append(list(items))
        return items

    batcher = DynamicBatcher("k", worker, run, BatchPolicy(max_wait_s=60, max_items=3))
    try:
        gone = asyncio.ensure_future(batcher.submit([1]))
        await asyncio.sleep(0)  # let it queue (an event-loop turn, not a timed wait)
        gone.cancel()
        assert await batcher.submit([2, 3, 4]) == [2, 3, 4]
    finally:
        worker.close()
    assert calls == [[2, 3, 4]]


def test_run_by_length_batches_longest_first_within_groups_and_keeps_order() -> None:
    items = ["aaa", "b", "cc", "dddd", "e", "ff"]
    batches: list[list[str]] = []

    def run(batch: list[str]) -> list[str]:
        batches.append(batch)
        return [s.upper() for s in batch]

    out = run_by_length(items, 2, run, group=lambda s: s in ("b", "e"))
    assert out == [s.upper() for s in items]
    assert all(len(b) <= 2 for b in batches)
    assert ["b", "e"] in batches  # the other group never mixes in
    assert batches[0] == ["dddd", "aaa"]
