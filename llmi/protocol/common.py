"""Pieces every API family shares: the strict request base and token usage."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from pydantic_core import PydanticCustomError

# A model name: printable, no path tricks. Checked again against the catalog later.
ModelName = Annotated[str, StringConstraints(min_length=1, max_length=256)]
# A non-empty text input.
Text = Annotated[str, StringConstraints(min_length=1)]


# What llmi's own engines cannot honour: the error's type is its code, and the message says why.
UNSUPPORTED = "unsupported_parameter"


def unsupported(message: str) -> PydanticCustomError:
    return PydanticCustomError(UNSUPPORTED, message)


def only(neutral: object, message: str) -> Callable[[Any], Any]:
    """An after-validator that accepts only a field's neutral value (``False``, ``0``, ``1``, an
    empty list): the type's own refusal ("Input should be False") tells a person nothing."""

    def check(value: Any) -> Any:
        if value != neutral:
            raise unsupported(message)
        return value

    return check


class Request(BaseModel):
    """Base of every request: unknown fields and wrong JSON types are errors, not guesses, and
    NaN or Infinity (which JSON lacks, but parsers accept) is "not a finite number", not a range error."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)

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
