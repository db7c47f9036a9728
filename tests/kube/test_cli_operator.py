"""`llmi operator`: the subcommand, its settings, and the package importing from anywhere."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import kopf
import pytest

from llmi.cli import COMPONENTS, build_parser
from llmi.settings import Settings
from llmi_operator.handlers import configure
from llmi_operator.main import operator_settings
from llmi_operator.settings import OperatorSettings


def test_subcommand_is_lazy_and_parses_its_options() -> None:
    assert COMPONENTS["operator"][:2] == ("llmi_operator.main", "run_operator")
    args = build_parser().parse_args(["operator", "--namespace", "models", "--liveness", "http://0.0.0.0:8080/healthz"])
    assert (args.namespace, args.standalone, args.liveness) == ("models", True, "http://0.0.0.0:8080/healthz")
    assert build_parser().parse_args(["operator", "--no-standalone"]).standalone is False


def test_settings_come_from_the_contracts_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LLMI_NAMESPACE", "from-env")
    monkeypatch.setenv("LLMI_NODE_BUDGET_GB", "16")
    monkeypatch.setenv("LLMI_GPU_MODE", "exclusive")
    monkeypatch.setenv("LLM_GPU_MEMORY_OFFLOAD_THRESHOLD_GB", "6")
    args = build_parser().parse_args(["operator", "--models-dir", str(tmp_path)])
    config = operator_settings(args, Settings())
    assert (config.namespace, config.models_dir, config.gpu_mode) == ("from-env", tmp_path, "exclusive")
    assert config.node_budget_bytes == 16 * 1024**3
    assert config.offload_gpu_gb == 6  # the chart's offload threshold, unless LLMI_OFFLOAD_GPU_GB says otherwise
    monkeypatch.setenv("LLMI_OFFLOAD_GPU_GB", "2")
    assert operator_settings(args, Settings()).offload_gpu_gb == 2
    assert operator_settings(build_parser().parse_args(["operator", "--namespace", "x"]), Settings()).namespace == "x"


def test_the_package_imports_outside_the_repository() -> None:
    done = subprocess.run([sys.executable, "-c", "import llmi_operator.handlers, operator; operator.add"], cwd="/")
    assert done.returncode == 0


def test_kopf_settings_leave_peering_to_the_command_line() -> None:
    """--standalone/--no-standalone reach kopf.run; the startup hook must not override them."""
    for standalone in (True, False):
        kopf_settings = kopf.OperatorSettings()
        kopf_settings.peering.standalone = standalone  # what kopf.run(standalone=...) set before startup
        configure(kopf_settings, OperatorSettings())
        assert kopf_settings.peering.standalone is standalone
        assert kopf_settings.persistence.finalizer == "llmi.dev/operator"
