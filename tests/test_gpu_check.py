"""scripts/gpu-check.sh's CPU-side pieces: the same flow with cpu placements, and its comparisons."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "gpu_check.py"


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module
    spec.loader.exec_module(module)
    return module


def test_answers_are_compared_number_by_number() -> None:
    gpu_check = load()
    a = {"data": [{"embedding": [0.1, 0.2]}], "usage": {"prompt_tokens": 3}}
    assert gpu_check.max_abs_diff(a, {"data": [{"embedding": [0.1, 0.2005]}], "usage": {"prompt_tokens": 9}}) == (
        pytest.approx(0.0005)
    )
    assert gpu_check.max_abs_diff(a, {"data": [{"embedding": [0.1]}]}) == float("inf")


@pytest.mark.slow
def test_the_cpu_flow_runs_end_to_end_and_reports(tmp_path: Path) -> None:
    gpu_check = load()
    out = tmp_path / "report.json"
    code = gpu_check.main(["--device", "cpu", "--models", "tiny-bert-embed", "--json", str(out)])
    report = json.loads(out.read_text())
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["tiny-bert-embed/cpu parity"]["ok"]
    assert checks["tiny-bert-embed/cpu parity"]["figures"]["diff"] == 0.0
    memory = checks["tiny-bert-embed/cpu memory"]
    assert memory["ok"], memory["detail"]  # the runtime's PSS report against /proc
    assert code == 0
    assert report["facts"]["cuda"] is False
