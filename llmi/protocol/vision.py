"""/v1/vision/* and /v1/multimodal/* (the original tool's shapes).

Images are base64 strings or ``data:image/...;base64,`` URLs; decoding happens in the runtime.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StringConstraints, model_validator

from llmi.protocol.common import Request

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
