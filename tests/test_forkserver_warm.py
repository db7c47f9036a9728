"""What the fork server imports for a model before forking its runtime (in this process: no fork)."""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path

import pytest

from llmi_runtime import rehearsal
from llmi_runtime.engines.base import LoadOptions
from llmi_runtime.forkserver import checkpoint_keys, model_modules, warm_for, warm_renames


def test_a_models_own_modules_are_named_and_imported(tiny_models: dict[str, Path]) -> None:
    names = model_modules(tiny_models["tiny-llama-chat"])
    assert "transformers.models.llama.modeling_llama" in names
    assert "transformers.models.llama.configuration_llama" in names
    assert all(name.startswith("transformers.models.llama.") for name in names)
    threads = threading.active_count()
    warm_for(["--model", str(tiny_models["tiny-llama-chat"]), "--name", "x"])
    assert all(name in sys.modules for name in names)
    assert threading.active_count() == threads  # importing them started no thread: forking stays safe


def test_folders_that_name_no_known_model_type_warm_nothing(tmp_path: Path) -> None:
    assert model_modules(tmp_path) == []  # no config.json
    (tmp_path / "config.json").write_text("[1, 2]")
    assert model_modules(tmp_path) == []
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "../../etc"}))
    assert model_modules(tmp_path) == []
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "no_such_architecture_here"}))
    assert model_modules(tmp_path) == []
    warm_for(["--name", "x", "--model"])  # a malformed command line is the child's to reject


def test_a_checkpoints_tensor_names_are_read_from_its_headers(tiny_models: dict[str, Path]) -> None:
    from safetensors.torch import load_file

    folder = tiny_models["tiny-llama-chat"]
    keys = checkpoint_keys(folder)
    assert keys
    assert sorted(keys) == sorted(load_file(folder / "model.safetensors"))
    assert checkpoint_keys(folder.parent) == []  # a folder without weights has none
    threads = threading.active_count()
    warm_renames(folder)
    assert threading.active_count() == threads


def test_a_cpu_load_copies_tensors_in_order_unless_the_user_chose(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_DEACTIVATE_ASYNC_LOAD", raising=False)
    LoadOptions(device="cpu").prepare_process()
    assert os.environ["HF_DEACTIVATE_ASYNC_LOAD"] == "1"
    monkeypatch.setenv("HF_DEACTIVATE_ASYNC_LOAD", "0")
    LoadOptions(device="cpu").prepare_process()
    assert os.environ["HF_DEACTIVATE_ASYNC_LOAD"] == "0"


def test_the_rehearsal_model_is_built_once_loaded_and_can_be_cut_short(tmp_path: Path) -> None:
    if rehearsal.NVIDIA_DRIVER.exists():
        pytest.skip("the rehearsal is skipped where an NVIDIA driver is present")
    assert rehearsal.load(tmp_path / "a", stop=lambda: True) is False
    assert not (tmp_path / "a").exists(), "asked to stop first, it builds nothing"
    assert rehearsal.load(tmp_path) is True
    built = sorted(p.name for p in (tmp_path / "model").iterdir())
    assert "modules.json" in built
    assert "model.safetensors" in built
    assert [p.name for p in tmp_path.iterdir()] == ["model"], "nothing half-built is left beside it"
    asked: list[bool] = []

    def stop_after_the_load() -> bool:  # asked before the load, then between load and embedding
        asked.append(True)
        return len(asked) == 2

    assert rehearsal.load(tmp_path, stop=stop_after_the_load) is False
    assert len(asked) == 2
