"""/v1/rerank (Cohere/Jina shape)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from llmi.errors import BadRequest
from llmi.protocol.rerank import RerankRequest
from llmi.web import parse_body
from llmi_runtime.api.deps import new_id, state_of

router = APIRouter()
PATH = "/v1/rerank"


@router.post(PATH)
async def rerank(request: Request) -> JSONResponse:
    state = state_of(request)
    req = await parse_body(request, RerankRequest)
    engine = state.engine_for(req.model, PATH)
    documents = req.texts()
    limits = state.settings
    if len(documents) > limits.max_batch_inputs:
        raise BadRequest(f"At most {limits.max_batch_inputs} documents per request.", param="documents")
    if any(len(d) > limits.max_input_chars for d in [req.query, *documents]):
        raise BadRequest(f"A text is longer than {limits.max_input_chars} characters.", param="documents")
    rows = await state.prepare.run(lambda: engine.prepare(req.query, documents, req.instruction))
    tokens = sum(len(r) for r in rows)
    scores = await state.batching.batcher("rerank", engine.forward).submit(rows)
    order = sorted(range(len(documents)), key=lambda i: scores[i], reverse=True)[: req.limit()]
    results: list[dict[str, Any]] = []
    for i in order:
        item: dict[str, Any] = {"index": i, "relevance_score": scores[i]}
        if req.return_documents:
            item["document"] = {"text": documents[i]}
        results.append(item)
    state.metrics.prompt_tokens.labels(PATH).inc(tokens)
    return JSONResponse(
        {
            "id": new_id("rerank"),
            "model": req.model,
            "results": results,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )
