"""/v1/embeddings."""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING

import torch
from fastapi import APIRouter, Request
from fastapi.responses import Response

from llmi.errors import BadRequest
from llmi.protocol.common import EmbeddingUsage
from llmi.protocol.embeddings import Embedding, EmbeddingList, EmbeddingRequest
from llmi.web import parse_body
from llmi_runtime.api.deps import json_response, state_of

if TYPE_CHECKING:
    from llmi_runtime.engines.embedding import EmbeddingEngine

router = APIRouter()
PATH = "/v1/embeddings"


@router.post(PATH, include_in_schema=False)
async def embeddings(request: Request) -> Response:
    state = state_of(request)
    req = await parse_body(request, EmbeddingRequest)
    engine: EmbeddingEngine = state.engine_for(req.model, PATH)
    inputs = req.inputs()
    limits = state.settings
    if len(inputs) > limits.max_batch_inputs:
        raise BadRequest(f"At most {limits.max_batch_inputs} inputs per request.", param="input")
    if any(isinstance(x, str) and len(x) > limits.max_input_chars for x in inputs):
        raise BadRequest(f"An input is longer than {limits.max_input_chars} characters.", param="input")
    if req.dimensions is not None and req.dimensions > engine.dimensions:
        raise BadRequest(f"dimensions must be at most {engine.dimensions} for this model.", param="dimensions")
    vectors, tokens = await state.worker.run(lambda: engine.embed(inputs))
    if req.dimensions is not None and req.dimensions < vectors.shape[1]:
        # Matryoshka-style shortening: keep the leading components, back to unit length.
        vectors = torch.nn.functional.normalize(vectors[:, : req.dimensions], dim=-1)
    state.metrics.prompt_tokens.labels(PATH).inc(tokens)
    data = [Embedding(index=i, embedding=_encode(v, req.encoding_format)) for i, v in enumerate(vectors)]
    usage = EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens)
    return json_response(EmbeddingList(data=data, model=req.model, usage=usage))


def _encode(vector: torch.Tensor, encoding: str) -> list[float] | str:
    if encoding == "base64":
        # OpenAI's format: little-endian float32 bytes, base64.
        return base64.b64encode(vector.to(torch.float32).numpy().astype("<f4").tobytes()).decode()
    return vector.tolist()
