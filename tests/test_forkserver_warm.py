"""What the fork server imports for a model before forking its runtime (in this process: no fork)."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

from llmi_runtime.forkserver import model_modules, warm_for


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
