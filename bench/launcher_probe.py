"""Which warm launcher: time start() -> ready of a tiny model, cold vs fork server vs spare runtime.

Run from the repository root (the runtime extra installed):

    python -m bench.launcher_probe [--model-dir DIR] [--repeats R] [--threads T] [--json]

Each candidate runs the same switch loop R times over two models (tiny-bert-embed, then
tiny-llama-chat): start, wait for /readyz, one request, stop — as a one-model budget does. Timed
is start() -> ready, which is what a switch costs beyond the stop:

- ``cold``: `ProcessLauncher`, a fresh `llmi runtime` interpreter per model;
- ``fork``: `WarmLauncher`, forked from the pre-imported fork server (ready before the loop);
- ``spare``: a runtime process started ahead that imported everything and waits for its model on
  stdin (``--spare`` below); the next spare starts (at nice 10) as soon as one is handed a model, so
  a quick switch may wait for it — the realistic cadence;
- ``spare-ahead``: the same, but each start waits (untimed) until the next spare is ready: the
  best case, a switch that comes long after the previous one.

Also printed: the PSS (from /proc) of a ready runtime for each candidate, and of the fork server.
R=2 took 2 min 15 s on two loaded cores (R=1 about half); tiny models show the start-up cost, which
is what differs between the candidates, not the load of real weights.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
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

from llmi_router.embedded.forkclient import pss_bytes
from llmi_router.embedded.process import ProcessLauncher, RuntimeHandle, free_port, runtime_argv
from llmi_router.embedded.warm import WarmLauncher

MODELS = (("tiny-bert-embed", "embedding"), ("tiny-llama-chat", "chat"))
Start = Callable[[str, Path, str], Awaitable[RuntimeHandle]]


def spare_main() -> int:
    """The spare runtime: import everything, say so, then become the runtime named on stdin."""
    from llmi_runtime.forkserver import preload

    os.nice(10)
    preload()
    print("spare ready", flush=True)
    argv = json.loads(sys.stdin.readline())
    os.setpriority(os.PRIO_PROCESS, 0, 0)
    from llmi.cli import main

    return main(["runtime", *argv])


class Spares:
    """One spare ahead at a time; taking it starts the next."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.next: asyncio.Task[asyncio.subprocess.Process] = asyncio.create_task(self._spawn())

    async def _spawn(self) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            *[sys.executable, "-m", "bench.launcher_probe", "--spare"],
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
        )
        assert proc.stdout is not None
        while (line := await proc.stdout.readline()) and b"spare ready" not in line:
            pass
        return proc

    async def start(self, name: str, path: Path, model_type: str) -> RuntimeHandle:
        proc = await self.next
        self.next = asyncio.create_task(self._spawn())
        port = free_port()
        assert proc.stdin is not None
        assert proc.stdout is not None
        proc.stdin.write(json.dumps(runtime_argv(name, path, model_type, "cpu", None, port)).encode() + b"\n")
        await proc.stdin.drain()
        handle = RuntimeHandle(name, port, proc.pid, asyncio.ensure_future(proc.wait()))
        handle.relay(proc.stdout)
        return handle

    async def close(self) -> None:
        proc = await self.next
        proc.kill()
        await proc.wait()


async def switch_loop(start: Start, models: dict[str, Path], repeats: int, before: Callable[[], Awaitable[Any]]) -> Row:
    waiter = ProcessLauncher()
    times: dict[str, list[float]] = {name: [] for name, _ in MODELS}
    pss: dict[str, int] = {}
    async with httpx.AsyncClient(timeout=60) as client:
        for _ in range(repeats):
            for name, model_type in MODELS:
                await before()
                t0 = time.perf_counter()
                handle = await start(name, models[name], model_type)
                await waiter.wait_ready(handle, 120)
                times[name].append(time.perf_counter() - t0)
                await _one_request(client, handle, name, model_type)
                pss[name] = pss_bytes(handle.pid)
                await handle.stop(10)
    await waiter.close()
    return {
        name: {"median_s": statistics.median(t), "min_s": min(t), "pss_mib": pss[name] / 2**20}
        for name, t in times.items()
    }


Row = dict[str, Any]


async def _one_request(client: httpx.AsyncClient, handle: RuntimeHandle, name: str, model_type: str) -> None:
    if model_type == "chat":
        body = {"model": name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        r = await client.post(f"{handle.url}/v1/chat/completions", json=body)
    else:
        r = await client.post(f"{handle.url}/v1/embeddings", json={"model": name, "input": "hi"})
    r.raise_for_status()


async def probe(models: dict[str, Path], repeats: int, env: dict[str, str]) -> Row:
    async def nothing() -> None:
        return None

    cold = ProcessLauncher()
    results: Row = {}

    async def cold_start(name: str, path: Path, model_type: str) -> RuntimeHandle:
        return await cold.start(name, path, model_type, "cpu", None, env)

    results["cold"] = await switch_loop(cold_start, models, repeats, nothing)
    await cold.close()

    warm = WarmLauncher(env)
    t0 = time.perf_counter()
    server_pid = await warm.warm()
    results["fork_server"] = {"ready_s": time.perf_counter() - t0, "pss_mib": warm.reserved_bytes() / 2**20}
    assert server_pid is not None, "the fork server did not start"

    async def fork_start(name: str, path: Path, model_type: str) -> RuntimeHandle:
        return await warm.start(name, path, model_type, "cpu", None, env)

    results["fork"] = await switch_loop(fork_start, models, repeats, nothing)
    results["fork_server"]["pss_after_mib"] = warm.reserved_bytes() / 2**20
    await warm.close()

    spares = Spares(env)
    results["spare"] = await switch_loop(spares.start, models, repeats, nothing)

    async def spare_ready() -> None:
        await asyncio.shield(spares.next)

    results["spare-ahead"] = await switch_loop(spares.start, models, repeats, spare_ready)
    await spares.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spare", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help="build the tiny models here and reuse them (default: temp)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the runtimes")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.spare:
        return spare_main()
    from tests.servers import runtime_env
    from tests.tiny_models import build_all

    with contextlib.ExitStack() as stack:
        root = args.model_dir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        built = all((root / n).is_dir() for n, _ in MODELS)
        models = {n: root / n for n, _ in MODELS} if built else build_all(root)
        env = runtime_env(OMP_NUM_THREADS=str(args.threads), LLM_LOG_LEVEL="WARNING")
        env["PYTHONPATH"] = os.pathsep.join(sys.path)
        results = asyncio.run(probe(models, args.repeats, env))
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"start() -> ready, median (min) over {args.repeats} starts, and the ready runtime's PSS")
    for candidate in ("cold", "fork", "spare", "spare-ahead"):
        cells = [
            f"{name} {row['median_s']:.2f}s ({row['min_s']:.2f}s) {row['pss_mib']:.0f}MiB"
            for name, row in results[candidate].items()
        ]
        print(f"  {candidate:<12} " + "   ".join(cells))
    server = results["fork_server"]
    print(
        f"  fork server: ready in {server['ready_s']:.1f}s, PSS {server['pss_mib']:.0f} MiB "
        f"({server['pss_after_mib']:.0f} MiB after its children)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
