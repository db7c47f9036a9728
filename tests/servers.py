"""Start real `llmi runtime` processes for tests and wait until they are ready."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

READY_DEADLINE_S = 180.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def runtime_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_")}
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
        LLM_LOG_LEVEL="INFO",
    )
    env.update(extra)
    return env


@dataclass
class RuntimeProcess:
    name: str
    url: str
    proc: subprocess.Popen[bytes]
    log: Path
    started: float = field(default_factory=time.monotonic)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return int(self.proc.returncode)


def start_runtime(
    folder: Path,
    log_dir: Path,
    *args: str,
    name: str | None = None,
    env: dict[str, str] | None = None,
    wait: bool = True,
) -> RuntimeProcess:
    port = free_port()
    name = name or folder.name
    log = log_dir / f"{name}-{port}.log"
    cmd = [
        sys.executable,
        "-m",
        "llmi.cli",
        "runtime",
        "--model",
        str(folder),
        "--name",
        name,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *args,
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env or runtime_env(), start_new_session=True
        )
    runtime = RuntimeProcess(name, f"http://127.0.0.1:{port}", proc, log)
    if wait:
        wait_ready(runtime)
    return runtime


def wait_ready(runtime: RuntimeProcess, deadline_s: float = READY_DEADLINE_S) -> None:
    """Poll /readyz until 200; fail at once if the process exits."""
    deadline = time.monotonic() + deadline_s
    with httpx.Client(timeout=5) as client:
        while time.monotonic() < deadline:
            if runtime.proc.poll() is not None:
                raise RuntimeError(f"runtime exited with {runtime.proc.returncode}:\n{runtime.output()}")
            try:
                if client.get(f"{runtime.url}/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
    runtime.stop()
    raise TimeoutError(f"runtime not ready in {deadline_s}s:\n{runtime.output()}")
