"""Pieces every API family shares: the strict request base and token usage."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

# A model name: printable, no path tricks. Checked again against the catalog later.
ModelName = Annotated[str, StringConstraints(min_length=1, max_length=256)]
# A non-empty text input.
Text = Annotated[str, StringConstraints(min_length=1)]


class Request(BaseModel):
    """Base of every request: unknown fields and wrong JSON types are errors, not guesses."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    model: ModelName


class Response(BaseModel):
    """Base of every response: built by the runtime, documented in the OpenAPI from the same class."""

    model_config = ConfigDict(frozen=True)


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = Field(None, description="A stable string code such as model_not_found, or null.")


class ErrorResponse(BaseModel):
    """The one error envelope, OpenAI's."""

    error: ErrorDetail


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class EmbeddingUsage(BaseModel):
    prompt_tokens: int = 0
    total_tokens: int = 0


PositiveInt = Annotated[int, Field(ge=1)]
