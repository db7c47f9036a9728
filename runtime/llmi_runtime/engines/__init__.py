"""Engines hide the library that runs a model; the HTTP layer only sees their methods.

Adding an engine means adding a loader here, never touching the routes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmi.modeltypes import ModelType
from llmi_runtime.engines.base import LoadOptions


def load_engine(model_type: ModelType, path: Path, options: LoadOptions, max_model_len: int | None = None) -> Any:
    """Load the transformers engine for ``model_type`` from ``path``."""
    if model_type is ModelType.CHAT:
        from llmi_runtime.engines.chat import ChatEngine

        return ChatEngine(path, options, max_model_len=max_model_len)
    if model_type is ModelType.EMBEDDING:
        from llmi_runtime.engines.embedding import EmbeddingEngine

        return EmbeddingEngine(path, options)
    if model_type is ModelType.RERANKER:
        from llmi_runtime.engines.rerank import CausalLMRerankEngine, CrossEncoderEngine, is_cross_encoder

        if is_cross_encoder(path):
            return CrossEncoderEngine(path, options)
        return CausalLMRerankEngine(path, options)
    if model_type is ModelType.VISION:
        from llmi_runtime.engines.vision import VisionEngine

        return VisionEngine(path, options)
    if model_type is ModelType.MULTIMODAL:
        from llmi_runtime.engines.vision import MultimodalEngine

        return MultimodalEngine(path, options)
    raise ValueError(f"no engine for model type {model_type}")
