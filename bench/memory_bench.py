"""Memory truth: the catalog's estimate, the runtime's measured figure and what the OS (or the GPU
driver) says, for each model, one lone `llmi runtime` at a time (issue 8, acceptance 4).

Run from the repository root:

    python -m bench.memory_bench [--model-dir DIR] [--model FOLDER ...] [--device cpu|cuda] [--json]

Without ``--model`` the tiny test models are built (under ``--model-dir`` if given, and reused).
For each model: the estimate made before any load (``llmi.catalog.scan.describe`` for the device
kind), then a runtime is started and, once ready and idle, ``memory`` from its /v1/health is set
beside PSS and its anonymous part from /proc/PID/smaps_rollup and RSS. With ``--device cuda`` it
also reads the process's GPU memory from ``nvidia-smi`` and times ``POST /admin/park`` and
``/admin/wake`` against the cold load, and reports what the parked process still holds.
Targets: measured within 10% of PSS (CPU) or of nvidia-smi (GPU); estimate within 25% of it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import httpx

from llmi.catalog.scan import describe
from llmi.settings import Settings
from tests.servers import runtime_env, start_runtime
from tests.tiny_models import BUILDERS

MIB = 1024 * 1024


def rollup(pid: int) -> dict[str, int]:
    """smaps_rollup's fields in bytes."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        fields[key] = int(value.split()[0]) * 1024
    return fields


def smi_used(pid: int) -> int | None:
    """The GPU memory nvidia-smi attributes to ``pid``, or None."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0] == str(pid) and parts[1].isdigit():
            return int(parts[1]) * MIB
    return None


def measure_one(folder: Path, device: str, logs: Path) -> dict[str, Any]:
    settings = Settings()
    entry = describe(folder, folder.name, settings.vllm_max_model_len, "cuda" if device == "cuda" else "cpu")
    rt = start_runtime(folder, logs, "--device", device, env=runtime_env())
    try:
        health = httpx.get(f"{rt.url}/v1/health", timeout=30).json()
        proc = rollup(rt.proc.pid)
        memory = health["memory"]
        truth = proc["Pss"] if device == "cpu" else (smi_used(rt.proc.pid) or 0)
        row: dict[str, Any] = {
            "model": folder.name,
            "type": entry.type.value,
            "estimate_bytes": entry.estimate.total_bytes,
            "measured_bytes": memory["measured_bytes"],
            "truth_bytes": truth,
            "truth": "PSS" if device == "cpu" else "nvidia-smi",
            "pss_bytes": proc["Pss"],
            "pss_anon_bytes": proc.get("Pss_Anon"),
            "rss_bytes": proc["Rss"],
            "gpu_context_bytes": memory["gpu_context_bytes"],
            "load_seconds": health["load_seconds"],
        }
        if device == "cuda":
            t0 = time.perf_counter()
            parked = httpx.post(f"{rt.url}/admin/park", timeout=120).json()
            row["park_seconds"] = time.perf_counter() - t0
            row["parked_measured_bytes"] = parked["memory"]["measured_bytes"]
            row["parked_smi_bytes"] = smi_used(rt.proc.pid)
            t0 = time.perf_counter()
            httpx.post(f"{rt.url}/admin/wake", timeout=120).raise_for_status()
            row["wake_seconds"] = time.perf_counter() - t0
        return row
    finally:
        rt.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, help="build (or reuse) the tiny models here")
    parser.add_argument("--model", type=Path, action="append", default=[], help="a model folder (repeatable)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folders: list[Path] = list(args.model)
        if not folders:
            root = args.model_dir or Path(tmp) / "models"
            for name, build in BUILDERS.items():
                folders.append(root / name if (root / name / "config.json").is_file() else build(root / name))
        rows = [measure_one(folder.resolve(), args.device, Path(tmp)) for folder in folders]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    for r in rows:
        truth = r["truth_bytes"] or 1
        line = (
            f"{r['model']:<24} {r['type']:<10} estimate {r['estimate_bytes'] / MIB:7.0f} MiB "
            f"({r['estimate_bytes'] / truth - 1:+4.0%})  measured {r['measured_bytes'] / MIB:7.0f} "
            f"({r['measured_bytes'] / truth - 1:+4.0%})  {r['truth']} {truth / MIB:7.0f}  "
            f"RSS {r['rss_bytes'] / MIB:5.0f}  load {r['load_seconds']:.2f}s"
        )
        if "park_seconds" in r:
            line += (
                f"  park {r['park_seconds']:.3f}s wake {r['wake_seconds']:.3f}s, "
                f"parked holds {r['parked_measured_bytes'] / MIB:.0f} MiB"
            )
        print(line)


if __name__ == "__main__":
    main()
