"""Model type detection from folder contents."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmi.catalog.classify import NotAModel, detect_type
from llmi.modeltypes import ModelType
from tests.tiny_models import TINY_TYPES


def test_tiny_models_are_classified(tiny_models: dict[str, Path]) -> None:
    expected = {name: ModelType(kind) for name, kind in TINY_TYPES.items()}
    assert {name: detect_type(path) for name, path in tiny_models.items()} == expected


def folder(tmp_path: Path, name: str, config: dict | None = None, **files: str) -> Path:
    path = tmp_path / name
    path.mkdir()
    if config is not None:
        (path / "config.json").write_text(json.dumps(config))
    for file, text in files.items():
        (path / file.replace("__", ".")).write_text(text)
    return path


def test_llmi_yaml_overrides_type(tmp_path: Path) -> None:
    path = folder(tmp_path, "m", {"architectures": ["LlamaForCausalLM"]}, llmi__yaml="type: embedding\n")
    assert detect_type(path) is ModelType.EMBEDDING


@pytest.mark.parametrize(
    ("name", "config", "expected"),
    [
        ("Qwen3-Reranker-0.6B", {"architectures": ["Qwen3ForCausalLM"]}, ModelType.RERANKER),
        ("Qwen2.5-7B-Instruct-AWQ", {"architectures": ["Qwen2ForCausalLM"]}, ModelType.CHAT),
        ("bge-reranker", {"architectures": ["XLMRobertaForSequenceClassification"]}, ModelType.RERANKER),
        ("dinov3-vitl16", {"model_type": "dinov3_vit"}, ModelType.VISION),
        ("siglip", {"model_type": "siglip"}, ModelType.MULTIMODAL),
        ("e5", {"model_type": "bert", "architectures": ["BertModel"]}, ModelType.EMBEDDING),
    ],
)
def test_classification_rules(tmp_path: Path, name: str, config: dict, expected: ModelType) -> None:
    assert detect_type(folder(tmp_path, name, config)) is expected


@pytest.mark.parametrize(
    ("config_text", "yaml", "reason"),
    [
        (None, None, "no config.json"),
        ("{not json", None, "unreadable"),
        ("[1]", None, "not a JSON object"),
        ('{"model_type": "mystery"}', None, "cannot tell"),
        ('{"model_type": "bert"}', "type: banana", "not one of"),
        ('{"model_type": "bert"}', "- a list", "must be a mapping"),
    ],
)
def test_unusable_folders_say_why(tmp_path: Path, config_text: str | None, yaml: str | None, reason: str) -> None:
    path = tmp_path / "m"
    path.mkdir()
    if config_text is not None:
        (path / "config.json").write_text(config_text)
    if yaml is not None:
        (path / "llmi.yaml").write_text(yaml)
    with pytest.raises(NotAModel, match=reason):
        detect_type(path)
