"""Start real `llmi runtime` processes for tests and wait until they are ready."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from llmi_router.embedded.process import free_port

READY_DEADLINE_S = 180.0


def stop_process(proc: subprocess.Popen[bytes], grace_s: float = 60) -> int:
    """SIGTERM, then SIGKILL of the whole group after the grace period; the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return int(proc.returncode)


def runtime_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_")}
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
        LLM_LOG_LEVEL="INFO",
        # No spare runtime warming up beside each test's server (two cores); its tests ask for one.
        LLM_SPARE_RUNTIME="false",
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
        return stop_process(self.proc, grace_s=30)


def spawn_llmi(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """`python -m llmi.cli ARGS` in its own process group, output to ``log``."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "llmi.cli", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env or runtime_env(),
            start_new_session=True,
        )


def poll_ready(url: str, proc: subprocess.Popen[bytes], log: Path, deadline_s: float = READY_DEADLINE_S) -> None:
    """Poll ``url``/readyz until 200; fail at once if the process exits, or after the deadline."""
    deadline = time.monotonic() + deadline_s
    with httpx.Client(timeout=5) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"process exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
            try:
                if client.get(f"{url}/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
    stop_process(proc)
    raise TimeoutError(f"not ready in {deadline_s}s:\n{log.read_text(errors='replace')}")


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
    cmd = ["runtime", "--model", str(folder), "--name", name, "--host", "127.0.0.1", "--port", str(port), *args]
    runtime = RuntimeProcess(name, f"http://127.0.0.1:{port}", spawn_llmi(cmd, log, env), log)
    if wait:
        wait_ready(runtime)
    return runtime


def wait_ready(runtime: RuntimeProcess, deadline_s: float = READY_DEADLINE_S) -> None:
    poll_ready(runtime.url, runtime.proc, runtime.log, deadline_s)


def wait_gone(pid: int, deadline_s: float = 60) -> bool:
    """True once ``pid`` has exited (its pidfd turns readable), False if it is still alive after the deadline."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([pidfd], [], [], deadline_s)[0])
    finally:
        os.close(pidfd)
