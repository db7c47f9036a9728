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


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class EmbeddingUsage(BaseModel):
    prompt_tokens: int = 0
    total_tokens: int = 0


PositiveInt = Annotated[int, Field(ge=1)]
