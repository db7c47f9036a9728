"""Start `llmi serve` as a real process for end-to-end tests, and find its runtimes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.servers import free_port, runtime_env


@dataclass
class ServeProcess:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path
    models_dir: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def runtime_pids(self, model: str | None = None) -> list[int]:
        """Runtime processes serving models from this server's folder."""
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            args = [a.decode(errors="replace") for a in argv]
            ours = "runtime" in args and any(a.startswith(str(self.models_dir)) for a in args)
            named = model is None or ("--name" in args and args[args.index("--name") + 1] == model)
            if ours and named:
                pids.append(int(entry.name))
        return pids

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return int(self.proc.returncode)


def model_folder(tiny_models: dict[str, Path], root: Path, names: list[str], memory: str | None = None) -> Path:
    """Copy tiny models into a fresh models folder, optionally with an llmi.yaml memory override."""
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        target = root / name
        shutil.copytree(tiny_models[name], target)
        if memory is not None:
            (target / "llmi.yaml").write_text(f"memory: {memory}\n")
    return root


def start_serve(models_dir: Path, log_dir: Path, *args: str, env: dict[str, str] | None = None) -> ServeProcess:
    port = free_port()
    log = log_dir / f"serve-{port}.log"
    cmd = [
        sys.executable,
        "-m",
        "llmi.cli",
        "serve",
        "--models-dir",
        str(models_dir),
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
    serve = ServeProcess(f"http://127.0.0.1:{port}", proc, log, models_dir)
    deadline = time.monotonic() + 120
    with httpx.Client(timeout=5) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"llmi serve exited with {proc.returncode}:\n{serve.output()}")
            try:
                if client.get(f"{serve.url}/readyz").status_code == 200:
                    return serve
            except httpx.TransportError:
                pass
            time.sleep(0.1)
    serve.stop()
    raise TimeoutError(f"llmi serve did not start:\n{serve.output()}")
