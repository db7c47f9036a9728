"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = ["tests.runtime_fixtures"]

# Tests must never reach a model hub; set before transformers/huggingface_hub are imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every tiny model, built once per session (about 1-2 s on two CPU cores)."""
    # Imported here so test runs without torch (control-plane only) still collect.
    from tests.tiny_models import build_all

    return build_all(tmp_path_factory.mktemp("models"))
