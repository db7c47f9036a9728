"""The request limits (LLM_MAX_*), checked on a parsed request by the router before anything
can cost a load, and by the runtime with this same function, so both refuse alike.

Why here and not in the runtime alone: an over-limit request refused only by the runtime has
already evicted a model and loaded its own. Why not in the pydantic types: the limits are
settings, and a type is fixed at import. Each refusal is a 400 (``limit_exceeded``) whose
message names the limit's setting and whose ``param`` names the field. What only the model can
tell (tokens against its context, decoded pixels) stays in the runtime, off the model's thread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from llmi.caps import check_token_caps
from llmi.errors import BadRequest, LimitExceeded
from llmi.protocol.chat import ChatCompletionRequest, CompletionRequest, SamplingFields
from llmi.protocol.embeddings import EmbeddingRequest
from llmi.protocol.rerank import RerankRequest, TeiRerankRequest
from llmi.protocol.responses import ResponseRequest
from llmi.protocol.vision import (
    MultimodalEncodeRequest,
    MultimodalMatchRequest,
    VisionEncodeRequest,
    VisionSimilarityRequest,
)
from llmi.settings import Settings

# A token id: ASCII digits only ("²" passes str.isdigit() but is no int), short enough that no
# vocabulary is larger and int() never meets Python's 4300-digit guard.
TOKEN_ID_DIGITS = 9


def check_limits(request: BaseModel, settings: Settings) -> None:
    """Raise LimitExceeded (400) for the first limit ``request`` is over; None when within all."""
    check_token_caps(request, settings)
    check = _CHECKS.get(type(request))
    if check is not None:
        check(request, settings)


class PassThroughMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            kinds = ("text", "input_text", "output_text")  # chat's parts, and the Responses API's
            return "".join(str(p.get("text", "")) for p in self.content if p.get("type") in kinds)
        return self.content or ""


class PassThroughRequest(BaseModel):
    """What the limits read from a chat, completion or Responses body that an engine with more
    features than ours (vLLM: tools, logprobs, n) validates for itself: only those fields, leniently."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    messages: list[PassThroughMessage] | None = None
    prompt: str | list[Any] | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    input: str | list[PassThroughMessage] | None = None  # the Responses API's conversation
    instructions: str | None = None
    max_output_tokens: int | None = None
    stop: str | list[str] | None = None
    logit_bias: dict[str, Any] | None = None

    def stop_list(self) -> list[str]:
        return [] if self.stop is None else [self.stop] if isinstance(self.stop, str) else list(self.stop)


def check_pass_through_limits(body: bytes, settings: Settings) -> None:
    """The limits on a body the router forwards unparsed; one it cannot read is the engine's to refuse."""
    try:
        req = PassThroughRequest.model_validate_json(body)
    except ValidationError:
        return
    check_token_caps(req, settings)
    if req.messages is not None:
        length("messages", "".join(m.text() for m in req.messages), settings.max_input_chars)
    if req.input is not None:
        turns = [req.input] if isinstance(req.input, str) else [m.text() for m in req.input]
        length("input", (req.instructions or "") + "".join(turns), settings.max_input_chars)
    if isinstance(req.prompt, str):
        length("prompt", req.prompt, settings.max_input_chars)
    elif req.prompt:
        prompts = req.prompt if isinstance(req.prompt[0], str | list) else [req.prompt]
        count("prompt", prompts, settings.max_prompts, "LLM_MAX_PROMPTS", "prompts")
        lengths("prompt", prompts, settings.max_input_chars)
    _sampling(req, settings)


def token_id(key: str) -> int:
    """A logit_bias key as a token id; BadRequest (400) for anything that is not one."""
    if not (key.isascii() and key.isdigit() and len(key) <= TOKEN_ID_DIGITS):
        shown = key if len(key) <= 20 else f"{key[:20]}... ({len(key)} characters)"
        raise BadRequest(
            f"logit_bias key {shown!r} is not a token id (digits 0-9, at most {TOKEN_ID_DIGITS}).",
            param="logit_bias",
            code="invalid_logit_bias",
        )
    return int(key)


def image_payload_bytes(data: str) -> int:
    """About how many bytes a base64 image (or data URL) decodes to, without decoding it."""
    payload = data.partition(",")[2] if data.startswith("data:") else data
    return (len(payload) * 3) // 4


def count(param: str, items: Sequence[Any], limit: int, setting: str, what: str = "items") -> None:
    if len(items) > limit:
        raise LimitExceeded(
            f"{param} has {len(items)} {what}; this server allows at most {limit} ({setting}).", param=param
        )


def length(param: str, text: str, limit: int, setting: str = "LLM_MAX_INPUT_CHARS") -> None:
    if len(text) > limit:
        raise LimitExceeded(
            f"{param} is {len(text)} characters long; this server allows at most {limit} ({setting}).", param=param
        )


def lengths(param: str, texts: Iterable[Any], limit: int, setting: str = "LLM_MAX_INPUT_CHARS") -> None:
    for i, text in enumerate(texts):
        if isinstance(text, str):
            length(f"{param}.{i}", text, limit, setting)


def images(param: str, data: Sequence[str], settings: Settings, indexed: bool = True) -> None:
    count(param, data, settings.max_images_per_request, "LLM_MAX_IMAGES_PER_REQUEST", "images")
    for i, image in enumerate(data):
        size = image_payload_bytes(image)
        if size > settings.max_image_bytes:
            where = f"{param}.{i}" if indexed else param
            raise LimitExceeded(
                f"{where} is about {size} bytes; this server allows at most {settings.max_image_bytes} per image "
                "(LLM_MAX_IMAGE_BYTES).",
                param=where,
            )


def _sampling(req: SamplingFields | PassThroughRequest, s: Settings) -> None:
    stops = req.stop_list()
    count("stop", stops, s.max_stop_strings, "LLM_MAX_STOP_STRINGS", "stop strings")
    for i, stop in enumerate(stops):
        length("stop" if isinstance(req.stop, str) else f"stop.{i}", stop, s.max_stop_chars, "LLM_MAX_STOP_CHARS")
    if req.logit_bias:
        count("logit_bias", list(req.logit_bias), s.max_logit_bias, "LLM_MAX_LOGIT_BIAS", "entries")
        for key in req.logit_bias:
            token_id(key)


def _chat(req: ChatCompletionRequest, s: Settings) -> None:
    # The conversation becomes one prompt: its text counts together.
    length("messages", "".join(m.text() for m in req.messages), s.max_input_chars)
    _sampling(req, s)


def _response(req: ResponseRequest, s: Settings) -> None:
    length("input", "".join(m["content"] for m in req.messages()), s.max_input_chars)


def _completion(req: CompletionRequest, s: Settings) -> None:
    prompts: list[Any] = [req.prompt] if isinstance(req.prompt, str) or isinstance(req.prompt[0], int) else req.prompt
    count("prompt", prompts, s.max_prompts, "LLM_MAX_PROMPTS", "prompts")
    if isinstance(req.prompt, str):
        length("prompt", req.prompt, s.max_input_chars)
    else:
        lengths("prompt", prompts, s.max_input_chars)
    _sampling(req, s)


def _embedding(req: EmbeddingRequest, s: Settings) -> None:
    inputs = req.inputs()
    count("input", inputs, s.max_batch_inputs, "LLM_MAX_BATCH_INPUTS", "inputs")
    if isinstance(req.input, str):
        length("input", req.input, s.max_input_chars)
    else:
        lengths("input", inputs, s.max_input_chars)


def _rerank(req: RerankRequest, s: Settings) -> None:
    count("documents", req.documents, s.max_batch_inputs, "LLM_MAX_BATCH_INPUTS", "documents")
    length("query", req.query, s.max_input_chars)
    lengths("documents", req.texts(), s.max_input_chars)
    if req.instruction is not None:
        length("instruction", req.instruction, s.max_instruction_chars, "LLM_MAX_INSTRUCTION_CHARS")


def _tei(req: TeiRerankRequest, s: Settings) -> None:
    count("texts", req.texts, s.max_batch_inputs, "LLM_MAX_BATCH_INPUTS", "texts")
    length("query", req.query, s.max_input_chars)
    lengths("texts", req.texts, s.max_input_chars)


def _texts(texts: Sequence[str] | None, s: Settings) -> None:
    count("texts", texts or [], s.max_batch_inputs, "LLM_MAX_BATCH_INPUTS", "texts")
    lengths("texts", texts or [], s.max_input_chars)


def _vision_encode(req: VisionEncodeRequest, s: Settings) -> None:
    images("images", req.images, s)


def _vision_similarity(req: VisionSimilarityRequest, s: Settings) -> None:
    images("image1", [req.image1], s, indexed=False)
    images("image2", [req.image2], s, indexed=False)


def _multimodal_encode(req: MultimodalEncodeRequest, s: Settings) -> None:
    images("images", req.images or [], s)
    _texts(req.texts, s)


def _multimodal_match(req: MultimodalMatchRequest, s: Settings) -> None:
    images("images", req.images, s)
    _texts(req.texts, s)


_CHECKS: dict[type[BaseModel], Callable[[Any, Settings], None]] = {
    ChatCompletionRequest: _chat,
    CompletionRequest: _completion,
    ResponseRequest: _response,
    EmbeddingRequest: _embedding,
    RerankRequest: _rerank,
    TeiRerankRequest: _tei,
    VisionEncodeRequest: _vision_encode,
    VisionSimilarityRequest: _vision_similarity,
    MultimodalEncodeRequest: _multimodal_encode,
    MultimodalMatchRequest: _multimodal_match,
}
