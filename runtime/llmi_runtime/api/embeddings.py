"""/v1/embeddings."""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any

import orjson
import torch
from fastapi import APIRouter, Request
from fastapi.responses import Response

from llmi.errors import BadRequest
from llmi.limits import check_limits
from llmi.protocol.embeddings import EmbeddingRequest
from llmi.web import parse_body
from llmi_runtime.api.deps import state_of

if TYPE_CHECKING:
    from llmi_runtime.engines.embedding import EmbeddingEngine

router = APIRouter()
PATH = "/v1/embeddings"


@router.post(PATH, include_in_schema=False)
async def embeddings(request: Request) -> Response:
    state = state_of(request)
    req = await parse_body(request, EmbeddingRequest)
    check_limits(req, state.settings)
    engine: EmbeddingEngine = state.engine_for(req.model, PATH)
    inputs = req.inputs()
    if req.dimensions is not None and req.dimensions > engine.dimensions:
        raise BadRequest(f"dimensions must be at most {engine.dimensions} for this model.", param="dimensions")
    rows = await state.prepare.run(lambda: engine.prepare(inputs))
    tokens = sum(len(r) for r in rows)
    vectors = torch.stack(await state.batching.batcher("embeddings", engine.forward, engine.batch_size).submit(rows))
    if req.dimensions is not None and req.dimensions < vectors.shape[1]:
        # Matryoshka-style shortening: keep the leading components, back to unit length.
        vectors = torch.nn.functional.normalize(vectors[:, : req.dimensions], dim=-1)
    state.metrics.prompt_tokens.labels(PATH).inc(tokens)
    body = {
        "object": "list",
        "data": _data(vectors, req.encoding_format),
        "model": req.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")


def _data(vectors: torch.Tensor, encoding: str) -> list[dict[str, Any]]:
    """The response's items; numpy rows go to orjson as they are (no Python floats in between)."""
    array = vectors.to(torch.float32).contiguous().numpy()
    if encoding == "base64":
        # OpenAI's format: little-endian float32 bytes, base64, straight from the tensor's memory.
        array = array.astype("<f4", copy=False)
        return [
            {"object": "embedding", "index": i, "embedding": base64.b64encode(row).decode()}
            for i, row in enumerate(array)
        ]
    return [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(array)]
