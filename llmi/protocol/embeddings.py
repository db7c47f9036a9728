"""/v1/embeddings (OpenAI shape)."""

from __future__ import annotations

from typing import Annotated, Literal, cast

from pydantic import Field, StringConstraints

from llmi.protocol.common import EmbeddingUsage, PositiveInt, Request
from llmi.protocol.common import Response as ResponseBase

EmbedText = Annotated[str, StringConstraints(min_length=1)]
TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]


class EmbeddingRequest(Request):
    input: (
        EmbedText
        | Annotated[list[EmbedText], Field(min_length=1)]
        | TokenIds
        | Annotated[list[TokenIds], Field(min_length=1)]
    )
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: PositiveInt | None = None
    user: str | None = None

    def inputs(self) -> list[str] | list[list[int]]:
        """Always a list: of texts, or of token-id lists."""
        if isinstance(self.input, str):
            return [self.input]
        if self.input and isinstance(self.input[0], int):
            # Validation chose one member of the union: a list is all ints, all strings or all lists.
            return [cast("list[int]", list(self.input))]
        return cast("list[str] | list[list[int]]", list(self.input))


class Embedding(ResponseBase):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="Floats, or base64 of little-endian float32 bytes.")


class EmbeddingList(ResponseBase):
    """OpenAI's embeddings response."""

    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
