"""Start `llmi serve` as a real process for end-to-end tests, and find its runtimes."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.servers import free_port, poll_ready, spawn_llmi, stop_process


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
                args = runtime_args(int(entry.name))
            except OSError:
                continue
            ours = "runtime" in args and any(a.startswith(str(self.models_dir)) for a in args)
            named = model is None or ("--name" in args and args[args.index("--name") + 1] == model)
            if ours and named:
                pids.append(int(entry.name))
        return pids

    def stop(self) -> int:
        return stop_process(self.proc)


def runtime_args(pid: int) -> list[str]:
    """A process's arguments, word by word: forked runtimes carry theirs in one process title
    ("llmi runtime --model ...")."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    return [word for a in argv for word in a.decode(errors="replace").split(" ")]


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
    cmd = ["serve", "--models-dir", str(models_dir), "--host", "127.0.0.1", "--port", str(port), *args]
    serve = ServeProcess(f"http://127.0.0.1:{port}", spawn_llmi(cmd, log, env), log, models_dir)
    poll_ready(serve.url, serve.proc, log, deadline_s=120)
    return serve
