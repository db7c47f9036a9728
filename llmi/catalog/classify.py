"""Decide a folder's model type from its files.

Order of evidence: an explicit ``llmi.yaml`` type, sentence-transformers configs, the
architecture in ``config.json``, image-processor configs, and only last the folder name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from llmi.modeltypes import ModelType

VISION_MODEL_TYPES = {
    "vit",
    "dinov2",
    "dinov2_with_registers",
    "dinov3_vit",
    "dinov3_convnext",
    "deit",
    "beit",
    "convnext",
    "convnextv2",
    "swin",
    "swinv2",
    "vit_msn",
    "vit_mae",
    "data2vec-vision",
    "hiera",
    "efficientnet",
    "mobilevit",
    "regnet",
    "resnet",
    "levit",
    "pvt",
    "pvt_v2",
    "timm_wrapper",
}
MULTIMODAL_MODEL_TYPES = {"clip", "siglip", "siglip2", "chinese_clip", "altclip", "metaclip_2", "blip"}
ENCODER_MODEL_TYPES = {
    "bert",
    "roberta",
    "xlm-roberta",
    "distilbert",
    "mpnet",
    "electra",
    "deberta",
    "deberta-v2",
    "modernbert",
    "nomic_bert",
    "new",
    "camembert",
    "albert",
}


class NotAModel(ValueError):
    """The folder cannot be served; the message says why."""


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise NotAModel(f"{path.name} is unreadable: {exc}") from None
    if not isinstance(data, dict):
        raise NotAModel(f"{path.name} is not a JSON object")
    return data


def read_overrides(folder: Path) -> dict[str, Any]:
    """The folder's ``llmi.yaml`` (or ``llmi.yml``), or {}."""
    for name in ("llmi.yaml", "llmi.yml"):
        path = folder / name
        if path.is_file():
            try:
                data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            except (OSError, yaml.YAMLError) as exc:
                raise NotAModel(f"{name} is unreadable: {exc}") from None
            if not isinstance(data, dict):
                raise NotAModel(f"{name} must be a mapping")
            return data
    return {}


def detect_type(folder: Path) -> ModelType:
    """The model type of ``folder``; raises NotAModel with the reason when it has none."""
    overrides = read_overrides(folder)
    if "type" in overrides:
        try:
            return ModelType(str(overrides["type"]))
        except ValueError:
            raise NotAModel(f"llmi.yaml type {overrides['type']!r} is not one of {list(ModelType)}") from None
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise NotAModel("no config.json")
    config = read_json(config_path)
    model_type = str(config.get("model_type", "")).lower()
    architectures = [str(a) for a in config.get("architectures") or []]
    name = folder.name.lower()

    if any(a.endswith("ForSequenceClassification") for a in architectures):
        return ModelType.RERANKER
    if model_type in MULTIMODAL_MODEL_TYPES or ("text_config" in config and "vision_config" in config):
        return ModelType.MULTIMODAL
    if (folder / "modules.json").is_file():
        return ModelType.EMBEDDING
    if model_type in VISION_MODEL_TYPES or (
        (folder / "preprocessor_config.json").is_file()
        and not any(a.endswith(("ForCausalLM", "ForConditionalGeneration")) for a in architectures)
    ):
        return ModelType.VISION
    if any(a.endswith(("ForCausalLM", "ForConditionalGeneration", "LMHeadModel")) for a in architectures):
        # A causal LM is a chat model unless its name says it was trained to rank or embed.
        if "rerank" in name:
            return ModelType.RERANKER
        if "embed" in name:
            return ModelType.EMBEDDING
        return ModelType.CHAT
    if model_type in ENCODER_MODEL_TYPES:
        return ModelType.RERANKER if "rerank" in name else ModelType.EMBEDDING
    if "rerank" in name:
        return ModelType.RERANKER
    if "embed" in name:
        return ModelType.EMBEDDING
    raise NotAModel(f"cannot tell the model type (model_type={model_type!r}, architectures={architectures})")
