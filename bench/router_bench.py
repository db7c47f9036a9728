"""Benchmark the `llmi serve` router against calling `llmi runtime` directly, on tiny CPU models.

Run from the repository root (wrk must be installed: ``apt-get install wrk``):

    python -m bench.router_bench [--quick] [--model-dir DIR] [--seconds S] [--concurrency C]
                                 [--rounds R] [--streams N] [--threads T] [--litellm PATH] [--json]

One `llmi serve` on a folder with tiny-bert-embed and tiny-llama-chat (budget large enough to
keep both loaded), and one standalone `llmi runtime` per model started with the same
``--type``/``--placement`` the router gave its own runtimes and the same OMP_NUM_THREADS.
The router is warmed up first (both models loaded), so what is measured is the steady-state
cost of the extra hop, not model loading.

Figures, each for "direct" (the runtimes' own ports), "router" (the serve port), "floor"
(``bench.floor_proxy``: uvicorn and aiohttp with no logic) and, when a LiteLLM proxy is
installed (``--litellm``), "litellm" (LiteLLM's proxy in front of the same standalone runtimes):

1. concurrency 1, then C (default 16) keep-alive connections, of small requests:
   /v1/embeddings of one short string and non-streamed /v1/chat/completions with max_tokens 1,
   driven by wrk for S seconds a batch: p50, p99 and req/s;
2. streamed chat, exactly 32 greedy tokens (eos suppressed), through httpx: time to first
   content delta and total time, p50;
3. CPU time of the proxy process per request (Linux's per-process CPU clock), per
   (request, concurrency) cell and their mean; streamed chats apart, per stream.

A fifth side, "own", calls the router's own runtimes on their TCP ports; "router vs own" is the
router's figure against those, so that only the hop differs (a standalone runtime's speed moves
by a few tenths of a millisecond from one start to the next).

Each proxy figure is reported next to direct: the ratio and the added milliseconds. Every batch
runs on each target in each of R rounds, the order alternating between rounds, so drift on a
noisy machine hits every side alike. ``--quick``: 1 s batches, 2 rounds, 6 streams.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import transformers

from bench.runtime_bench import CHAT_MODEL, EMBED_MODEL, MESSAGES, Row, ensure_models
from tests.serve_process import ServeProcess, runtime_args, start_serve
from tests.servers import RuntimeProcess, free_port, runtime_env, start_runtime, stop_process, wait_ready
from tests.tiny_models import IM_END

MODELS = (EMBED_MODEL, CHAT_MODEL)
LITELLM = Path("/work/venvs/litellm/bin/litellm")
# LiteLLM refuses to start without a master key; every target gets it (the others ignore it).
LITELLM_KEY = "sk-" + secrets.token_hex(32)
AUTH = {"authorization": f"Bearer {LITELLM_KEY}"}
STREAM_TOKENS = 32
JSON_HEADERS = {"content-type": "application/json"}
LOAD_TIMEOUT_S = 300.0

# The small requests: key -> (model, path), and their labels.
PATHS = {"embed": (EMBED_MODEL, "/v1/embeddings"), "chat1": (CHAT_MODEL, "/v1/chat/completions")}
SEQ = [("embed", f"embeddings ({EMBED_MODEL}, 1 string)"), ("chat1", f"chat ({CHAT_MODEL}, max_tokens 1)")]


@dataclass
class Target:
    """Where one side sends each model's requests, and its single keep-alive client."""

    name: str
    urls: dict[str, str]
    client: httpx.AsyncClient
    batches: dict[tuple[str, int], list[Batch]] = field(default_factory=dict)  # by (kind, concurrency)
    ttft: list[float] = field(default_factory=list)
    pid: int | None = None  # the proxy process whose CPU is counted
    stream_cpu_s: float = 0.0  # over the streamed chats, apart: each relays dozens of events
    streamed: int = 0
    stream_total: list[float] = field(default_factory=list)
    stream_texts: set[str] = field(default_factory=set)
    stream_tokens: set[int] = field(default_factory=set)


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    s = sorted(values)
    k = (len(s) - 1) * q
    lo = math.floor(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def cpu_seconds(pid: int | None) -> float:
    """User plus system CPU time of one process so far (its children not included), to the
    nanosecond: Linux's CPU-time clock of another process (glibc's ``clock_getcpuclockid``
    encoding, ``~pid << 3 | 2``); /proc's 10 ms ticks where that clock cannot be read. A batch of
    40 requests at half a millisecond each is two ticks: too coarse to compare proxies."""
    if pid is None:
        return 0.0
    try:
        return time.clock_gettime(((~pid) << 3) | 2)
    except OSError:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def split(total: int, parts: int) -> list[int]:
    """``total`` as ``parts`` near-equal counts."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def eos_id(folder: Path) -> int:
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    for token in tokenizer["added_tokens"]:
        if token["content"] == IM_END:
            return int(token["id"])
    raise LookupError(f"{IM_END} is not a token of {folder}")


def bodies(eos: int) -> dict[str, bytes]:
    def enc(body: dict[str, Any]) -> bytes:
        return json.dumps(body).encode()

    return {
        "embed": enc({"model": EMBED_MODEL, "input": "The quick brown fox."}),
        "chat1": enc(
            {
                "model": CHAT_MODEL,
                "messages": [{"role": "user", "content": "Hello!"}],
                "max_tokens": 1,
                "temperature": 0,
            }
        ),
        "stream": enc(
            {
                "model": CHAT_MODEL,
                "messages": MESSAGES,
                "max_tokens": STREAM_TOKENS,
                "temperature": 0,
                "logit_bias": {str(eos): -100},
                "stream": True,
                "stream_options": {"include_usage": True},
            }
        ),
    }


# --------------------------------------------------------------------------- one request


WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = [==[%(body)s]==]
wrk.headers["content-type"] = "application/json"
wrk.headers["authorization"] = "%(auth)s"
function done(summary, latency, requests)
  local e = summary.errors
  local f = 'WRK {"requests": %%d, "us": %%d, "non2xx": %%d, "errors": %%d, "p50_us": %%d, "p99_us": %%d}\\n'
  io.write(string.format(f,
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass(frozen=True)
class Batch:
    """What one wrk run reports (requests answered, its duration, its latency percentiles), and
    the proxy's CPU time over it."""

    requests: int
    seconds: float
    p50_s: float
    p99_s: float
    cpu_s: float = 0.0


async def wrk(target: Target, kind: str, body: bytes, seconds: int, connections: int, scripts: Path) -> Batch:
    """``connections`` keep-alive clients sending ``body`` back to back for ``seconds``: wrk, the
    client the issue measured with. A Python client on the same two cores costs several times the
    proxy's CPU per request and spreads requests apart; its figures were the client's more than
    the proxy's. Any refusal, error or non-2xx answer fails the bench."""
    model, path = PATHS[kind]
    script = scripts / f"{kind}.lua"
    if not script.exists():
        script.write_text(WRK_SCRIPT % {"body": body.decode(), "auth": AUTH["authorization"]})
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "30s", "-s", str(script)]
    proc = await asyncio.create_subprocess_exec(
        *command, f"{target.urls[model]}{path}", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out = (await proc.communicate())[0].decode(errors="replace")
    line = next((x for x in out.splitlines() if x.startswith("WRK ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"{target.name} {path}: wrk failed:\n{out[-2000:]}")
    r = json.loads(line[4:])
    if r["non2xx"] or r["errors"] or not r["requests"]:
        raise RuntimeError(f"{target.name} {path}: {r['non2xx']} non-2xx answers, {r['errors']} errors:\n{out[-2000:]}")
    return Batch(r["requests"], r["us"] / 1e6, r["p50_us"] / 1e6, r["p99_us"] / 1e6)


async def stream(target: Target, body: bytes) -> tuple[float, float, str, int]:
    """(time to first content delta, total time, text, completion tokens) of one streamed chat."""
    parts: list[str] = []
    tokens, first = 0, math.nan
    t0 = time.perf_counter()
    url = f"{target.urls[CHAT_MODEL]}/v1/chat/completions"
    async with target.client.stream("POST", url, content=body, headers=JSON_HEADERS) as r:
        if r.status_code != 200:
            raise RuntimeError(f"{target.name} stream: HTTP {r.status_code}: {(await r.aread())[:500]!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[len("data: ") :])
            if "error" in event:
                raise RuntimeError(f"{target.name} stream: {event['error']}")
            if event.get("usage"):
                tokens = int(event["usage"]["completion_tokens"])
            for choice in event.get("choices", []):
                if content := choice["delta"].get("content"):
                    if math.isnan(first):
                        first = time.perf_counter() - t0
                    parts.append(content)
    return first, time.perf_counter() - t0, "".join(parts), tokens


# --------------------------------------------------------------------------- batches


async def batch(t: Target, kind: str, body: bytes, args: argparse.Namespace, concurrency: int, scripts: Path) -> None:
    """One timed wrk batch on ``t``, counting its proxy's CPU time."""
    before = cpu_seconds(t.pid)
    b = await wrk(t, kind, body, args.seconds, concurrency, scripts)
    t.batches.setdefault((kind, concurrency), []).append(replace(b, cpu_s=cpu_seconds(t.pid) - before))


async def streams(target: Target, body: bytes, n: int) -> None:
    for _ in range(n):
        first, total, text, tokens = await stream(target, body)
        target.ttft.append(first)
        target.stream_total.append(total)
        target.stream_texts.add(text)
        target.stream_tokens.add(tokens)


async def timed_streams(t: Target, body: bytes, n: int) -> None:
    before = cpu_seconds(t.pid)
    await streams(t, body, n)
    t.stream_cpu_s += cpu_seconds(t.pid) - before
    t.streamed += n


async def measure(
    urls: dict[str, dict[str, str]], pids: dict[str, int | None], body: dict[str, bytes], args: argparse.Namespace
) -> dict[str, Row]:
    async with contextlib.AsyncExitStack() as stack:
        targets = [
            Target(name, urls[name], await stack.enter_async_context(httpx.AsyncClient(timeout=120, headers=AUTH)))
            for name in urls
        ]
        for t in targets:
            t.pid = pids.get(t.name)
        scripts = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="llmi-wrk-")))
        # Untimed warm-up: every code path run once on every side (a first answer can take
        # longer than a wrk batch: LiteLLM's first chat did), then connections opened.
        for t in targets:
            for kind, (model, path) in PATHS.items():
                r = await t.client.post(f"{t.urls[model]}{path}", content=body[kind], headers=JSON_HEADERS)
                if r.status_code != 200:
                    raise RuntimeError(f"{t.name} {path} warm-up: HTTP {r.status_code}: {r.text[:500]}")
                await wrk(t, kind, body[kind], 1, args.concurrency, scripts)
            await streams(t, body["stream"], 2)
            t.ttft.clear()
            t.stream_total.clear()

        for i, s in enumerate(split(args.streams, args.rounds)):
            order = targets if i % 2 == 0 else targets[::-1]
            for concurrency in (1, args.concurrency):
                for kind in PATHS:
                    for t in order:
                        await batch(t, kind, body[kind], args, concurrency, scripts)
            for t in order:
                await timed_streams(t, body["stream"], s)
    return {t.name: summarize(t) for t in targets}


def summarize(t: Target) -> Row:
    """Per figure, the median over rounds of each batch's p50 and p99, and the request rate over
    all batches. CPU per request is the mean of the four (request, concurrency) cells, each its
    batches' CPU over their requests, so that neither kind nor concurrency outweighs the others
    by how many requests fit in a batch."""
    row: Row = {}
    for (kind, c), batches in t.batches.items():
        key = kind if c == 1 else f"{kind}_c"  # FIGURES' names
        row[f"{key}_p50_ms"] = 1000 * statistics.median(b.p50_s for b in batches)
        row[f"{key}_p99_ms"] = 1000 * statistics.median(b.p99_s for b in batches)
        row[f"{key}_p50_ms_by_round"] = [1000 * b.p50_s for b in batches]  # for paired differences
        rate = sum(b.requests for b in batches) / sum(b.seconds for b in batches)
        row[f"{kind}_seq_c_req_s" if c == 1 else f"{kind}_c_req_s"] = rate
    cells = {
        cell: 1000 * sum(b.cpu_s for b in batches) / sum(b.requests for b in batches)
        for cell, batches in t.batches.items()
    }
    measured = t.pid is not None and cells
    row["cpu_ms_per_request"] = statistics.mean(cells.values()) if measured else math.nan
    for c in sorted({c for _, c in cells}):
        per_c = [value for (_, at), value in cells.items() if at == c]
        row[f"cpu_ms_per_request_c{c}"] = statistics.mean(per_c) if measured else math.nan
    for (kind, c), value in cells.items():
        row[f"cpu_ms_per_request_{kind}_c{c}"] = value if measured else math.nan
    row["stream_ttft_p50_ms"] = 1000 * percentile(t.ttft, 0.5)
    row["stream_total_p50_ms"] = 1000 * percentile(t.stream_total, 0.5)
    row["cpu_ms_per_stream"] = 1000 * t.stream_cpu_s / t.streamed if t.pid is not None and t.streamed else math.nan
    row["stream_texts"] = sorted(t.stream_texts)
    row["stream_tokens"] = sorted(t.stream_tokens)
    return row


# --------------------------------------------------------------------------- processes


def warm_router(serve: ServeProcess, body: dict[str, bytes]) -> dict[str, dict[str, Any]]:
    """Load both models through the router; return /v1/models entries (type, placement)."""
    with httpx.Client(base_url=serve.url, timeout=LOAD_TIMEOUT_S) as client:
        for kind, (_, path) in PATHS.items():
            r = client.post(path, content=body[kind], headers=JSON_HEADERS)
            if r.status_code != 200:
                raise RuntimeError(f"router warm-up {path}: HTTP {r.status_code}: {r.text[:500]}")
        models = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    states = {name: models[name]["state"] for name in MODELS}
    if any(state != "ready" for state in states.values()):
        raise RuntimeError(f"not every model stayed loaded in the router: {states}")
    return models


@dataclass
class LiteLLM:
    url: str
    proc: subprocess.Popen[bytes]


def start_litellm(command: Path, direct: dict[str, str], tmp: Path) -> LiteLLM:
    """LiteLLM's proxy in front of the standalone runtimes, as an OpenAI-compatible provider."""
    port = free_port()
    models = [
        {"model_name": name, "litellm_params": {"model": f"openai/{name}", "api_base": f"{url}/v1", "api_key": "x"}}
        for name, url in direct.items()
    ]
    config = tmp / "litellm.yaml"
    config.write_text(json.dumps({"model_list": models}))  # JSON is YAML
    log = tmp / "litellm.log"
    env = {
        **os.environ,
        "LITELLM_LOG": "ERROR",
        "LITELLM_TELEMETRY": "False",
        "NO_DOCS": "True",
        "LITELLM_MASTER_KEY": LITELLM_KEY,
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(command), "--config", str(config), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    return _when_listening(LiteLLM(url, proc), "/health/liveliness", lambda: log.read_text(errors="replace")[-3000:])


def _when_listening(server: LiteLLM, probe: str, output: Callable[[], str]) -> LiteLLM:
    """``server`` once ``probe`` answers 200 (any status for ``""``); its output if it exits or never does."""
    deadline = time.monotonic() + LOAD_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.proc.args!r} exited with {server.proc.returncode}:\n{output()}")
        with contextlib.suppress(httpx.TransportError):
            status = httpx.get(f"{server.url}{probe}", timeout=5, headers=AUTH).status_code
            if status == 200 or not probe:
                return server
        time.sleep(0.2)
    stop_process(server.proc)
    raise TimeoutError(f"{server.proc.args!r} not ready:\n{output()}")


def start_floor(direct: dict[str, str]) -> LiteLLM:
    """``bench.floor_proxy`` in front of the standalone runtimes: the least a proxy costs here."""
    port = free_port()
    cmd = [sys.executable, "-m", "bench.floor_proxy", str(port), *(f"{m}={u}" for m, u in direct.items())]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, start_new_session=True)
    return _when_listening(LiteLLM(f"http://127.0.0.1:{port}", proc), "", lambda: "")


def own_runtimes(serve: ServeProcess) -> dict[str, str]:
    """The router's own runtimes, called on their TCP ports: the baseline that differs from the
    router by the hop alone (the standalone runtimes are other processes, whose speed differs
    from these by a few tenths of a millisecond from start to start)."""
    urls: dict[str, str] = {}
    for name in MODELS:
        pids = serve.runtime_pids(name)
        if len(pids) != 1:
            raise RuntimeError(f"expected one runtime of {name} under llmi serve, found {pids}")
        args = runtime_args(pids[0])
        urls[name] = f"http://127.0.0.1:{args[args.index('--port') + 1]}"
    return urls


def stop_serve(serve: ServeProcess, keep: set[int]) -> None:
    """Stop `llmi serve`; SIGKILL any of its runtimes that outlived it."""
    serve.stop()
    for pid in set(serve.runtime_pids()) - keep:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            print(f"router_bench: killed a leftover runtime (pid {pid})", file=sys.stderr)


# --------------------------------------------------------------------------- report

# The table's rows: (label, key in summarize()'s row, unit).
FIGURES: list[tuple[str, str, str]] = [
    *((f"{label} C=1 p{p}", f"{kind}_p{p}_ms", "ms") for kind, label in SEQ for p in (50, 99)),
    *((f"{label} C={{c}} p{p}", f"{kind}_c_p{p}_ms", "ms") for kind, label in SEQ for p in (50, 99)),
    *((f"{label} C=1", f"{kind}_seq_c_req_s", "req/s") for kind, label in SEQ),
    *((f"{label} C={{c}}", f"{kind}_c_req_s", "req/s") for kind, label in SEQ),
    (f"stream {STREAM_TOKENS} tokens TTFT p50", "stream_ttft_p50_ms", "ms"),
    (f"stream {STREAM_TOKENS} tokens total p50", "stream_total_p50_ms", "ms"),
]


def paired(base: Row, proxy: Row, key: str) -> Row:
    """For a p50 figure, the median over rounds of each round's difference: the two batches of a
    round ran minutes apart at most, so the machine's drift between rounds cancels out of it."""
    rounds = f"{key}_by_round"
    if rounds not in base or rounds not in proxy:
        return {}
    return {"paired_added_ms": statistics.median(r - d for d, r in zip(base[rounds], proxy[rounds], strict=True))}


def compare(rows: dict[str, Row], concurrency: int) -> dict[str, dict[str, Row]]:
    """Per proxy and figure: both values, proxy/direct, and the added ms (per request for req/s).
    "router vs own" sets the router against its own runtimes, the others against direct."""
    out: dict[str, dict[str, Row]] = {}
    pairs = [(name, "direct") for name in rows if name not in ("direct", "own")]
    if "own" in rows:
        pairs.insert(1, ("router", "own"))
    for proxy, base in pairs:
        table: dict[str, Row] = {}
        for label, key, unit in FIGURES:
            d, r = rows[base][key], rows[proxy][key]
            added = 1000 / r - 1000 / d if unit == "req/s" else r - d
            table[label.format(c=concurrency)] = {
                "unit": unit,
                "direct": d,
                proxy: r,
                "ratio": r / d,
                "added_ms": added,
                **paired(rows[base], rows[proxy], key),
            }
        cpu = rows[proxy]["cpu_ms_per_request"]
        table["proxy CPU per request"] = {"unit": "ms", "direct": 0.0, proxy: cpu, "ratio": math.nan, "added_ms": cpu}
        for c in (1, concurrency):  # apart: one at a time, every request wakes the proxy on its own
            cpu = rows[proxy].get(f"cpu_ms_per_request_c{c}", math.nan)
            table[f"proxy CPU per request (C={c})"] = {
                "unit": "ms",
                "direct": 0.0,
                proxy: cpu,
                "ratio": math.nan,
                "added_ms": cpu,
            }
        cpu = rows[proxy]["cpu_ms_per_stream"]
        label = f"proxy CPU per stream of {STREAM_TOKENS} tokens"
        table[label] = {"unit": "ms", "direct": 0.0, proxy: cpu, "ratio": math.nan, "added_ms": cpu}
        out[proxy if base == "direct" else f"{proxy} vs {base}"] = table
    return out


def print_table(result: dict[str, Any]) -> None:
    c = result["config"]
    print(
        f"llmi router bench: OMP_NUM_THREADS={c['threads']} for every runtime, {c['seconds_per_batch']:g} s of wrk per "
        f"batch and target ({c['streams']} streams) in {c['rounds']} alternating rounds, "
        f"concurrency={c['concurrency']}, cpus={c['cpus']}, placement={c['placement']}"
    )
    for name, figures in result["figures"].items():
        proxy, _, base = name.partition(" vs ")
        base = base or "direct"
        print(f"\n{'figure':50} {'unit':>6} {base:>9} {proxy:>9} {proxy + '/' + base:>15} {'added ms':>9}")
        for label, f in figures.items():
            pair = f" (paired {f['paired_added_ms']:+.2f})" if "paired_added_ms" in f else ""
            print(
                f"  {label:48} {f['unit']:>6} {f['direct']:9.2f} {f[proxy]:9.2f} {f['ratio']:14.2f}x "
                f"{f['added_ms']:+9.2f}{pair}"
            )
    check = result["checks"]
    print(
        f"\nstreamed text identical on both sides: {'yes' if check['same_stream_text'] else 'NO'}; "
        f"completion tokens per stream: {check['stream_tokens']}"
    )
    print(
        "added ms = proxy - direct; for req/s rows, the added wall time per request (1000/rate); "
        "paired: the median over rounds of each round's difference."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.router_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, help="where the tiny models are (built there if missing)")
    parser.add_argument("--seconds", type=int, default=2, help="seconds of wrk per batch (default 2)")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent clients for req/s (default 16)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating direct/router rounds (default 5)")
    parser.add_argument("--streams", type=int, default=40, help="streamed chats per target (default 40)")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every runtime (default 1)")
    parser.add_argument("--litellm", type=Path, default=LITELLM, help="LiteLLM's proxy command (skipped if absent)")
    parser.add_argument("--quick", action="store_true", help="a short run: 1 s batches, 6 streams, 2 rounds")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.streams, args.rounds = 1, 6, 2
    if args.streams < args.rounds or min(args.rounds, args.concurrency, args.threads, args.seconds) < 1:
        parser.error("--streams must be at least --rounds, and every count at least 1")
    if shutil.which("wrk") is None:
        parser.error("wrk is not installed (Debian: apt-get install wrk)")
    # SIGTERM unwinds like Ctrl-C, so the ExitStack below stops every process.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    transformers.utils.logging.disable_progress_bar()

    env = runtime_env(OMP_NUM_THREADS=str(args.threads), LLM_LOG_LEVEL="WARNING", LLM_AUTO_UNLOAD_MODELS="false")
    with tempfile.TemporaryDirectory(prefix="llmi-router-bench-") as tmp, contextlib.ExitStack() as stack:
        root = args.model_dir or Path(tmp) / "models"
        folders = ensure_models(root)
        body = bodies(eos_id(folders[CHAT_MODEL]))
        print(f"router_bench: OMP_NUM_THREADS={args.threads}; starting llmi serve on {root}", file=sys.stderr)

        direct: dict[str, RuntimeProcess] = {}
        serve = start_serve(root, Path(tmp), "--cpu-memory-gb", "64", env=env)
        stack.callback(lambda: stop_serve(serve, {r.proc.pid for r in direct.values()}))
        try:
            models = warm_router(serve, body)
            own = own_runtimes(serve)  # before the standalone runtimes, which live in the same folder
            # Standalone runtimes started exactly as the router started its own.
            for name in MODELS:
                flags = ("--type", models[name]["type"], "--placement", models[name]["placement"])
                direct[name] = start_runtime(folders[name], Path(tmp), *flags, name=name, env=env, wait=False)
                stack.callback(direct[name].stop)
            for runtime in direct.values():
                wait_ready(runtime)
            print("router_bench: router warm, runtimes ready; measuring", file=sys.stderr)
            urls = {
                "direct": {n: r.url for n, r in direct.items()},
                "router": dict.fromkeys(MODELS, serve.url),
                "own": own,
            }
            pids: dict[str, int | None] = {"router": serve.proc.pid}
            floor = start_floor(urls["direct"])
            stack.callback(lambda: stop_process(floor.proc))
            urls["floor"] = dict.fromkeys(MODELS, floor.url)
            pids["floor"] = floor.proc.pid
            if args.litellm.exists():
                proxy = start_litellm(args.litellm, urls["direct"], Path(tmp))
                stack.callback(lambda: stop_process(proxy.proc))
                urls["litellm"] = dict.fromkeys(MODELS, proxy.url)
                pids["litellm"] = proxy.proc.pid
            rows = asyncio.run(measure(urls, pids, body, args))
        except Exception:
            print(f"router_bench: failed; end of the llmi serve log:\n{serve.output()[-4000:]}", file=sys.stderr)
            raise

    result: dict[str, Any] = {
        "config": {
            "threads": args.threads,
            "seconds_per_batch": args.seconds,
            "streams": args.streams,
            "rounds": args.rounds,
            "concurrency": args.concurrency,
            "cpus": os.cpu_count(),
            "placement": ",".join(sorted({str(models[n]["placement"]) for n in MODELS})),
        },
        "figures": compare(rows, args.concurrency),
        "checks": {
            "same_stream_text": len({t for r in rows.values() for t in r["stream_texts"]}) == 1,
            "stream_tokens": sorted({t for r in rows.values() for t in r["stream_tokens"]}),
        },
        "raw": rows,
    }
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
