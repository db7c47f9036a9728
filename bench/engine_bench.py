"""Engines that batch, side by side with their in-process floors (issue 9, acceptance 4).

Run from the repository root:

    python -m bench.engine_bench [--chat-model DIR] [--embed-model DIR] [--only chat|embed]
                                 [--tokens N] [--repeats R] [--threads T] [--json]

Without model folders it builds the tiny test models (overhead figures, not model speed); with
real ones (SmolLM2-135M-Instruct, all-MiniLM-L6-v2) the figures compare with issue 9's.

chat (greedy, exactly N new tokens: ``min_new_tokens`` in-process, an EOS logit_bias of -100
through the runtime):
- 1 stream: `llmi runtime` streamed vs ``model.generate`` of one prompt, and time to the first
  content delta vs the floor (``generate`` of one new token: prefill plus one step), best of
  each and, in rounds that alternate a one-token stream with the floor, the median difference;
- 4 concurrent streams: aggregate tok/s vs one batched, left-padded ``generate`` of the four prompts.

embeddings (tok counts aside, requests per second):
- 32 texts per request from 4 concurrent clients vs ``SentenceTransformer.encode`` of 32 texts;
- 1 text per request from 16 concurrent clients vs ``encode`` of 16 texts in one batch (the
  floor a perfect batcher reaches) and of one text at a time.
The floor's passes alternate with the servers' (this machine's pace drifts by a third within
minutes); besides each side's best pass, the median over rounds of the ratios within a round.

Peers, used when their executables exist: Infinity (``--infinity``, default
/work/venvs/infinity/bin/infinity_emb) on the same embedding folder, and ``transformers serve
--continuous-batching`` (``--transformers-serve``) on the same chat folder. Same torch thread
count on every side (OMP_NUM_THREADS for servers, ``torch.set_num_threads`` here).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import httpx
import torch
import transformers

from bench.runtime_bench import timed
from llmi_router.embedded.process import free_port
from tests.servers import poll_ready, runtime_env, start_runtime, stop_process
from tests.tiny_models import BUILDERS

PROMPTS = [
    "What is the capital of France? Answer in one sentence.",
    "Summarize the history of Rome.",
    "Write a short poem about the sea and the wind at night.",
    "Explain photosynthesis to a child.",
]
SENTENCES = [f"Sentence {i}: the quick brown fox jumps over the lazy dog number {i}." for i in range(32)]
Row = dict[str, Any]
TTFT_ROUNDS = 15  # one-token streams paired with the floor's first token, alternating which goes first


async def async_best_of(repeats: int, fn: Callable[[], Awaitable[Any]]) -> tuple[list[float], Any]:
    result = await fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = await fn()
        times.append(time.perf_counter() - t0)
    return times, result


# --------------------------------------------------------------------------- chat


class ChatFloor:
    """``model.generate`` in this process, kept loaded so that its time to first token can be
    taken between the server's (the machine's pace drifts by more than the 10 ms target)."""

    def __init__(self, folder: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tok = tok = AutoTokenizer.from_pretrained(folder, local_files_only=True, padding_side="left")
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True).eval()
        self.texts = [
            tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            for p in PROMPTS
        ]
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        self.eos = int(tok.eos_token_id)

    def run(self, batch: list[str], new: int) -> Any:
        enc = self.tok(batch, add_special_tokens=False, return_tensors="pt", padding=True)
        with torch.inference_mode():
            return self.model.generate(
                **enc, do_sample=False, max_new_tokens=new, min_new_tokens=new, pad_token_id=self.tok.pad_token_id
            )

    def first_token_s(self) -> float:
        """Prefill plus one step of the first prompt, tokenization included."""
        t0 = time.perf_counter()
        self.run(self.texts[:1], 1)
        return time.perf_counter() - t0

    def rates(self, tokens: int, repeats: int) -> Row:
        one, _ = timed(lambda: self.run(self.texts[:1], tokens), repeats)
        four, _ = timed(lambda: self.run(self.texts, tokens), repeats)
        first, _ = timed(self.first_token_s, repeats)
        return {
            "generate 1 stream tok/s": tokens / min(one),
            "generate batched x4 tok/s": 4 * tokens / min(four),
            "ttft floor ms": 1000 * min(first),
        }


async def chat_server(url: str, model: str, tokens: int, repeats: int, eos: int, floor: ChatFloor | None = None) -> Row:
    """Streams' rates, and (with ``floor``) time to first token in rounds that alternate a
    one-token stream with the floor's ``first_token_s``: the median of their differences."""
    body = {
        "model": model,
        "temperature": 0,
        "max_tokens": tokens,
        "logit_bias": {str(eos): -100},
        "stream": True,
        "stream_options": {"include_usage": True},
    }

    async def stream(client: httpx.AsyncClient, prompt: str, new: int = tokens) -> tuple[float, int]:
        t0, first, n = time.perf_counter(), float("nan"), 0
        payload = {**body, "max_tokens": new, "messages": [{"role": "user", "content": prompt}]}
        async with client.stream("POST", "/v1/chat/completions", json=payload) as r:
            r.raise_for_status()
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if event.get("usage"):
                    n = int(event["usage"]["completion_tokens"])
                if any(c.get("delta", {}).get("content") for c in event.get("choices", [])) and first != first:
                    first = time.perf_counter() - t0
        return first, n

    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        ttfts: list[float] = []

        async def one() -> int:
            first, n = await stream(client, PROMPTS[0])
            ttfts.append(first)
            return n

        times1, n1 = await async_best_of(repeats, one)

        async def four() -> int:
            got = await asyncio.gather(*(stream(client, p) for p in PROMPTS))
            return sum(n for _, n in got)

        times4, n4 = await async_best_of(repeats, four)
        pairs: list[tuple[float, float]] = []  # (server, floor) seconds, one round each
        for r in range(TTFT_ROUNDS if floor is not None else 0):
            assert floor is not None
            if r % 2 == 0:
                floor_s = floor.first_token_s()
                server_s = (await stream(client, PROMPTS[0], 1))[0]
            else:
                server_s = (await stream(client, PROMPTS[0], 1))[0]
                floor_s = floor.first_token_s()
            pairs.append((server_s, floor_s))
    row: Row = {
        "1 stream tok/s": n1 / min(times1),
        "4 streams tok/s": n4 / min(times4),
        "ttft ms": 1000 * min(ttfts[1:]),
        "tokens (1, 4)": (n1, n4),
    }
    if pairs:
        row["ttft ms, median of rounds"] = 1000 * statistics.median(s for s, _ in pairs)
        row["ttft floor ms, median of rounds"] = 1000 * statistics.median(f for _, f in pairs)
        row["ttft - floor ms, median of rounds"] = 1000 * statistics.median(s - f for s, f in pairs)
        row["ttft rounds"] = len(pairs)
    return row


# --------------------------------------------------------------------------- embeddings


EMBED_CALLS = 8  # per client and pass: 32 requests of 32 texts, 128 of one text


class EmbedFloor:
    """``SentenceTransformer.encode`` in this process: the work of one server pass, timed the
    same way, so it can run between the servers' passes (the machine's drift falls on it too)."""

    def __init__(self, folder: Path) -> None:
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(folder), device="cpu", local_files_only=True)

    def one_pass(self) -> tuple[float, float]:
        """Seconds for 32 encodes of 32 texts (4 clients x 8 calls) and 8 of 16 texts (the 128
        single texts a perfect batcher would merge 16 at a time)."""
        t0 = time.perf_counter()
        for _ in range(4 * EMBED_CALLS):
            self.model.encode(SENTENCES, batch_size=32)
        t32 = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(EMBED_CALLS):
            self.model.encode(SENTENCES[:16], batch_size=16)
        return t32, time.perf_counter() - t0

    def one_at_a_time(self, repeats: int) -> float:
        t1, _ = timed(lambda: [self.model.encode(SENTENCES[i : i + 1]) for i in range(16)], repeats)
        return 16 / min(t1)


async def embed_servers(
    sides: dict[str, tuple[str, str, str]], repeats: int, floor: EmbedFloor | None = None
) -> dict[str, Any]:
    """Every side (name: url, model, path; and the in-process floor) measured in alternating
    passes, A B F, F B A, ..., so that a drift of the machine falls on all; the best pass of
    each is reported, and the median over rounds of each side's rate against the floor's and
    llmi's against each peer's in the same round (``paired``)."""
    async with contextlib.AsyncExitStack() as stack:
        clients_by_side = {
            name: await stack.enter_async_context(
                httpx.AsyncClient(base_url=url, timeout=600, limits=httpx.Limits(max_connections=32))
            )
            for name, (url, _, _) in sides.items()
        }

        async def one_pass(name: str) -> tuple[float, float]:
            if name == "floor":
                assert floor is not None
                return floor.one_pass()
            client, (_, model, path) = clients_by_side[name], sides[name]

            async def clients(n: int, texts: Callable[[int], list[str]]) -> float:
                async def one(c: int) -> None:
                    for k in range(EMBED_CALLS):
                        body = {"model": model, "input": texts(c * EMBED_CALLS + k)}
                        (await client.post(path, json=body)).raise_for_status()

                t0 = time.perf_counter()
                await asyncio.gather(*(one(c) for c in range(n)))
                return time.perf_counter() - t0

            return await clients(4, lambda _: SENTENCES), await clients(16, lambda i: [SENTENCES[i % 32]])

        names = list(sides) + (["floor"] if floor is not None else [])
        for name in names:
            await one_pass(name)  # untimed warm-up
        passes: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
        for r in range(repeats):
            for name in names if r % 2 == 0 else names[::-1]:
                passes[name].append(await one_pass(name))
    out: dict[str, Any] = {
        name: {
            "32 texts x c4 req/s": 4 * EMBED_CALLS / min(t for t, _ in runs),
            "1 text x c16 texts/s": 16 * EMBED_CALLS / min(t for _, t in runs),
        }
        for name, runs in passes.items()
        if name != "floor"
    }
    if floor is not None:
        runs = passes["floor"]
        out["floor"] = {
            "encode 32 texts req/s": 4 * EMBED_CALLS / min(t for t, _ in runs),
            "encode 16x1 batched texts/s": 16 * EMBED_CALLS / min(t for _, t in runs),
        }
    paired: dict[str, float] = {}
    for a, b in [(n, "floor") for n in sides if floor is not None] + [("llmi", n) for n in sides if n != "llmi"]:
        if a in passes and b in passes:
            for i, label in ((0, "32xc4"), (1, "1xc16")):
                rounds = [tb[i] / ta[i] for ta, tb in zip(passes[a], passes[b], strict=True)]
                paired[f"{a} {label} vs {b}"] = statistics.median(rounds)
    out["paired"] = paired
    return out


# --------------------------------------------------------------------------- peers


@contextlib.contextmanager
def peer(cmd: list[str], ready: str, log: Path, env: dict[str, str]) -> Any:
    port = free_port()
    full = [c.replace("{port}", str(port)) for c in cmd]
    with log.open("wb") as out:
        proc = subprocess.Popen(full, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        with httpx.Client(timeout=5) as client:
            while time.monotonic() < deadline and proc.poll() is None:
                with contextlib.suppress(httpx.TransportError):
                    if client.get(url + ready).status_code == 200:
                        break
                time.sleep(0.5)
            else:
                raise RuntimeError(f"{full[0]} did not start:\n{log.read_text(errors='replace')[-2000:]}")
        yield url
    finally:
        stop_process(proc, grace_s=10)


def warm_up(url: str, model: str, tries: int = 10) -> None:
    """transformers serve answers /health before its first chat works (500s while it warms up)."""
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    with httpx.Client(base_url=url, timeout=300) as client:
        for _ in range(tries):
            if client.post("/v1/chat/completions", json=body).status_code == 200:
                return
    raise RuntimeError(f"{url} never answered a chat request")


# --------------------------------------------------------------------------- main


def run_llmi(folder: Path, logs: Path, env: dict[str, str]) -> Any:
    rt = start_runtime(folder, logs, "--device", "cpu", env=env, wait=False)
    poll_ready(rt.url, rt.proc, rt.log)
    return rt


def ratios(result: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    chat, embed = result.get("chat"), result.get("embeddings")
    if chat:
        f, r = chat["floor"], chat["llmi"]
        out["chat 1 stream vs generate"] = r["1 stream tok/s"] / f["generate 1 stream tok/s"]
        out["chat 4 streams vs batched generate"] = r["4 streams tok/s"] / f["generate batched x4 tok/s"]
        out["chat ttft - floor (ms)"] = r["ttft ms"] - f["ttft floor ms"]
        if "ttft - floor ms, median of rounds" in r:
            out["chat ttft - floor (ms), median of rounds"] = r["ttft - floor ms, median of rounds"]
        if "transformers serve" in chat:
            out["chat 4 streams vs transformers serve"] = (
                r["4 streams tok/s"] / chat["transformers serve"]["4 streams tok/s"]
            )
    if embed:
        f, r = embed["floor"], embed["llmi"]
        out["embed 32xc4 vs encode"] = r["32 texts x c4 req/s"] / f["encode 32 texts req/s"]
        out["embed 1xc16 vs batched encode"] = r["1 text x c16 texts/s"] / f["encode 16x1 batched texts/s"]
        out["embed 1xc16 vs encode one at a time"] = r["1 text x c16 texts/s"] / f["encode 1 text at a time texts/s"]
        if "infinity" in embed:
            out["embed 32xc4 vs infinity"] = r["32 texts x c4 req/s"] / embed["infinity"]["32 texts x c4 req/s"]
            out["embed 1xc16 vs infinity"] = r["1 text x c16 texts/s"] / embed["infinity"]["1 text x c16 texts/s"]
        for key, value in embed.get("paired", {}).items():
            out[f"embed {key} (median of rounds)"] = value
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.engine_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--chat-model", type=Path, help="chat model folder (default: tiny-llama-chat, built)")
    parser.add_argument("--embed-model", type=Path, help="embedding model folder (default: tiny-bert-embed)")
    parser.add_argument("--only", choices=["chat", "embed"], help="run one half (each stays under a minute)")
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per chat request (default 64)")
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats; the best is reported (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on every side (default 1)")
    parser.add_argument("--infinity", type=Path, default=Path("/work/venvs/infinity/bin/infinity_emb"))
    parser.add_argument("--transformers-serve", type=Path, help="a `transformers` executable to run as a peer")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    transformers.utils.logging.disable_progress_bar()
    env = runtime_env(OMP_NUM_THREADS=str(args.threads), LLM_LOG_LEVEL="WARNING")
    result: dict[str, Any] = {"config": {"threads": args.threads, "tokens": args.tokens, "repeats": args.repeats}}
    with tempfile.TemporaryDirectory(prefix="llmi-engine-bench-") as tmp:
        logs = Path(tmp)
        if args.only in (None, "chat"):
            folder = args.chat_model or BUILDERS["tiny-llama-chat"](logs / "tiny-llama-chat")
            chat_floor = ChatFloor(folder)
            eos = chat_floor.eos
            chat: dict[str, Any] = {"model": folder.name, "floor": chat_floor.rates(args.tokens, args.repeats)}
            rt = run_llmi(folder, logs, env)
            try:
                chat["llmi"] = asyncio.run(chat_server(rt.url, rt.name, args.tokens, args.repeats, eos, chat_floor))
            finally:
                rt.stop()
            serve = args.transformers_serve
            if serve is not None and shutil.which(str(serve)):
                cmd = [
                    str(serve),
                    "serve",
                    str(folder),
                    "--port",
                    "{port}",
                    "--continuous-batching",
                    "--dtype",
                    "float32",
                ]
                with peer(cmd, "/health", logs / "transformers-serve.log", env) as url:
                    warm_up(url, str(folder))
                    chat["transformers serve"] = asyncio.run(
                        chat_server(url, str(folder), args.tokens, args.repeats, eos)
                    )
            result["chat"] = chat
            del chat_floor
        if args.only in (None, "embed"):
            folder = args.embed_model or BUILDERS["tiny-bert-embed"](logs / "tiny-bert-embed")
            floor_side = EmbedFloor(folder)
            embed: dict[str, Any] = {"model": folder.name}
            rt = run_llmi(folder, logs, env)
            try:
                with contextlib.ExitStack() as peers:
                    sides = {"llmi": (rt.url, rt.name, "/v1/embeddings")}
                    if args.infinity.is_file():
                        cmd = [str(args.infinity), "v2", "--model-id", str(folder), "--port", "{port}"]
                        cmd += ["--device", "cpu"]
                        url = peers.enter_context(peer(cmd, "/health", logs / "infinity.log", env))
                        sides["infinity"] = (url, str(folder), "/embeddings")
                    embed.update(asyncio.run(embed_servers(sides, args.repeats, floor_side)))
                    embed["floor"]["encode 1 text at a time texts/s"] = floor_side.one_at_a_time(args.repeats)
            finally:
                rt.stop()
            result["embeddings"] = embed
    result["ratios"] = ratios(result)
    if args.json:
        json.dump(result, sys.stdout, indent=2, default=str)
        print()
    else:
        for section in ("chat", "embeddings"):
            for side, row in result.get(section, {}).items():
                if isinstance(row, dict):
                    print(f"{section:10} {side:20} " + "  ".join(f"{k}={_fmt(v)}" for k, v in row.items()))
        for name, value in result["ratios"].items():
            print(f"ratio      {name:40} {value:7.2f}")
    return 0


def _fmt(v: Any) -> str:
    return f"{v:.1f}" if isinstance(v, float) else str(v)


if __name__ == "__main__":
    sys.exit(main())
