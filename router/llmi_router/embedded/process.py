"""Runtime child processes: spawn on a loopback port, wait for readiness, stop cleanly.

Each runtime runs in its own process group and is told to die with its parent (Linux), so
neither a crash nor a SIGKILL of `llmi serve` leaves model processes behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from llmi_router.embedded.launch import RuntimeSpec

log = logging.getLogger("llmi.supervisor")
EXIT_LOAD_FAILED = 3


class StartFailed(Exception):
    """The runtime exited or did not become ready in time; the message says why."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class RuntimeHandle:
    name: str
    port: int
    proc: asyncio.subprocess.Process
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=40))
    reader: asyncio.Task[None] | None = None
    exited: asyncio.Task[int] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reason(self) -> str:
        """The last meaningful line the runtime printed, for error messages."""
        for line in reversed(self.tail):
            if "llmi runtime:" in line or "Error" in line or "failed" in line:
                return line.strip()[-500:]
        return self.tail[-1].strip()[-500:] if self.tail else "no output"

    async def stop(self, grace_s: float = 10.0) -> int:
        """SIGTERM the process group, SIGKILL after the grace period, reap. Idempotent."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), grace_s)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                await self.proc.wait()
        else:
            # The runtime is gone; make sure nothing it started survives it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        if self.reader is not None:
            await asyncio.wait({self.reader}, timeout=2)
        return int(self.proc.returncode or 0)


def runtime_command(
    name: str, path: Path, model_type: str, placement: str, max_gpu_memory: int | None, port: int
) -> list[str]:
    """``llmi runtime`` for one model on a loopback port."""
    cmd = [sys.executable, "-m", "llmi.cli", "runtime", "--model", str(path), "--name", name, "--type", model_type]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--placement", placement]
    if max_gpu_memory:
        cmd += ["--max-gpu-memory", str(max_gpu_memory)]
    return cmd


async def spawn_runtime(
    name: str, path: Path, model_type: str, placement: str, max_gpu_memory: int | None, env: dict[str, str]
) -> RuntimeHandle:
    port = free_port()
    return await spawn_process(
        name, runtime_command(name, path, model_type, placement, max_gpu_memory, port), port, env
    )


async def spawn_process(name: str, cmd: list[str], port: int, env: dict[str, str]) -> RuntimeHandle:
    """Start ``cmd`` (a server that will listen on ``port``) in its own process group."""
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
        start_new_session=True,
        preexec_fn=_die_with_parent if sys.platform == "linux" else None,
    )
    handle = RuntimeHandle(name, port, proc)
    handle.reader = asyncio.create_task(_relay(handle))
    handle.exited = asyncio.create_task(proc.wait())
    return handle


async def _relay(handle: RuntimeHandle) -> None:
    """Forward the runtime's output to our log, keeping the tail for error messages."""
    assert handle.proc.stdout is not None
    child = logging.getLogger(f"llmi.runtime.{handle.name}")
    async for raw in handle.proc.stdout:
        line = raw.decode(errors="replace").rstrip()
        if line:
            handle.tail.append(line)
            child.info("%s", line)


async def wait_ready(
    handle: RuntimeHandle, deadline_s: float, client: httpx.AsyncClient, path: str = "/readyz"
) -> float:
    """Poll ``path`` until 200; fail early when the process exits. Returns seconds taken."""
    t0 = time.monotonic()
    delay = 0.05
    while True:
        if handle.proc.returncode is not None:
            await asyncio.wait({handle.reader} if handle.reader else set(), timeout=2)
            code = handle.proc.returncode
            what = "could not load the model" if code == EXIT_LOAD_FAILED else f"exited with code {code}"
            raise StartFailed(f"runtime {what}: {handle.reason()}")
        with contextlib.suppress(httpx.TransportError):
            if (await client.get(f"{handle.url}{path}", timeout=2)).status_code == 200:
                return time.monotonic() - t0
        if time.monotonic() - t0 > deadline_s:
            raise StartFailed(f"runtime was not ready after {deadline_s:.0f}s")
        # Wait for the process to exit or the next poll, whichever is first.
        assert handle.exited is not None
        await asyncio.wait({handle.exited}, timeout=delay)
        delay = min(delay * 1.5, 0.5)


async def measure(url: str, client: httpx.AsyncClient) -> int | None:
    """The runtime's own report of the memory it holds (``memory.measured_bytes``)."""
    try:
        body = (await client.get(f"{url}/v1/health", timeout=5)).json()
    except (httpx.HTTPError, ValueError):
        return None
    value = (body.get("memory") or {}).get("measured_bytes") if isinstance(body, dict) else None
    return value if isinstance(value, int) and value > 0 else None


async def park(url: str, client: httpx.AsyncClient) -> int | None:
    """Ask the runtime to move its weights to host memory; what it keeps on the GPU."""
    response = await client.post(f"{url}/admin/park", timeout=120)
    response.raise_for_status()
    memory = response.json().get("memory") or {}
    value = memory.get("gpu_bytes")
    return value if isinstance(value, int) else None


async def wake(url: str, client: httpx.AsyncClient) -> None:
    response = await client.post(f"{url}/admin/wake", timeout=120)
    response.raise_for_status()


class ProcessLauncher:
    """Starts real `llmi runtime` processes (the supervisor's default launcher)."""

    def __init__(self) -> None:
        self._client = httpx.AsyncClient()

    async def start(self, spec: RuntimeSpec) -> RuntimeHandle:
        return await spawn_runtime(
            spec.name, spec.path, spec.model_type, spec.placement, spec.max_gpu_memory, dict(spec.env)
        )

    async def wait_ready(self, handle: RuntimeHandle, deadline_s: float) -> float:
        return await wait_ready(handle, deadline_s, self._client)

    async def measure(self, handle: RuntimeHandle) -> int | None:
        return await measure(handle.url, self._client)

    async def park(self, handle: RuntimeHandle) -> int | None:
        return await park(handle.url, self._client)

    async def wake(self, handle: RuntimeHandle) -> None:
        await wake(handle.url, self._client)

    def reserved_bytes(self) -> int:
        return 0

    async def close(self) -> None:
        await self._client.aclose()
