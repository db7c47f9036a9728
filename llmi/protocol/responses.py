"""/v1/responses (OpenAI's Responses API), for text in and text out.

The SDK's ``client.responses.create`` is what OpenAI now recommends, so clients written today
send this shape. llmi keeps nothing between requests (``store`` is never honoured): a
conversation is sent whole in ``input``, as a string or as message items. Tools, reasoning items
and ``previous_response_id`` are refused by name; a model served by vLLM gets them passed through.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema, field_validator

from llmi.protocol.chat import VLLM_ONLY
from llmi.protocol.common import PositiveInt, Request, Text, only, unsupported
from llmi.protocol.common import Response as ResponseBase


class InputText(BaseModel):
    """A text part of an input message; ``output_text`` is an earlier answer sent back."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    type: Literal["input_text", "output_text"]
    text: str
    annotations: list[Any] | None = None


class InputMessage(BaseModel):
    """One turn of the conversation (an easy input message or a message item)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[InputText]
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ResponseRequest(Request):
    input: Text | Annotated[list[InputMessage], Field(min_length=1)]
    instructions: str | None = None
    max_output_tokens: PositiveInt | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    stream: bool = False
    store: bool | None = None  # nothing is ever stored; accepted because the SDK's default is true
    metadata: dict[str, str] | None = None
    user: str | None = None
    service_tier: str | None = None
    truncation: Literal["disabled"] | None = None
    parallel_tool_calls: bool | None = None
    tool_choice: Literal["none", "auto"] | None = None
    tools: (
        Annotated[
            list[dict[str, Any]],
            AfterValidator(only([], f"tool calling is {VLLM_ONLY}.")),
            WithJsonSchema({"type": "array", "items": {"additionalProperties": True, "type": "object"}, "maxItems": 0}),
        ]
        | None
    ) = None
    previous_response_id: (
        Annotated[
            str,
            AfterValidator(only(None, "llmi keeps no responses: send the whole conversation in input.")),
            WithJsonSchema({"type": "null"}),
        ]
        | None
    ) = None
    text: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None  # no reasoning models' effort to set here: ignored
    include: list[str] | None = None

    @field_validator("text")
    @classmethod
    def _plain_text(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        fmt = (value or {}).get("format")
        if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type") != "text"):
            raise unsupported(f"output formats other than text are {VLLM_ONLY}.")
        return value

    def messages(self) -> list[dict[str, str]]:
        """The conversation as chat messages: instructions first, as the system turn."""
        turns = [{"role": "system", "content": self.instructions}] if self.instructions else []
        if isinstance(self.input, str):
            return [*turns, {"role": "user", "content": self.input}]
        roles = {"developer": "system"}
        return turns + [{"role": roles.get(m.role, m.role), "content": m.text()} for m in self.input]


# -- responses ------------------------------------------------------------------------------


class OutputText(ResponseBase):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)


class OutputMessage(ResponseBase):
    type: Literal["message"] = "message"
    id: str
    status: Literal["in_progress", "completed", "incomplete"]
    role: Literal["assistant"] = "assistant"
    content: list[OutputText]


class InputTokensDetails(ResponseBase):
    cached_tokens: int = 0


class OutputTokensDetails(ResponseBase):
    reasoning_tokens: int = 0


class ResponseUsage(ResponseBase):
    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_tokens_details: InputTokensDetails = InputTokensDetails()
    output_tokens_details: OutputTokensDetails = OutputTokensDetails()


class IncompleteDetails(ResponseBase):
    reason: Literal["max_output_tokens"]


class ResponseObject(ResponseBase):
    """OpenAI's ``response`` object, with the fields its SDK reads."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["in_progress", "completed", "incomplete"]
    error: None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    model: str
    output: list[OutputMessage]
    parallel_tool_calls: bool = False
    previous_response_id: None = None
    store: bool = False
    temperature: float | None = None
    top_p: float | None = None
    tool_choice: Literal["none", "auto"] = "none"
    tools: list[Any] = Field(default_factory=list)
    text: dict[str, Any] = Field(default_factory=lambda: {"format": {"type": "text"}})
    truncation: Literal["disabled"] = "disabled"
    metadata: dict[str, str] = Field(default_factory=dict)
    usage: ResponseUsage | None = None


class ResponseStreamEvent(ResponseBase):
    """One ``event:``/``data:`` pair of a streamed response: ``response.created``,
    ``response.output_text.delta``, ..., ``response.completed``; ``sequence_number`` counts them."""

    model_config = ConfigDict(extra="allow", frozen=True)
    type: str
    sequence_number: int
