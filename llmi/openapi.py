"""The POST operations of the API, described once from the protocol models for the router and
the runtime alike: request schema, response schema (JSON, and SSE where a route streams) and
the error envelope for every status the route can answer.

Routes parse their bodies themselves (strictly, with messages that name the field), so FastAPI
sees no body parameter; this table is how the OpenAPI description still says what each takes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from llmi.protocol.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, Completion, CompletionRequest
from llmi.protocol.common import ErrorResponse
from llmi.protocol.embeddings import EmbeddingList, EmbeddingRequest
from llmi.protocol.rerank import RerankRequest, RerankResponse, TeiRank, TeiRerankRequest, V2RerankResponse
from llmi.protocol.responses import ResponseObject, ResponseRequest, ResponseStreamEvent
from llmi.protocol.vision import (
    MultimodalEncodeRequest,
    MultimodalEncodeResponse,
    MultimodalMatchRequest,
    MultimodalMatchResponse,
    VisionEncodeRequest,
    VisionEncodeResponse,
    VisionSimilarityRequest,
    VisionSimilarityResponse,
)

REF = "#/components/schemas/{model}"


@dataclass(frozen=True)
class Operation:
    path: str
    operation_id: str
    summary: str
    tag: str
    requests: tuple[type[BaseModel], ...]
    response: type[BaseModel]
    response_is_list: bool = False  # TEI answers a bare JSON array
    alternative: type[BaseModel] | None = None  # a second request shape on the same path (TEI on /rerank)
    alternative_response: type[BaseModel] | None = None
    stream_event: type[BaseModel] | None = None


OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "/v1/chat/completions",
        "createChatCompletion",
        "Chat completion (OpenAI)",
        "chat",
        (ChatCompletionRequest,),
        ChatCompletion,
        stream_event=ChatCompletionChunk,
    ),
    Operation(
        "/v1/completions",
        "createCompletion",
        "Text completion (OpenAI legacy)",
        "chat",
        (CompletionRequest,),
        Completion,
        stream_event=Completion,
    ),
    Operation(
        "/v1/responses",
        "createResponse",
        "Response (OpenAI Responses API, text)",
        "chat",
        (ResponseRequest,),
        ResponseObject,
        stream_event=ResponseStreamEvent,
    ),
    Operation(
        "/v1/embeddings", "createEmbedding", "Embeddings (OpenAI)", "embeddings", (EmbeddingRequest,), EmbeddingList
    ),
    Operation("/v1/rerank", "rerank", "Rerank documents (Cohere v1, Jina)", "rerank", (RerankRequest,), RerankResponse),
    Operation("/v2/rerank", "rerankV2", "Rerank documents (Cohere v2)", "rerank", (RerankRequest,), V2RerankResponse),
    Operation(
        "/rerank",
        "rerankTei",
        "Rerank: TEI's request with texts, or Cohere v1's with documents",
        "rerank",
        (TeiRerankRequest,),
        TeiRank,
        response_is_list=True,
        alternative=RerankRequest,
        alternative_response=RerankResponse,
    ),
    Operation(
        "/v1/vision/encode", "encodeImages", "Image embeddings", "vision", (VisionEncodeRequest,), VisionEncodeResponse
    ),
    Operation(
        "/v1/vision/similarity",
        "compareImages",
        "Similarity of two images",
        "vision",
        (VisionSimilarityRequest,),
        VisionSimilarityResponse,
    ),
    Operation(
        "/v1/multimodal/encode",
        "encodeMultimodal",
        "Image and text embeddings (CLIP-style)",
        "multimodal",
        (MultimodalEncodeRequest,),
        MultimodalEncodeResponse,
    ),
    Operation(
        "/v1/multimodal/match",
        "matchImagesTexts",
        "Image-text similarity matrix (CLIP-style)",
        "multimodal",
        (MultimodalMatchRequest,),
        MultimodalMatchResponse,
    ),
)
BY_PATH = {op.path: op for op in OPERATIONS}

ERRORS: dict[int, str] = {
    400: "Bad input: the field is named in `param`; `code` says why (e.g. context_length_exceeded, model_too_large).",
    404: "Unknown model (`model_not_found`).",
    413: "Request body over LLM_MAX_REQUEST_BYTES.",
    429: "Too many requests for this model; retry after `Retry-After` seconds.",
    500: "Internal error (no details).",
    502: "The model's runtime failed or is unreachable.",
    503: "The model could not be made ready in time; retry after `Retry-After` seconds.",
}


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def _one_of(models: Iterable[type[BaseModel]]) -> dict[str, Any]:
    refs = [_ref(m) for m in models]
    return refs[0] if len(refs) == 1 else {"oneOf": refs}


def operation_spec(op: Operation) -> dict[str, Any]:
    requests = [*op.requests, *([op.alternative] if op.alternative else [])]
    ok: dict[str, Any] = {
        "schema": {"type": "array", "items": _ref(op.response)} if op.response_is_list else _ref(op.response)
    }
    if op.alternative_response is not None:
        ok = {"schema": {"oneOf": [ok["schema"], _ref(op.alternative_response)]}}
    content: dict[str, Any] = {"application/json": ok}
    if op.stream_event is not None:
        # One server-sent event (schema tools such as schemathesis check each parsed event).
        content["text/event-stream"] = {
            "schema": {
                "type": "object",
                "required": ["data"],
                "properties": {
                    "data": {
                        # The last event is not JSON, and a failure after the headers is an error event.
                        "anyOf": [
                            {
                                "type": "string",
                                "contentMediaType": "application/json",
                                "contentSchema": {"anyOf": [_ref(op.stream_event), _ref(ErrorResponse)]},
                            },
                            {"const": "[DONE]"},
                        ],
                        "description": f"A {op.stream_event.__name__} as JSON, an ErrorResponse if the stream "
                        "fails after it began, or `[DONE]` last.",
                    },
                    "event": {"type": "string"},
                },
                "description": "`data:` events, then `data: [DONE]`; `: loading` comment lines while the model loads.",
            },
        }
    retry_after = {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait."}}
    responses: dict[str, Any] = {"200": {"description": "OK", "content": content}}
    for status, description in ERRORS.items():
        error: dict[str, Any] = {
            "description": description,
            "content": {"application/json": {"schema": _ref(ErrorResponse)}},
        }
        if status in (429, 503):
            error["headers"] = retry_after
        responses[str(status)] = error
    return {
        "operationId": op.operation_id,
        "summary": op.summary,
        "tags": [op.tag],
        "requestBody": {"required": True, "content": {"application/json": {"schema": _one_of(requests)}}},
        "responses": responses,
    }


def add_operations(schema: dict[str, Any], paths: Iterable[str]) -> dict[str, Any]:
    """Add the POST operations for ``paths`` (and every schema they name) to an OpenAPI dict."""
    ops = [BY_PATH[p] for p in paths if p in BY_PATH]
    models: list[type[BaseModel]] = [ErrorResponse]
    for op in ops:
        models += [*op.requests, op.response]
        models += [m for m in (op.alternative, op.alternative_response, op.stream_event) if m is not None]
    unique = list(dict.fromkeys(models))
    _, defs = models_json_schema(
        [(m, "validation" if m in _requests(ops) else "serialization") for m in unique], ref_template=REF
    )
    schemas = schema.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(defs.get("$defs", {}))
    for op in ops:
        schema.setdefault("paths", {}).setdefault(op.path, {})["post"] = operation_spec(op)
    for item in schema.get("paths", {}).values():
        for operation in item.values():
            # FastAPI documents its own 422; llmi answers bad parameters with 400 and the envelope.
            if operation.get("responses", {}).pop("422", None) is not None:
                operation["responses"]["400"] = {
                    "description": ERRORS[400],
                    "content": {"application/json": {"schema": _ref(ErrorResponse)}},
                }
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    return schema


def _requests(ops: Iterable[Operation]) -> set[type[BaseModel]]:
    return {m for op in ops for m in (*op.requests, *([op.alternative] if op.alternative else []))}
