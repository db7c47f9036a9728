"""The five kinds of model llmi serves, and which endpoints each answers."""

from __future__ import annotations

from enum import StrEnum


class ModelType(StrEnum):
    CHAT = "chat"
    EMBEDDING = "embedding"
    RERANKER = "reranker"
    VISION = "vision"
    MULTIMODAL = "multimodal"


# Cohere v1 and Jina, Cohere v2, and TEI's path (which also takes Cohere v1's request).
RERANK_PATHS = ("/v1/rerank", "/v2/rerank", "/rerank")

ENDPOINTS: dict[ModelType, tuple[str, ...]] = {
    ModelType.CHAT: ("/v1/chat/completions", "/v1/completions", "/v1/responses"),
    ModelType.EMBEDDING: ("/v1/embeddings",),
    ModelType.RERANKER: RERANK_PATHS,
    ModelType.VISION: ("/v1/vision/encode", "/v1/vision/similarity"),
    # A CLIP-style model also answers the vision endpoints with its image tower.
    ModelType.MULTIMODAL: (
        "/v1/multimodal/encode",
        "/v1/multimodal/match",
        "/v1/vision/encode",
        "/v1/vision/similarity",
    ),
}
