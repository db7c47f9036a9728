"""/v1/rerank (Cohere v1, Jina), /v2/rerank (Cohere v2) and /rerank (TEI's request, or Cohere
v1's): one scoring path, three answer shapes."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel

from llmi.limits import check_limits
from llmi.protocol.common import EmbeddingUsage
from llmi.protocol.rerank import (
    DocumentObject,
    RerankRequest,
    RerankResponse,
    RerankResult,
    TeiRank,
    TeiRerankRequest,
    V2RerankResponse,
    V2RerankResult,
    is_tei,
)
from llmi.web import parse_json
from llmi_runtime.api.deps import json_response, new_id, state_of
from llmi_runtime.state import RuntimeState

router = APIRouter()
M = TypeVar("M", bound=BaseModel)
V1, V2, TEI = "/v1/rerank", "/v2/rerank", "/rerank"


async def _score(
    state: RuntimeState, model: str, path: str, query: str, documents: list[str], instruction: str | None, raw: bool
) -> tuple[list[float], int]:
    engine = state.engine_for(model, path)
    rows = await state.prepare.run(lambda: engine.prepare(query, documents, instruction))
    tokens = sum(len(r) for r in rows)
    pairs = await state.batching.batcher("rerank", engine.forward, engine.batch_size).submit(rows)
    state.metrics.prompt_tokens.labels(path).inc(tokens)
    return [raw_score if raw else score for score, raw_score in pairs], tokens


def _parse(request: Request, body: bytes, model: type[M]) -> M:
    """The strict parse, then the limits (the router's own check, for requests it passed through)."""
    req = parse_json(body, model)
    check_limits(req, state_of(request).settings)
    return req


def _ranked(scores: list[float], limit: int) -> list[int]:
    return sorted(range(len(scores)), key=lambda i: scores[i], reverse=True)[:limit]


@router.post(V1, include_in_schema=False)
async def rerank_v1(request: Request) -> Response:
    return await _cohere(request, _parse(request, await request.body(), RerankRequest), V1)


@router.post(V2, include_in_schema=False)
async def rerank_v2(request: Request) -> Response:
    return await _cohere(request, _parse(request, await request.body(), RerankRequest), V2)


@router.post(TEI, include_in_schema=False)
async def rerank_tei(request: Request) -> Response:
    body = await request.body()
    try:
        decoded: Any = json.loads(body)
    except ValueError:
        decoded = None
    if not (isinstance(decoded, dict) and is_tei(decoded)):
        return await _cohere(request, _parse(request, body, RerankRequest), TEI)
    req = _parse(request, body, TeiRerankRequest)
    state = state_of(request)
    scores, _ = await _score(state, req.model or state.name, TEI, req.query, req.texts, None, req.raw_scores)
    ranks = [
        TeiRank(index=i, score=scores[i], text=req.texts[i] if req.return_text else None)
        for i in _ranked(scores, len(scores))
    ]
    payload = json.dumps([r.model_dump(exclude_none=True) for r in ranks])
    return Response(payload, media_type="application/json")


async def _cohere(request: Request, req: RerankRequest, path: str) -> Response:
    state = state_of(request)
    documents = req.texts()
    scores, tokens = await _score(state, req.model, path, req.query, documents, req.instruction, False)
    order = _ranked(scores, req.limit())
    usage = EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens)
    if path == V2:
        results = [V2RerankResult(index=i, relevance_score=scores[i]) for i in order]
        return json_response(V2RerankResponse(id=new_id("rerank"), model=req.model, results=results, usage=usage))
    items = [
        RerankResult(
            index=i,
            relevance_score=scores[i],
            document=DocumentObject(text=documents[i]) if req.return_documents else None,
        )
        for i in order
    ]
    answer = RerankResponse(id=new_id("rerank"), model=req.model, results=items, usage=usage)
    return Response(answer.model_dump_json(exclude_none=True), media_type="application/json")
