"""`llmi models` and `llmi pull` as real processes; nothing here reaches the network."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from llmi import cli
from llmi.catalog import measured
from llmi.catalog.estimate import FORKED_BASELINE_BYTES, PROCESS_BASELINE_BYTES
from llmi.hardware import forks_runtimes, gpu_memory_bytes, host_memory_bytes
from llmi.settings import Settings
from tests.fake_models import small_chat_model
from tests.servers import free_port, runtime_env

GIB = 1024**3
MIB = 1024**2
ROOT = Path(__file__).resolve().parent.parent
KEYS = {
    "name",
    "type",
    "path",
    "memory_bytes",
    "memory_estimated_bytes",
    "memory_measured_bytes",
    "placement",
    "problems",
}


def fake_nvidia_smi(folder: Path, script: str) -> Path:
    """A stand-in nvidia-smi first on PATH, so GPU detection is the same on every machine."""
    folder.mkdir(exist_ok=True)
    smi = folder / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\n{script}\n")
    smi.chmod(0o755)
    return folder


def run_llmi(*args: str, bin_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = runtime_env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", **env)
    return subprocess.run(
        [sys.executable, "-m", "llmi.cli", *args],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
        check=False,
        cwd=ROOT,
    )


@pytest.fixture
def no_gpu(tmp_path: Path) -> Path:
    return fake_nvidia_smi(tmp_path / "bin", "exit 9")


@pytest.fixture
def models(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    small_chat_model(root / "small-chat")
    small_chat_model(root / "org" / "nested-chat", hidden=128)
    (root / "no-config").mkdir()
    return root


def test_json_lists_models_and_problems_with_exactly_the_documented_keys(models: Path, no_gpu: Path) -> None:
    out = run_llmi("models", "--json", "--models-dir", str(models), bin_dir=no_gpu)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert all(set(row) == KEYS for row in rows)
    by_name = {row["name"]: row for row in rows}
    assert set(by_name) == {"small-chat", "org/nested-chat", "no-config"}
    small = by_name["small-chat"]
    assert small["type"] == "chat"
    assert small["placement"] == "cpu"
    assert small["problems"] == []
    assert small["path"] == str(models / "small-chat")
    # Nothing measured yet: the planner counts the estimate, which includes the process baseline.
    baseline = FORKED_BASELINE_BYTES if forks_runtimes(Settings()) else PROCESS_BASELINE_BYTES["cpu"]
    assert small["memory_bytes"] == small["memory_estimated_bytes"] > baseline
    assert small["memory_measured_bytes"] is None
    assert by_name["no-config"] == {
        "name": "no-config",
        "type": None,
        "path": str(models / "no-config"),
        "memory_bytes": None,
        "memory_estimated_bytes": None,
        "memory_measured_bytes": None,
        "placement": None,
        "problems": ["no config.json"],
    }


def test_table_shows_models_budget_and_problems(models: Path, no_gpu: Path) -> None:
    out = run_llmi("models", "--models-dir", str(models), bin_dir=no_gpu, LLM_CPU_MEMORY_BUDGET_GB="3")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "budget: 3.0 GiB of host memory"
    assert lines[1].split() == ["NAME", "TYPE", "MEMORY", "ESTIMATED", "MEASURED", "PLACEMENT", "PATH"]
    row = next(line for line in lines if line.startswith("small-chat "))
    assert row.split()[1] == "chat"
    assert row.split()[2].isdigit()
    assert row.split()[3] == "MiB"
    assert row.split()[2:4] == row.split()[4:6]  # memory is the estimate while nothing is measured
    assert row.split()[6] == "-"
    assert row.split()[-2:] == ["cpu", str(models / "small-chat")]
    assert "problems:" in lines
    assert f"  no-config ({models / 'no-config'}): no config.json" in lines


def test_measured_memory_from_the_state_dir_is_shown_beside_the_estimate(
    models: Path, no_gpu: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    store = measured.MeasuredStore().with_(models / "small-chat", "cpu", "cpu", 700 * MIB, at=1.0)
    measured.save(store, state / measured.FILE_NAME)
    args = ("models", "--models-dir", str(models))
    rows = json.loads(run_llmi(*args, "--json", bin_dir=no_gpu, LLM_STATE_DIR=str(state)).stdout)
    small = next(row for row in rows if row["name"] == "small-chat")
    assert small["memory_measured_bytes"] == small["memory_bytes"] == 700 * MIB
    assert small["memory_estimated_bytes"] < 700 * MIB
    nested = next(row for row in rows if row["name"] == "org/nested-chat")
    assert nested["memory_measured_bytes"] is None
    table = run_llmi(*args, bin_dir=no_gpu, LLM_STATE_DIR=str(state)).stdout.splitlines()
    row = next(line for line in table if line.startswith("small-chat ")).split()
    assert row[2:4] == ["700", "MiB"]
    assert row[6:8] == ["700", "MiB"]
    # New weights in the folder are a new model: the old measurement no longer applies.
    small_chat_model(models / "small-chat", hidden=96)
    rows = json.loads(run_llmi(*args, "--json", bin_dir=no_gpu, LLM_STATE_DIR=str(state)).stdout)
    small = next(row for row in rows if row["name"] == "small-chat")
    assert small["memory_measured_bytes"] is None


def test_gpu_memory_gb_plans_as_if_a_gpu_existed(models: Path, no_gpu: Path) -> None:
    (models / "small-chat" / "llmi.yaml").write_text("memory: 15GiB\n")
    out = run_llmi("models", "--json", "--gpu-memory-gb", "8", "--models-dir", str(models), bin_dir=no_gpu)
    by_name = {row["name"]: row for row in json.loads(out.stdout)}
    assert by_name["small-chat"]["memory_bytes"] == 15 * GIB
    assert by_name["small-chat"]["placement"] == "offload"
    assert by_name["org/nested-chat"]["placement"] == "gpu"
    table = run_llmi("models", "--gpu-memory-gb", "8", "--models-dir", str(models), bin_dir=no_gpu)
    assert table.stdout.splitlines()[0] == "budget: 6.4 GiB of GPU, offload above 4.0 GiB"


def test_a_model_that_cannot_fit_is_listed_with_the_reason(models: Path, no_gpu: Path) -> None:
    (models / "small-chat" / "llmi.yaml").write_text("memory: 15GiB\n")
    out = run_llmi(
        "models",
        "--json",
        "--gpu-memory-gb",
        "8",
        "--models-dir",
        str(models),
        bin_dir=no_gpu,
        LLM_ENABLE_GPU_MEMORY_OFFLOAD="false",
    )
    row = next(row for row in json.loads(out.stdout) if row["name"] == "small-chat")
    assert row["type"] == "chat"
    assert row["placement"] is None
    assert row["problems"] == ["needs 15.0 GiB, the GPU budget is 6.4 GiB and offload is disabled"]


def test_detected_gpu_sets_the_budget(models: Path, tmp_path: Path) -> None:
    gpu = fake_nvidia_smi(tmp_path / "gpu-bin", "echo 4096; echo 81559")
    out = run_llmi("models", "--models-dir", str(models), bin_dir=gpu)
    assert out.stdout.splitlines()[0] == "budget: 3.2 GiB of GPU, offload above 4.0 GiB"


def test_hf_cache_flag_with_and_without_a_folder(tmp_path: Path, no_gpu: Path) -> None:
    cache = tmp_path / "hub"
    small_chat_model(cache / "models--Org--Cached" / "snapshots" / "rev")
    (tmp_path / "models").mkdir()
    base = ("models", "--json", "--models-dir", str(tmp_path / "models"))
    explicit = run_llmi(*base, "--hf-cache", str(cache), bin_dir=no_gpu)
    assert [row["name"] for row in json.loads(explicit.stdout)] == ["Org/Cached"]
    default = run_llmi(*base, "--hf-cache", bin_dir=no_gpu, HF_HUB_CACHE=str(cache))
    assert [row["name"] for row in json.loads(default.stdout)] == ["Org/Cached"]
    without = run_llmi(*base, bin_dir=no_gpu, HF_HUB_CACHE=str(cache))
    assert json.loads(without.stdout) == []


def test_missing_models_dir_exits_nonzero_with_the_reason(tmp_path: Path, no_gpu: Path) -> None:
    out = run_llmi("models", "--models-dir", str(tmp_path / "nope"), bin_dir=no_gpu)
    assert out.returncode == 1
    assert "not a directory" in out.stdout


def test_gpu_memory_gb_must_be_positive(no_gpu: Path) -> None:
    out = run_llmi("models", "--gpu-memory-gb", "0", bin_dir=no_gpu)
    assert out.returncode == 2
    assert "not a positive number" in out.stderr


def test_hardware_detection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(fake_nvidia_smi(tmp_path / "a", "echo 81559; echo 1")))
    assert gpu_memory_bytes() == 81559 * MIB
    monkeypatch.setenv("PATH", str(fake_nvidia_smi(tmp_path / "b", "echo 'No devices were found'")))
    assert gpu_memory_bytes() is None
    monkeypatch.setenv("PATH", str(fake_nvidia_smi(tmp_path / "c", "exit 1")))
    assert gpu_memory_bytes() is None
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert gpu_memory_bytes() is None
    assert host_memory_bytes() > 256 * MIB


def test_shared_modules_stay_light() -> None:
    code = (
        "import sys, llmi.cli, llmi.catalog.scan, llmi.catalog.estimate, llmi.planner, llmi.hardware\n"
        "llmi.cli.build_parser()\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'kubernetes', "
        "'huggingface_hub', 'safetensors', 'numpy'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


# --- llmi pull ----------------------------------------------------------------------------


@pytest.mark.parametrize("repo_id", ["../x", "/abs/path", "a/b/c", "a/../b", "org/..", "", "_x", "a b", "org--x/y"])
def test_pull_rejects_bad_repo_ids(repo_id: str, tmp_path: Path, no_gpu: Path) -> None:
    out = run_llmi("pull", repo_id, "--models-dir", str(tmp_path), bin_dir=no_gpu)
    assert out.returncode == 2
    assert "is not a repo id" in out.stderr
    assert list(tmp_path.iterdir()) == [no_gpu]


@pytest.mark.parametrize("name", ["../x", "a//b", ".hidden", "a/.."])
def test_pull_rejects_bad_names(name: str, tmp_path: Path, no_gpu: Path) -> None:
    out = run_llmi("pull", "org/repo", "--name", name, "--models-dir", str(tmp_path), bin_dir=no_gpu)
    assert out.returncode == 2
    assert "is not a valid model name" in out.stderr


def test_pull_refuses_a_non_empty_target(tmp_path: Path, no_gpu: Path) -> None:
    target = tmp_path / "models" / "repo"
    target.mkdir(parents=True)
    (target / "keep.txt").write_text("mine")
    out = run_llmi("pull", "org/repo", "--models-dir", str(tmp_path / "models"), bin_dir=no_gpu)
    assert out.returncode == 1
    assert out.stderr.strip() == f"llmi pull: {target} exists and is not empty (use --force to download into it)"
    assert (target / "keep.txt").read_text() == "mine"


def test_pull_offline_fails_with_one_clear_line(tmp_path: Path, no_gpu: Path) -> None:
    out = run_llmi("pull", "org/repo", "--models-dir", str(tmp_path / "models"), bin_dir=no_gpu, HF_HUB_OFFLINE="1")
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        "llmi pull: cannot download org/repo: HF_HUB_OFFLINE is set, so the Hub is out of reach"
    ]
    assert not (tmp_path / "models" / "repo").exists()


def test_pull_with_force_keeps_existing_files_when_the_hub_is_out_of_reach(tmp_path: Path, no_gpu: Path) -> None:
    target = tmp_path / "models" / "repo"
    target.mkdir(parents=True)
    (target / "keep.txt").write_text("mine")
    out = run_llmi(
        "pull",
        "org/repo",
        "--force",
        "--models-dir",
        str(tmp_path / "models"),
        bin_dir=no_gpu,
        HF_HUB_OFFLINE="1",
    )
    assert out.returncode == 1
    assert "HF_HUB_OFFLINE is set" in out.stderr
    assert (target / "keep.txt").read_text() == "mine"


def test_pull_reports_an_unreachable_hub(tmp_path: Path, no_gpu: Path) -> None:
    # A closed local port: the connection is refused without anything leaving the machine.
    endpoint = f"http://127.0.0.1:{free_port()}"
    out = run_llmi(
        "pull",
        "org/repo",
        "--models-dir",
        str(tmp_path / "models"),
        bin_dir=no_gpu,
        HF_HUB_OFFLINE="0",
        HF_ENDPOINT=endpoint,
        HF_HOME=str(tmp_path / "hf-home"),
    )
    assert out.returncode == 1
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("llmi pull: cannot download org/repo: ")
    assert "Connect" in line
    assert not (tmp_path / "models" / "repo").exists()


def test_pull_downloads_into_the_models_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []

    def snapshot_download(repo_id: str, *, revision: str | None, local_dir: Path) -> str:
        calls.append({"repo_id": repo_id, "revision": revision, "local_dir": local_dir})
        local_dir.mkdir(parents=True)
        return str(local_dir)

    def repo_info(self: object, repo_id: str, *, revision: str | None) -> None:
        asked.append((repo_id, revision))

    import huggingface_hub
    from huggingface_hub import constants

    asked: list[tuple[str, str | None]] = []
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # never the real Hub
    monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", repo_info)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    models = tmp_path / "models"
    assert cli.main(["pull", "Qwen/Qwen2.5-0.5B", "--models-dir", str(models)]) == 0
    assert cli.main(["pull", "Qwen/Qwen2.5-0.5B", "--models-dir", str(models), "--name", "qwen/small"]) == 0
    assert cli.main(["pull", "gpt2", "--models-dir", str(models), "--revision", "v1"]) == 0
    assert calls == [
        {"repo_id": "Qwen/Qwen2.5-0.5B", "revision": None, "local_dir": models / "Qwen2.5-0.5B"},
        {"repo_id": "Qwen/Qwen2.5-0.5B", "revision": None, "local_dir": models / "qwen" / "small"},
        {"repo_id": "gpt2", "revision": "v1", "local_dir": models / "gpt2"},
    ]
    assert asked == [("Qwen/Qwen2.5-0.5B", None), ("Qwen/Qwen2.5-0.5B", None), ("gpt2", "v1")]
