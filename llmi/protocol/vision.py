"""/v1/vision/* and /v1/multimodal/* (the original tool's shapes).

Images are base64 strings or ``data:image/...;base64,`` URLs; decoding happens in the runtime.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints, model_validator

from llmi.protocol.common import Request
from llmi.protocol.common import Response as ResponseBase

ImageData = Annotated[str, StringConstraints(min_length=1)]
TextInput = Annotated[str, StringConstraints(min_length=1)]


class VisionEncodeRequest(Request):
    images: Annotated[list[ImageData], Field(min_length=1)]
    normalize: bool = False


class VisionSimilarityRequest(Request):
    image1: ImageData
    image2: ImageData


class MultimodalEncodeRequest(Request):
    images: list[ImageData] | None = None
    texts: list[TextInput] | None = None
    normalize: bool = False

    @model_validator(mode="after")
    def _something(self) -> MultimodalEncodeRequest:
        if not self.images and not self.texts:
            raise ValueError("give at least one of images or texts")
        return self


class MultimodalMatchRequest(Request):
    images: Annotated[list[ImageData], Field(min_length=1)]
    texts: Annotated[list[TextInput], Field(min_length=1)]


class VisionEncodeResponse(ResponseBase):
    object: Literal["list"] = "list"
    model: str
    embeddings: list[list[float]]
    dimensions: int


class VisionSimilarityResponse(ResponseBase):
    model: str
    similarity: float = Field(description="(1 + cosine) / 2: 1 for identical images, 0.5 for unrelated ones.")
    cosine_similarity: float
    image1_features: list[float]
    image2_features: list[float]
    dimensions: int


class MultimodalEncodeResponse(ResponseBase):
    model: str
    image_embeddings: list[list[float]]
    text_embeddings: list[list[float]]
    dimensions: int


class MultimodalMatchResponse(ResponseBase):
    model: str
    similarity_matrix: list[list[float]] = Field(description="Cosine similarities, rows images, columns texts.")
    logits: list[list[float]]
    probabilities: list[list[float]]
