"""One command for a machine with an NVIDIA GPU: what only a GPU can show, in under 10 minutes.

    scripts/gpu-check.sh [--device cuda|cpu] [--models a,b] [--deadline-s 540] [--json FILE]

For a tiny model of every type it starts real `llmi runtime` processes with the gpu and offload
placements and checks: outputs match a CPU runtime's (parity), the memory the runtime reports
(``memory`` of /v1/health) against the device's own per-process figure (nvidia-smi) and torch's
allocator, and parking: switching back from host memory (/admin/park, /admin/wake) against a
cold load of the same model. With vLLM importable it serves a chat model through `llmi serve` on
vLLM's engine. It prints a summary and exits 1 if a check failed. ``--device cpu`` runs the same
flow with cpu placements, which is how CI tests it.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "router"), str(ROOT / "runtime")]

import httpx  # noqa: E402

from tests.servers import RuntimeProcess, runtime_env, start_runtime  # noqa: E402

CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "temperature": 0}
MODELS = {
    "tiny-llama-chat": ("/v1/chat/completions", CHAT),
    "tiny-bert-embed": ("/v1/embeddings", {"input": ["a sentence", "another one"]}),
    "tiny-bert-reranker": ("/v1/rerank", {"query": "q", "documents": ["one", "two", "three"]}),
    "tiny-vit": ("/v1/vision/encode", {"images": ["IMAGE"]}),
    "tiny-clip": ("/v1/multimodal/encode", {"texts": ["a cat"], "images": ["IMAGE"]}),
}
PARITY_ATOL = 1e-3  # float32 checkpoints stay float32 on the GPU; TF32 matmuls differ in the 4th digit
MEMORY_TOLERANCE = 0.10


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""
    figures: dict[str, Any] = field(default_factory=dict)


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    def add(self, name: str, ok: bool, detail: str = "", **figures: Any) -> None:
        self.checks.append(Check(name, ok, detail, figures))
        print(f"[{'PASS' if ok else 'FAIL'}] {name} {detail}", flush=True)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


def facts() -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.cuda.is_available()}
    smi = shutil.which("nvidia-smi")
    if smi:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            query = [smi, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"]
            out["nvidia_smi"] = subprocess.run(query, capture_output=True, text=True, timeout=10).stdout.strip()
    out["vllm"] = importlib.util.find_spec("vllm") is not None
    return out


def png_b64() -> str:
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 200, 90)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def body_for(model: str, image: str) -> tuple[str, dict[str, Any]]:
    path, body = MODELS[model]
    return path, {"model": model, **json.loads(json.dumps(body).replace('"IMAGE"', json.dumps(image)))}


def answer(url: str, model: str, image: str) -> dict[str, Any]:
    path, body = body_for(model, image)
    response = httpx.post(f"{url}{path}", json=body, timeout=300)
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


def numbers(result: Any) -> list[float]:
    """Every float in an answer, in order (embeddings, scores, similarity matrices)."""
    if isinstance(result, float):
        return [result]
    if isinstance(result, dict):
        return [x for key in sorted(result) if key not in ("usage", "created", "id") for x in numbers(result[key])]
    if isinstance(result, list):
        return [x for item in result for x in numbers(item)]
    return []


def max_abs_diff(a: Any, b: Any) -> float:
    xs, ys = numbers(a), numbers(b)
    if len(xs) != len(ys):
        return float("inf")
    return max((abs(x - y) for x, y in zip(xs, ys, strict=True)), default=0.0)


def smi_process_bytes(pid: int) -> int | None:
    """Device memory nvidia-smi attributes to ``pid`` (None without nvidia-smi or the pid)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    with contextlib.suppress(OSError, subprocess.SubprocessError, ValueError):
        query = [smi, "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"]
        out = subprocess.run(query, capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            got_pid, used = (x.strip() for x in line.split(","))
            if int(got_pid) == pid:
                return int(used) * 2**20
    return None


def pss_bytes(pid: int) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    return None


def health(url: str) -> dict[str, Any]:
    result: dict[str, Any] = httpx.get(f"{url}/v1/health", timeout=30).json()
    return result


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def check_model(report: Report, folder: Path, logs: Path, device: str, image: str) -> None:
    name = folder.name
    env = runtime_env()
    cpu = start_runtime(folder, logs, "--device", "cpu", name=name, env=env)
    try:
        reference = answer(cpu.url, name, image)
    finally:
        cpu.stop()
    placements = ("gpu", "offload") if device == "cuda" else ("cpu",)
    for placement in placements:
        extra = ["--device", device, "--placement", placement]
        if placement == "offload":
            extra += ["--max-gpu-memory", str(2**20)]  # a tiny GPU share: most layers go to the CPU
        cold_s, runtime = timed(lambda extra=extra: start_runtime(folder, logs, *extra, name=name, env=env))
        try:
            first_s, result = timed(lambda rt=runtime: answer(rt.url, name, image))
            diff = max_abs_diff(result, reference)
            report.add(f"{name}/{placement} parity", diff <= PARITY_ATOL, f"max abs diff {diff:.2e}", diff=diff)
            check_memory(report, runtime, name, placement)
            if placement == "gpu":
                check_parking(report, runtime, name, image, cold_s + first_s)
        finally:
            runtime.stop()


def check_memory(report: Report, runtime: RuntimeProcess, name: str, placement: str) -> None:
    memory = health(runtime.url).get("memory") or {}
    measured = memory.get("measured_bytes")
    pid = runtime.proc.pid
    truth = smi_process_bytes(pid) if placement != "cpu" else pss_bytes(pid)
    source = "nvidia-smi" if placement != "cpu" else "PSS"
    if not measured or not truth:
        report.add(f"{name}/{placement} memory", False, f"no figure (measured {measured}, {source} {truth})")
        return
    error = abs(measured - truth) / truth
    report.add(
        f"{name}/{placement} memory",
        error <= MEMORY_TOLERANCE,
        f"reported {measured / 2**20:.0f} MiB vs {source} {truth / 2**20:.0f} MiB ({error:.0%})",
        measured=measured,
        truth=truth,
    )


def check_parking(report: Report, runtime: RuntimeProcess, name: str, image: str, cold_s: float) -> None:
    parked = httpx.post(f"{runtime.url}/admin/park", timeout=300)
    if parked.status_code != 200:
        report.add(f"{name} parking", False, f"park answered {parked.status_code}")
        return
    residue = (parked.json().get("memory") or {}).get("gpu_bytes")

    def wake_and_answer() -> None:
        httpx.post(f"{runtime.url}/admin/wake", timeout=300).raise_for_status()
        answer(runtime.url, name, image)

    switch_s, _ = timed(wake_and_answer)
    report.add(
        f"{name} parking",
        switch_s < cold_s,
        f"switch back {switch_s:.2f}s vs cold load {cold_s:.2f}s ({switch_s / cold_s:.2f}x); parked residue "
        f"{(residue or 0) / 2**20:.0f} MiB",
        switch_s=switch_s,
        cold_s=cold_s,
        residue_bytes=residue,
    )


def check_vllm(report: Report, folder: Path, logs: Path) -> None:
    """A chat model through `llmi serve` on vLLM's engine (when vLLM is importable)."""
    from tests.serve_process import start_serve

    models = logs / "vllm-models"
    models.mkdir()
    shutil.copytree(folder, models / folder.name)
    serve = start_serve(models, logs, env=runtime_env())
    try:
        cards = httpx.get(f"{serve.url}/v1/models", timeout=30).json()["data"]
        t, result = timed(lambda: answer(serve.url, folder.name, ""))
        engine = next(c.get("engine") for c in cards if c["id"] == folder.name)
        ok = engine == "vllm" and bool(result.get("choices"))
        report.add("vllm engine", ok, f"engine {engine}, first answer in {t:.1f}s")
    finally:
        serve.stop()


def run(args: argparse.Namespace) -> Report:
    from tests.tiny_models import BUILDERS

    report = Report(facts=facts())
    print(json.dumps(report.facts), flush=True)
    if args.device == "cuda" and not report.facts["cuda"]:
        report.add("cuda", False, "torch sees no CUDA device")
        return report
    deadline = time.monotonic() + args.deadline_s
    image = png_b64()
    with tempfile.TemporaryDirectory(prefix="llmi-gpu-check-") as tmp:
        work = Path(tmp)
        for name in args.models:
            if time.monotonic() > deadline:
                report.add(name, False, "skipped: past the deadline")
                continue
            folder = BUILDERS[name](work / name)
            try:
                check_model(report, folder, work, args.device, image)
            except Exception as exc:  # a failed start is a failed check, not a crash of the run
                report.add(name, False, f"{type(exc).__name__}: {exc}"[:300])
        if report.facts["vllm"] and args.device == "cuda" and time.monotonic() < deadline:
            try:
                check_vllm(report, BUILDERS["tiny-llama-chat"](work / "vllm-llama"), work)
            except Exception as exc:
                report.add("vllm engine", False, f"{type(exc).__name__}: {exc}"[:300])
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated tiny model names")
    parser.add_argument("--deadline-s", type=float, default=540.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    unknown = set(args.models) - set(MODELS)
    if unknown:
        parser.error(f"unknown models: {', '.join(sorted(unknown))}")
    report = run(args)
    passed = sum(c.ok for c in report.checks)
    print(f"\ngpu-check: {passed} passed, {len(report.checks) - passed} failed")
    if args.json:
        args.json.write_text(
            json.dumps({"facts": report.facts, "checks": [c.__dict__ for c in report.checks]}, indent=2)
        )
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
