"""Benchmark `llmi runtime` against the libraries it wraps, on tiny CPU models.

Run from the repository root:

    python -m bench.runtime_bench [--model-dir DIR] [--tokens N] [--repeats R] [--threads T] [--json]

Measures (medians over R repeats, each after one untimed warm-up):

1. cold start: spawn `llmi runtime` -> /readyz 200, split into the runtime's own
   ``load_seconds`` (from /v1/health) and everything before it (interpreter, imports, server);
2. chat decode on tiny-llama-chat: direct ``model.generate`` vs ``ChatEngine.generate``
   in-process vs the runtime over HTTP (plain and streamed), all greedy, exactly N tokens;
3. embeddings of 32 short sentences on tiny-bert-embed: ``SentenceTransformer.encode`` vs
   the runtime's /v1/embeddings.

Everything runs on the CPU in float32 (the runtime gets ``--device cpu``), with the same
number of torch threads on both sides: OMP_NUM_THREADS for the runtime process,
``torch.set_num_threads`` here. /readyz is polled every 0.1 s (tests.servers.wait_ready).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import httpx
import torch
import transformers

from tests.servers import RuntimeProcess, runtime_env, start_runtime, wait_ready
from tests.tiny_models import BUILDERS, IM_END

CHAT_MODEL, EMBED_MODEL = "tiny-llama-chat", "tiny-bert-embed"
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant that answers questions about science and history."},
    {"role": "user", "content": "What is the capital of France? Please summarize the passage in one sentence."},
]
SENTENCES = [f"Sentence {i}: the quick brown fox jumps over the lazy dog number {i}." for i in range(32)]
EMBED_CALLS = 20  # embedding calls per timed repeat (one call takes milliseconds)

Row = dict[str, Any]


def median_min(values: Sequence[float]) -> Row:
    return {"median": statistics.median(values), "min": min(values)}


def timed(fn: Callable[[], Any], repeats: int) -> tuple[list[float], Any]:
    """Wall times of ``repeats`` calls after one warm-up call, and the last result."""
    result = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return times, result


def ensure_models(root: Path) -> dict[str, Path]:
    """The two tiny models, built under root unless already there."""
    out = {}
    for name in (CHAT_MODEL, EMBED_MODEL):
        folder = root / name
        out[name] = folder if (folder / "config.json").is_file() else BUILDERS[name](folder)
    return out


# --------------------------------------------------------------------------- cold start


def cold_start(
    folder: Path, log_dir: Path, env: dict[str, str], repeats: int, stack: contextlib.ExitStack
) -> tuple[Row, RuntimeProcess]:
    """Spawn the runtime ``repeats`` times; the last one stays up (stopped by ``stack``)."""
    walls: list[float] = []
    loads: list[float] = []
    runtime: RuntimeProcess | None = None
    for _ in range(repeats):
        if runtime is not None:
            runtime.stop()
        t0 = time.perf_counter()
        runtime = start_runtime(folder, log_dir, "--device", "cpu", env=env, wait=False)
        stack.callback(runtime.stop)
        wait_ready(runtime)
        walls.append(time.perf_counter() - t0)
        loads.append(float(httpx.get(f"{runtime.url}/v1/health", timeout=10).json()["load_seconds"]))
    assert runtime is not None
    pre_load = [w - ld for w, ld in zip(walls, loads, strict=True)]
    row = {"ready_s": median_min(walls), "load_s": median_min(loads), "pre_load_s": median_min(pre_load)}
    return row, runtime


# --------------------------------------------------------------------------- chat


def chat_bench(folder: Path, url: str, tokens: int, repeats: int) -> dict[str, Row]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmi_runtime.engines.base import LoadOptions
    from llmi_runtime.engines.chat import ChatEngine, SamplingParams

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    eos = int(tokenizer.convert_tokens_to_ids(IM_END))
    assert eos != tokenizer.unk_token_id, f"{IM_END} is not a token of {folder}"
    text = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    inputs = tokenizer(text, add_special_tokens=False, return_tensors="pt")
    prompt_len = int(inputs.input_ids.shape[1])
    rows: dict[str, Row] = {}

    def row(times: list[float], n: int, **extra: Any) -> Row:
        rates = [n / t for t in times]
        tok_s = statistics.median(rates)
        return {"tok_s": tok_s, "best_tok_s": max(rates), "ms_per_token": 1000 / tok_s, **extra}

    # (a) transformers generate(), the reference.
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True).eval()

    def direct() -> list[int]:
        with torch.inference_mode():
            out = model.generate(**inputs, do_sample=False, max_new_tokens=tokens, min_new_tokens=tokens)
        return out[0, prompt_len:].tolist()

    times, ids = timed(direct, repeats)
    reference = tokenizer.decode(ids, skip_special_tokens=True)
    rows["direct model.generate"] = row(times, len(ids))

    # (a') the runtime's decode loop in this process: no HTTP, no worker thread.
    engine = ChatEngine(folder, LoadOptions(device="cpu"))
    params = SamplingParams(max_tokens=tokens, temperature=0.0, logit_bias={eos: -100.0})
    prompt = engine.chat_prompt(MESSAGES)
    assert len(prompt) == prompt_len, "the runtime templates the prompt differently"

    def in_process() -> tuple[str, int]:
        deltas = list(engine.generate(prompt, params))
        return "".join(d.text for d in deltas), deltas[-1].completion_tokens

    times, (out_text, n) = timed(in_process, repeats)
    rows["ChatEngine.generate (no HTTP)"] = row(times, n, same_text=out_text == reference)

    body = {
        "model": CHAT_MODEL,
        "messages": MESSAGES,
        "temperature": 0,
        "max_tokens": tokens,
        "logit_bias": {str(eos): -100},
    }
    with httpx.Client(base_url=url, timeout=300) as client:
        # (b) one JSON response per request.
        def plain() -> tuple[str, int]:
            r = client.post("/v1/chat/completions", json=body)
            r.raise_for_status()
            data = r.json()
            return data["choices"][0]["message"]["content"], int(data["usage"]["completion_tokens"])

        times, (out_text, n) = timed(plain, repeats)
        rows["runtime HTTP"] = row(times, n, same_text=out_text == reference)

        # (c) server-sent events; time to the first content delta.
        ttfts: list[float] = []

        def streamed() -> tuple[str, int]:
            parts: list[str] = []
            n, first, t0 = 0, None, time.perf_counter()
            stream_body = {**body, "stream": True, "stream_options": {"include_usage": True}}
            with client.stream("POST", "/v1/chat/completions", json=stream_body) as r:
                r.raise_for_status()
                for line in r.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    event = json.loads(line[len("data: ") :])
                    if event.get("usage"):
                        n = int(event["usage"]["completion_tokens"])
                    for choice in event.get("choices", []):
                        if content := choice["delta"].get("content"):
                            first = first or time.perf_counter() - t0
                            parts.append(content)
            ttfts.append(first or float("nan"))
            return "".join(parts), n

        times, (out_text, n) = timed(streamed, repeats)
        rows["runtime HTTP stream"] = row(
            times, n, ttft_ms=1000 * statistics.median(ttfts[1:]), same_text=out_text == reference
        )

    base = rows["direct model.generate"]["tok_s"]
    for r in rows.values():
        r["vs_direct"] = r["tok_s"] / base
    rows["direct model.generate"]["prompt_tokens"] = prompt_len
    return rows


# --------------------------------------------------------------------------- embeddings


def embed_bench(folder: Path, url: str, repeats: int) -> dict[str, Row]:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cpu", local_files_only=True)

    def direct() -> None:
        for _ in range(EMBED_CALLS):
            model.encode(SENTENCES, batch_size=len(SENTENCES))

    rows: dict[str, Row] = {}
    times, _ = timed(direct, repeats)
    rows["direct SentenceTransformer.encode"] = {
        "req_s": EMBED_CALLS / statistics.median(times),
        "best_req_s": EMBED_CALLS / min(times),
    }

    with httpx.Client(base_url=url, timeout=60) as client:

        def runtime() -> None:
            for _ in range(EMBED_CALLS):
                client.post("/v1/embeddings", json={"model": EMBED_MODEL, "input": SENTENCES}).raise_for_status()

        times, _ = timed(runtime, repeats)
        rows["runtime HTTP"] = {"req_s": EMBED_CALLS / statistics.median(times), "best_req_s": EMBED_CALLS / min(times)}
    base = rows["direct SentenceTransformer.encode"]["req_s"]
    for r in rows.values():
        r["ms_per_req"] = 1000 / r["req_s"]
        r["vs_direct"] = r["req_s"] / base
    return rows


# --------------------------------------------------------------------------- report


def print_table(result: dict[str, Any]) -> None:
    c = result["config"]
    print(
        f"llmi runtime bench: threads={c['threads']} (OMP_NUM_THREADS and torch.set_num_threads), "
        f"tokens={c['tokens']}, repeats={c['repeats']}, cpus={c['cpus']}, torch {c['torch']}"
    )
    print(f"\n{'cold start: spawn -> /readyz 200':36} {'median':>8} {'min':>8} {'load_s':>8} {'pre-load':>9}")
    for name, r in result["cold_start"].items():
        ready, load, pre = r["ready_s"], r["load_s"], r["pre_load_s"]
        print(f"  {name:34} {ready['median']:7.2f}s {ready['min']:7.2f}s {load['median']:7.3f}s {pre['median']:8.2f}s")
    chat = result["chat"]
    prompt = chat["direct model.generate"]["prompt_tokens"]
    title = f"chat: {CHAT_MODEL}, {prompt}+{c['tokens']} tokens"
    print(f"\n{title:36} {'tok/s':>8} {'best':>8} {'ms/tok':>8} {'TTFT ms':>8} {'vs dir':>7} {'same':>5}")
    for name, r in chat.items():
        ttft = f"{r['ttft_ms']:8.1f}" if "ttft_ms" in r else f"{'':8}"
        same = {True: "yes", False: "NO"}.get(r.get("same_text"), "ref")
        print(
            f"  {name:34} {r['tok_s']:8.1f} {r['best_tok_s']:8.1f} {r['ms_per_token']:8.2f} {ttft} "
            f"{r['vs_direct']:6.2f}x {same:>5}"
        )
    title = f"embeddings: {EMBED_MODEL}, batch {len(SENTENCES)}"
    print(f"\n{title:36} {'req/s':>8} {'best':>8} {'ms/req':>8} {'vs dir':>8}")
    for name, r in result["embeddings"].items():
        print(f"  {name:34} {r['req_s']:8.1f} {r['best_req_s']:8.1f} {r['ms_per_req']:8.2f} {r['vs_direct']:7.2f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.runtime_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, help="where the tiny models are (built there if missing)")
    parser.add_argument("--tokens", type=int, default=64, help="tokens to generate per request (default 64)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats; medians are reported (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch on both sides (default 1)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    transformers.utils.logging.disable_progress_bar()
    env = runtime_env(OMP_NUM_THREADS=str(args.threads), LLM_LOG_LEVEL="WARNING")
    result: dict[str, Any] = {
        "config": {
            "threads": torch.get_num_threads(),
            "tokens": args.tokens,
            "repeats": args.repeats,
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
        }
    }
    with tempfile.TemporaryDirectory(prefix="llmi-bench-") as tmp, contextlib.ExitStack() as stack:
        models = ensure_models(args.model_dir or Path(tmp) / "models")
        # One runtime at a time, so nothing else competes for the CPUs; the last cold start
        # of each model stays up for its throughput runs.
        embed_row, runtime = cold_start(models[EMBED_MODEL], Path(tmp), env, args.repeats, stack)
        result["embeddings"] = embed_bench(models[EMBED_MODEL], runtime.url, args.repeats)
        runtime.stop()
        chat_row, runtime = cold_start(models[CHAT_MODEL], Path(tmp), env, args.repeats, stack)
        result["cold_start"] = {CHAT_MODEL: chat_row, EMBED_MODEL: embed_row}
        result["chat"] = chat_bench(models[CHAT_MODEL], runtime.url, args.tokens, args.repeats)
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
