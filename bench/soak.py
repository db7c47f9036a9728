"""Soak: mixed requests across several models for a bounded time, on loopback, with a budget that
forces switching; every request must be answered, and every error must be deliberate.

    python -m bench.soak [--seconds 120] [--concurrency 8] [--models 3] [--json FILE]

Each client sends a random request (embeddings, chat, rerank, vision; a few streamed; some
hostile: malformed JSON, an unknown model, an oversized batch) to `llmi serve` with a budget that
holds one model, until the time is up. Reported: requests sent and answered, statuses, errors by
kind (the envelope's ``code``), p50/p99 latency, loads. It fails (exit 1) when a request is lost
(no answer, a transport error) or an error is not well-formed (no OpenAI envelope, a 500, a 429/503
without Retry-After).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from bench.switch_bench import body_for, build_models, loads_from_metrics, models_dir, percentile, png_b64, start
from tests.servers import stop_process

MODELS = ["tiny-bert-embed", "tiny-llama-chat", "tiny-bert-reranker", "tiny-vit", "tiny-clip"]
DELIBERATE = {400, 404, 413, 422, 429, 502, 503}


async def soak(url: str, names: list[str], seconds: float, concurrency: int, image: str) -> dict[str, Any]:
    rng = random.Random(11)
    statuses: Counter[str] = Counter()
    codes: Counter[str] = Counter()
    latencies: list[float] = []
    problems: list[str] = []
    sent = answered = 0
    deadline = time.monotonic() + seconds

    def request() -> tuple[str, bytes, bool]:
        roll = rng.random()
        model = rng.choice(names)
        path, body = body_for(model, image)
        if roll < 0.03:
            return path, b'{"model": "' + model.encode() + b'", "input": [', False  # malformed JSON
        if roll < 0.06:
            body["model"] = "no-such-model"
        elif roll < 0.08 and path == "/v1/embeddings":
            body["input"] = ["x"] * 100_000  # over LLM_MAX_BATCH_INPUTS
        stream = path == "/v1/chat/completions" and roll > 0.8
        if stream:
            body["stream"] = True
        return path, json.dumps(body).encode(), stream

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal sent, answered
        while time.monotonic() < deadline:
            path, body, stream = request()
            sent += 1
            t0 = time.perf_counter()
            try:
                async with http.stream("POST", f"{url}{path}", content=body,
                                       headers={"content-type": "application/json"}) as response:  # fmt: skip
                    raw = await response.aread()
            except httpx.HTTPError as exc:
                problems.append(f"lost: {path}: {type(exc).__name__}")
                continue
            latencies.append(time.perf_counter() - t0)
            answered += 1
            statuses[str(response.status_code)] += 1
            if response.status_code == 200:
                if stream and not raw.rstrip().endswith(b"data: [DONE]"):
                    problems.append(f"stream without [DONE]: {raw[-200:]!r}")
                continue
            check(response, raw)

    def check(response: httpx.Response, raw: bytes) -> None:
        try:
            error = json.loads(raw)["error"]
            assert {"message", "type", "param", "code"} <= set(error)
            codes[str(error["code"])] += 1
        except (ValueError, KeyError, TypeError, AssertionError):
            problems.append(f"no envelope: {response.status_code} {raw[:200]!r}")
            return
        if response.status_code not in DELIBERATE:
            problems.append(f"undeliberate {response.status_code}: {error['message'][:200]}")
        if response.status_code in (429, 503) and "retry-after" not in response.headers:
            problems.append(f"{response.status_code} without Retry-After")

    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600, connect=10), limits=limits) as http:
        t0 = time.monotonic()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        wall = time.monotonic() - t0
    return {
        "seconds": round(wall, 1),
        "sent": sent,
        "answered": answered,
        "lost": sent - answered,
        "statuses": dict(statuses),
        "error_codes": dict(codes),
        "p50_s": round(percentile(latencies, 0.5), 3),
        "p99_s": round(percentile(latencies, 0.99), 3),
        "problems": problems[:20],
        "problem_count": len(problems),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--models", type=int, default=3, choices=range(2, len(MODELS) + 1))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    names = MODELS[: args.models]
    with tempfile.TemporaryDirectory(prefix="llmi-soak-") as tmp:
        work = Path(tmp)
        folders = build_models(work / "built", names)
        root = models_dir(work / "models", folders, "1GiB")
        serve = start(root, work, 1.5, None)  # one model at a time
        try:
            result = asyncio.run(soak(serve.url, names, args.seconds, args.concurrency, png_b64()))
            result["loads"] = loads_from_metrics(serve.url)
            result["healthy_after"] = httpx.get(f"{serve.url}/readyz", timeout=10).status_code == 200
        finally:
            stop_process(serve.proc)
    result.update(models=names, budget="one model (1.5 GiB, 1 GiB each)", concurrency=args.concurrency)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0 if result["lost"] == 0 and result["problem_count"] == 0 and result["healthy_after"] else 1


if __name__ == "__main__":
    sys.exit(main())
