"""Runtime child processes: spawn on a loopback port, wait for readiness, stop cleanly.

Each runtime runs in its own process group and tells the kernel to kill it when its parent dies
(``llmi_runtime.lifeline``, called by the runtime itself), so neither a crash nor a SIGKILL of
`llmi serve` leaves model processes behind. The handle, the output relay and the readiness poll
here serve the cold launcher below and the warm one (``warm.py``) alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from llmi_router.embedded.launch import RuntimeSpec

log = logging.getLogger("llmi.supervisor")
EXIT_LOAD_FAILED = 3
READY_WAIT_S = 10.0  # one long poll of the runtime's /readyz


class StartFailed(Exception):
    """The runtime exited or did not become ready in time; the message says why."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def runtime_argv(
    name: str,
    path: Path,
    model_type: str,
    placement: str,
    max_gpu_memory: int | None,
    port: int,
    socket_path: str | None = None,
) -> list[str]:
    """The arguments of `llmi runtime` for one model, whichever launcher starts it."""
    argv = ["--model", str(path), "--name", name, "--type", model_type]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--placement", placement]
    if max_gpu_memory:
        argv += ["--max-gpu-memory", str(max_gpu_memory)]
    if socket_path is not None:
        argv += ["--uds", socket_path]
    return argv


class SocketDir:
    """A private folder for the runtimes' Unix sockets (the front relays requests through them:
    half the CPU of loopback TCP), made on first use and removed at close. The port names each
    socket: a runtime started later on the same port replaces the file a killed one left."""

    MAX_PATH = 100  # a Unix socket's path has at most 107 bytes

    def __init__(self) -> None:
        self._path: Path | None = None

    def for_port(self, port: int) -> str | None:
        if self._path is None:
            self._path = Path(tempfile.mkdtemp(prefix="llmi-runtimes-"))
        found = str(self._path / f"{port}.sock")
        return found if len(found) <= self.MAX_PATH else None  # a long TMPDIR: TCP only

    def remove(self) -> None:
        if self._path is not None:
            shutil.rmtree(self._path, ignore_errors=True)
            self._path = None


@dataclass
class RuntimeHandle:
    """A started runtime: its process group leader, its output and a future of its exit code."""

    name: str
    port: int
    pid: int
    exited: asyncio.Future[int]
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=40))
    reader: asyncio.Task[None] | None = None
    socket: str | None = None  # the Unix socket it also listens on (``--uds``)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def relay(self, output: asyncio.StreamReader) -> None:
        self.reader = asyncio.create_task(_relay(self, output))

    def reason(self) -> str:
        """The last meaningful line the runtime printed, for error messages."""
        for line in reversed(self.tail):
            if "llmi runtime:" in line or "Error" in line or "failed" in line:
                return line.strip()[-500:]
        return self.tail[-1].strip()[-500:] if self.tail else "no output"

    def kill(self) -> None:
        if not self.exited.done():
            _killpg(self.pid, signal.SIGKILL)

    async def stop(self, grace_s: float = 10.0) -> int:
        """SIGTERM the process group, SIGKILL after the grace period (at once for none), wait for
        the exit. Idempotent."""
        if not self.exited.done() and grace_s <= 0:
            _killpg(self.pid, signal.SIGKILL)
            await asyncio.shield(self.exited)
        elif not self.exited.done():
            _killpg(self.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(self.exited), grace_s)
            except TimeoutError:
                _killpg(self.pid, signal.SIGKILL)
                await asyncio.shield(self.exited)
        else:
            # The runtime is gone; make sure nothing it started survives it.
            _killpg(self.pid, signal.SIGKILL)
        if self.reader is not None:
            await asyncio.wait({self.reader}, timeout=2)
        return self.exited.result()


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def _relay(handle: RuntimeHandle, output: asyncio.StreamReader) -> None:
    """Forward the runtime's output to our log, keeping the tail for error messages."""
    child = logging.getLogger(f"llmi.runtime.{handle.name}")
    async for raw in output:
        line = raw.decode(errors="replace").rstrip()
        if line:
            handle.tail.append(line)
            child.info("%s", line)


async def spawn_runtime(
    name: str,
    path: Path,
    model_type: str,
    placement: str,
    max_gpu_memory: int | None,
    env: dict[str, str],
    sockets: SocketDir | None = None,
) -> RuntimeHandle:
    """A fresh `llmi runtime` interpreter (the cold start: it imports torch itself)."""
    port = free_port()
    socket_path = sockets.for_port(port) if sockets is not None else None
    argv = runtime_argv(name, path, model_type, placement, max_gpu_memory, port, socket_path)
    cmd = [sys.executable, "-m", "llmi.cli", "runtime", *argv, "--parent-pid", str(os.getpid())]
    return await spawn_process(name, cmd, port, env, socket_path)


def with_lifeline(cmd: list[str]) -> list[str]:
    """``cmd`` started through the runtime's lifeline, for servers that cannot set it themselves
    (vLLM): it sets PR_SET_PDEATHSIG, then execs ``cmd``, which keeps it."""
    return [sys.executable, "-m", "llmi_runtime.lifeline", str(os.getpid()), *cmd]


async def spawn_process(
    name: str, cmd: list[str], port: int, env: dict[str, str], socket_path: str | None = None
) -> RuntimeHandle:
    """Start ``cmd`` (a server that will listen on ``port``, and on ``socket_path`` if given) in
    its own process group."""
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    handle = RuntimeHandle(name, port, proc.pid, asyncio.ensure_future(proc.wait()), socket=socket_path)
    assert proc.stdout is not None
    handle.relay(proc.stdout)
    return handle


async def wait_ready(
    handle: RuntimeHandle, deadline_s: float, client: httpx.AsyncClient, path: str = "/readyz"
) -> float:
    """Wait until ``path`` answers 200; fail early when the process exits. Returns seconds taken.

    The runtime holds ``/readyz?wait=S`` until its load ends, so once it listens this learns of
    readiness the moment it happens; a server that ignores ``wait`` (vLLM's ``/health``) is polled
    with a growing delay."""
    t0 = time.monotonic()
    delay = 0.01
    while True:
        if handle.exited.done():
            await asyncio.wait({handle.reader} if handle.reader else set(), timeout=2)
            code = handle.exited.result()
            what = "could not load the model" if code == EXIT_LOAD_FAILED else f"exited with code {code}"
            raise StartFailed(f"runtime {what}: {handle.reason()}")
        left = deadline_s - (time.monotonic() - t0)
        if left <= 0:
            raise StartFailed(f"runtime was not ready after {deadline_s:.0f}s")
        wait = min(READY_WAIT_S, left)
        asked = time.monotonic()
        params = {"wait": f"{wait:.3f}"}
        poll = asyncio.ensure_future(client.get(f"{handle.url}{path}", params=params, timeout=wait + 5))
        try:
            # The process exiting ends the wait too: a crash mid-load is not noticed a poll later.
            either: set[asyncio.Future[Any]] = {poll, handle.exited}
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not poll.done():
                poll.cancel()
                await asyncio.wait({poll})
        if poll.cancelled():
            continue
        with contextlib.suppress(httpx.TransportError):
            if poll.result().status_code == 200:
                return time.monotonic() - t0
        if time.monotonic() - asked < wait / 2:
            # Not listening yet, or a server that answered at once: wait for the exit or the next poll.
            await asyncio.wait({handle.exited}, timeout=delay)
            delay = min(delay * 1.5, 0.2)


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


class RuntimeClient:
    """What a launcher asks of a started runtime over its HTTP API: readiness, memory, park, wake."""

    def __init__(self) -> None:
        self._client = httpx.AsyncClient()
        self.sockets = SocketDir()

    async def wait_ready(self, handle: RuntimeHandle, deadline_s: float) -> float:
        return await wait_ready(handle, deadline_s, self._client)

    async def measure(self, handle: RuntimeHandle) -> int | None:
        return await measure(handle.url, self._client)

    async def park(self, handle: RuntimeHandle) -> int | None:
        return await park(handle.url, self._client)

    async def wake(self, handle: RuntimeHandle) -> None:
        await wake(handle.url, self._client)

    def on_shift(self, notify: Callable[[], None]) -> None:
        pass  # separate interpreters share nothing worth measuring again

    def spare_state(self) -> str | None:
        return None

    async def close(self) -> None:
        await self._client.aclose()
        self.sockets.remove()


class ProcessLauncher(RuntimeClient):
    """Starts a fresh `llmi runtime` interpreter per model (the fallback when runtimes are not warm)."""

    async def start(self, spec: RuntimeSpec) -> RuntimeHandle:
        return await spawn_runtime(
            spec.name, spec.path, spec.model_type, spec.placement, spec.max_gpu_memory, dict(spec.env), self.sockets
        )

    def reserved_bytes(self) -> int:
        return 0
