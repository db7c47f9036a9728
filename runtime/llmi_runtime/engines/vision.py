"""Image encoders (ViT, DINOv2/v3, ...) and CLIP-style image-text models.

Vision features are the model's pooled output (``pooler_output``, else the CLS token); CLIP
features are the projected embeddings of ``get_image_features``/``get_text_features``.
Processors are the slow (PIL/numpy) ones so no torchvision is needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel, AutoProcessor

from llmi.modeltypes import ModelType
from llmi_runtime.engines.base import LoadOptions, module_facts, place

BATCH = 16


def _pooled(output: Any) -> torch.Tensor:
    pooled = getattr(output, "pooler_output", None)
    if pooled is None:
        pooled = output.last_hidden_state[:, 0]
    return pooled.reshape(pooled.shape[0], -1)


class VisionEngine:
    model_type = ModelType.VISION

    def __init__(self, path: Path, options: LoadOptions) -> None:
        self.path = path
        self.processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, **options.from_pretrained_kwargs())
        self.model, self.device, self.placement = place(model, options)
        self.dtype = next(self.model.parameters()).dtype

    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        out: list[torch.Tensor] = []
        for start in range(0, len(images), BATCH):
            pixels = self.processor(images=list(images[start : start + BATCH]), return_tensors="pt")
            pixels = pixels["pixel_values"].to(self.device, self.dtype)
            with torch.inference_mode():
                out.append(_pooled(self.model(pixel_values=pixels)).float().cpu())
        return torch.cat(out)

    def info(self) -> dict[str, Any]:
        return module_facts(self.model, self.device, self.placement)


class MultimodalEngine:
    """CLIP and its relatives: joint image/text embeddings and image-text matching."""

    model_type = ModelType.MULTIMODAL

    def __init__(self, path: Path, options: LoadOptions) -> None:
        self.path = path
        self.processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, **options.from_pretrained_kwargs())
        self.model, self.device, self.placement = place(model, options)
        self.dtype = next(self.model.parameters()).dtype
        self.sigmoid = str(getattr(self.model.config, "model_type", "")).startswith("siglip")
        text_config = getattr(self.model.config, "text_config", None)
        self.max_text_tokens = int(getattr(text_config, "max_position_embeddings", 77) or 77)

    def _pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        pixels = self.processor(images=list(images), return_tensors="pt")["pixel_values"]
        return pixels.to(self.device, self.dtype)

    def _tokens(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        padding = "max_length" if self.sigmoid else True  # SigLIP was trained on max-length padding
        enc = self.processor(
            text=list(texts), return_tensors="pt", padding=padding, truncation=True, max_length=self.max_text_tokens
        )
        return {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}

    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        out: list[torch.Tensor] = []
        for start in range(0, len(images), BATCH):
            with torch.inference_mode():
                feats = self.model.get_image_features(pixel_values=self._pixels(images[start : start + BATCH]))
            out.append(_features(feats).float().cpu())
        return torch.cat(out)

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        out: list[torch.Tensor] = []
        for start in range(0, len(texts), BATCH):
            with torch.inference_mode():
                feats = self.model.get_text_features(**self._tokens(texts[start : start + BATCH]))
            out.append(_features(feats).float().cpu())
        return torch.cat(out)

    def match(self, images: Sequence[Image.Image], texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Cosine similarities, the model's logits, and probabilities (softmax over texts;
        sigmoid for SigLIP-style models trained that way)."""
        img = torch.nn.functional.normalize(self.encode_images(images), dim=-1)
        txt = torch.nn.functional.normalize(self.encode_texts(texts), dim=-1)
        cosine = img @ txt.T
        scale = float(self.model.logit_scale.exp()) if hasattr(self.model, "logit_scale") else 100.0
        logits = cosine * scale
        bias = getattr(self.model, "logit_bias", None)
        if bias is not None:
            logits = logits + float(bias)
        probs = torch.sigmoid(logits) if self.sigmoid else torch.softmax(logits, dim=1)
        return {"cosine": cosine, "logits": logits, "probabilities": probs}

    def info(self) -> dict[str, Any]:
        return module_facts(self.model, self.device, self.placement)


def _features(output: Any) -> torch.Tensor:
    """transformers 5 returns a model output whose pooler_output is the projected feature;
    older versions return the tensor itself."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output
