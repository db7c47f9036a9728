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
from llmi_runtime.engines.features import Row, collate, run_by_length, split

BATCH = 16


def _pooled(output: Any) -> torch.Tensor:
    pooled = getattr(output, "pooler_output", None)
    if pooled is None:
        pooled = output.last_hidden_state[:, 0]
    return pooled.reshape(pooled.shape[0], -1)


class VisionEngine:
    model_type = ModelType.VISION
    batch_size = BATCH  # images per forward

    def __init__(self, path: Path, options: LoadOptions) -> None:
        self.path = path
        self.processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, **options.from_pretrained_kwargs())
        self.model, self.device, self.placement = place(model, options)
        self.dtype = next(self.model.parameters()).dtype

    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return torch.stack(self.forward_images(self.prepare_images(images)))

    def prepare_images(self, images: Sequence[Image.Image]) -> list[torch.Tensor]:
        """Pixel values of each image (processor work, off the model's thread)."""
        return _pixel_rows(self.processor, images)

    def forward_images(self, pixels: list[torch.Tensor]) -> list[torch.Tensor]:
        """Pooled features of each image; images of any requests batched (on the model's thread)."""
        return run_by_length(pixels, BATCH, self._forward_batch, length=lambda _: 0, group=_shape)

    def _forward_batch(self, pixels: list[torch.Tensor]) -> list[torch.Tensor]:
        with torch.inference_mode():
            return list(_pooled(self.model(pixel_values=torch.stack(pixels).to(self.device, self.dtype))).float().cpu())

    def info(self) -> dict[str, Any]:
        return module_facts(self.model, self.device, self.placement)


class MultimodalEngine:
    """CLIP and its relatives: joint image/text embeddings and image-text matching."""

    model_type = ModelType.MULTIMODAL
    batch_size = BATCH  # images or texts per forward

    def __init__(self, path: Path, options: LoadOptions) -> None:
        self.path = path
        self.processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, **options.from_pretrained_kwargs())
        self.model, self.device, self.placement = place(model, options)
        self.dtype = next(self.model.parameters()).dtype
        self.sigmoid = str(getattr(self.model.config, "model_type", "")).startswith("siglip")
        text_config = getattr(self.model.config, "text_config", None)
        self.max_text_tokens = int(getattr(text_config, "max_position_embeddings", 77) or 77)
        pad = getattr(getattr(self.processor, "tokenizer", None), "pad_token_id", None)
        self.pad_id = int(pad if pad is not None else 0)

    def prepare_images(self, images: Sequence[Image.Image]) -> list[torch.Tensor]:
        """Pixel values of each image (processor work, off the model's thread)."""
        return _pixel_rows(self.processor, images)

    def prepare_texts(self, texts: Sequence[str]) -> list[Row]:
        """Tokenized texts, off the model's thread."""
        rows: list[Row] = []
        for start in range(0, len(texts), BATCH):
            padding = "max_length" if self.sigmoid else True  # SigLIP was trained on max-length padding
            enc = self.processor(
                text=list(texts[start : start + BATCH]),
                return_tensors="pt",
                padding=padding,
                truncation=True,
                max_length=self.max_text_tokens,
            )
            features = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask")}
            if self.sigmoid or "attention_mask" not in features:  # max-length rows stay as they are
                rows.extend(Row({k: v[i] for k, v in features.items()}) for i in range(len(features["input_ids"])))
            else:
                rows.extend(split(features, pad_left=False))
        return rows

    def forward_images(self, pixels: list[torch.Tensor]) -> list[torch.Tensor]:
        """Projected features of each image; images of any requests batched (on the model's thread)."""
        return run_by_length(pixels, BATCH, self._image_batch, length=lambda _: 0, group=_shape)

    def forward_texts(self, rows: list[Row]) -> list[torch.Tensor]:
        """Projected features of each text; texts of any requests batched by length."""
        return run_by_length(rows, BATCH, self._text_batch)

    def _image_batch(self, pixels: list[torch.Tensor]) -> list[torch.Tensor]:
        with torch.inference_mode():
            feats = self.model.get_image_features(pixel_values=torch.stack(pixels).to(self.device, self.dtype))
        return list(_features(feats).float().cpu())

    def _text_batch(self, rows: list[Row]) -> list[torch.Tensor]:
        batch = {k: v.to(self.device) for k, v in collate(rows, self.pad_id, pad_left=False).items()}
        with torch.inference_mode():
            feats = self.model.get_text_features(**batch)
        return list(_features(feats).float().cpu())

    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return torch.stack(self.forward_images(self.prepare_images(images)))

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        return torch.stack(self.forward_texts(self.prepare_texts(texts)))

    def match(self, images: Sequence[Image.Image], texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Cosine similarities, the model's logits, and probabilities (softmax over texts;
        sigmoid for SigLIP-style models trained that way)."""
        return self.scores(self.encode_images(images), self.encode_texts(texts))

    def scores(self, image_features: torch.Tensor, text_features: torch.Tensor) -> dict[str, torch.Tensor]:
        """match() from features already computed (no model forward)."""
        img = torch.nn.functional.normalize(image_features, dim=-1)
        txt = torch.nn.functional.normalize(text_features, dim=-1)
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


def _pixel_rows(processor: Any, images: Sequence[Image.Image]) -> list[torch.Tensor]:
    rows: list[torch.Tensor] = []
    for start in range(0, len(images), BATCH):
        rows.extend(processor(images=list(images[start : start + BATCH]), return_tensors="pt")["pixel_values"])
    return rows


def _shape(pixels: torch.Tensor) -> tuple[int, ...]:
    """Images batch together only with images of the same processed size."""
    return tuple(pixels.shape)
