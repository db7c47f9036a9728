"""/v1/vision/* and /v1/multimodal/*.

``similarity`` in /v1/vision/similarity is (1 + cosine) / 2 of the two feature vectors: 1 for
identical images, 0.5 for unrelated (orthogonal) ones, always within [0, 1]; the raw cosine
is returned as ``cosine_similarity``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import torch
from fastapi import APIRouter, Request
from fastapi.responses import Response
from PIL import Image

from llmi.errors import BadRequest
from llmi.limits import check_limits
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
from llmi.web import parse_body
from llmi_runtime.api.deps import json_response, state_of
from llmi_runtime.images import decode_image
from llmi_runtime.state import RuntimeState

router = APIRouter()
ENCODE, SIMILARITY = "/v1/vision/encode", "/v1/vision/similarity"
MM_ENCODE, MM_MATCH = "/v1/multimodal/encode", "/v1/multimodal/match"


async def _images(state: RuntimeState, images: Sequence[str], param: str, indexed: bool = True) -> list[Image.Image]:
    limits = state.settings  # counts and byte sizes were checked with the request (llmi/limits.py)

    def decode_all() -> list[Image.Image]:
        decoded, pixels = [], 0
        for i, data in enumerate(images):
            where = f"{param}.{i}" if indexed else param
            image = decode_image(
                data, param=where, max_bytes=limits.max_image_bytes, max_pixels=limits.max_image_pixels
            )
            pixels += image.width * image.height
            if pixels > limits.max_request_pixels:
                # Many small-looking images can still decode into gigabytes together.
                raise BadRequest(
                    f"The images of this request exceed {limits.max_request_pixels} pixels in total "
                    "(LLM_MAX_REQUEST_PIXELS).",
                    param=where,
                    code="image_too_large",
                )
            decoded.append(image)
        return decoded

    # Decoding is CPU work: keep it off the event loop and off the model's thread.
    return await asyncio.to_thread(decode_all)


async def _image_features(state: RuntimeState, engine: Any, images: list[Image.Image]) -> torch.Tensor:
    """Features of ``images``, batched with other requests' images on this model."""
    pixels = await state.prepare.run(lambda: engine.prepare_images(images))
    return torch.stack(await state.batching.batcher("images", engine.forward_images, engine.batch_size).submit(pixels))


async def _text_features(state: RuntimeState, engine: Any, texts: list[str]) -> torch.Tensor:
    rows = await state.prepare.run(lambda: engine.prepare_texts(texts))
    return torch.stack(await state.batching.batcher("texts", engine.forward_texts, engine.batch_size).submit(rows))


def _rows(t: torch.Tensor, normalize: bool = False) -> list[list[float]]:
    return (torch.nn.functional.normalize(t, dim=-1) if normalize else t).tolist()


@router.post(ENCODE, include_in_schema=False)
async def vision_encode(request: Request) -> Response:
    state = state_of(request)
    req = await parse_body(request, VisionEncodeRequest)
    check_limits(req, state.settings)
    engine = state.engine_for(req.model, ENCODE)
    images = await _images(state, req.images, "images")
    features = await _image_features(state, engine, images)
    return json_response(
        VisionEncodeResponse(
            model=req.model, embeddings=_rows(features, req.normalize), dimensions=int(features.shape[1])
        )
    )


@router.post(SIMILARITY, include_in_schema=False)
async def vision_similarity(request: Request) -> Response:
    state = state_of(request)
    req = await parse_body(request, VisionSimilarityRequest)
    check_limits(req, state.settings)
    engine = state.engine_for(req.model, SIMILARITY)
    first = await _images(state, [req.image1], "image1", indexed=False)
    second = await _images(state, [req.image2], "image2", indexed=False)
    features = await _image_features(state, engine, first + second)
    cosine = float(torch.nn.functional.cosine_similarity(features[0:1], features[1:2]).clamp(-1, 1))
    return json_response(
        VisionSimilarityResponse(
            model=req.model,
            similarity=(1.0 + cosine) / 2.0,
            cosine_similarity=cosine,
            image1_features=features[0].tolist(),
            image2_features=features[1].tolist(),
            dimensions=int(features.shape[1]),
        )
    )


@router.post(MM_ENCODE, include_in_schema=False)
async def multimodal_encode(request: Request) -> Response:
    state = state_of(request)
    req = await parse_body(request, MultimodalEncodeRequest)
    check_limits(req, state.settings)
    engine = state.engine_for(req.model, MM_ENCODE)
    images = await _images(state, req.images or [], "images")
    texts = list(req.texts or [])
    image_features = await _image_features(state, engine, images) if images else None
    text_features = await _text_features(state, engine, texts) if texts else None
    dims = next(int(t.shape[1]) for t in (image_features, text_features) if t is not None)
    return json_response(
        MultimodalEncodeResponse(
            model=req.model,
            image_embeddings=[] if image_features is None else _rows(image_features, req.normalize),
            text_embeddings=[] if text_features is None else _rows(text_features, req.normalize),
            dimensions=dims,
        )
    )


@router.post(MM_MATCH, include_in_schema=False)
async def multimodal_match(request: Request) -> Response:
    state = state_of(request)
    req = await parse_body(request, MultimodalMatchRequest)
    check_limits(req, state.settings)
    engine = state.engine_for(req.model, MM_MATCH)
    images = await _images(state, req.images, "images")
    texts = list(req.texts)
    result = engine.scores(await _image_features(state, engine, images), await _text_features(state, engine, texts))
    return json_response(
        MultimodalMatchResponse(
            model=req.model,
            similarity_matrix=result["cosine"].tolist(),
            logits=result["logits"].tolist(),
            probabilities=result["probabilities"].tolist(),
        )
    )
