"""Rerank for every client: Cohere v1/Jina (/v1/rerank, /rerank), Cohere v2 (/v2/rerank) and
Hugging Face TEI (/rerank with ``texts``), with the original tool's ``top_k`` alias."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from llmi.protocol.common import EmbeddingUsage, ModelName, PositiveInt, Request
from llmi.protocol.common import Response as ResponseBase


class DocumentObject(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    text: str


class RerankRequest(Request):
    query: Annotated[str, StringConstraints(min_length=1)]
    documents: Annotated[list[str | DocumentObject], Field(min_length=1)]
    top_n: PositiveInt | None = None
    top_k: PositiveInt | None = None
    return_documents: bool = True
    # Task instruction for LLM-style rerankers (Qwen3-Reranker); ignored by cross-encoders.
    instruction: str | None = None
    max_chunks_per_doc: PositiveInt | None = None

    @model_validator(mode="after")
    def _one_limit(self) -> RerankRequest:
        if self.top_n is not None and self.top_k is not None and self.top_n != self.top_k:
            raise ValueError("top_n and top_k are aliases; give one, or the same value")
        return self

    def texts(self) -> list[str]:
        return [d if isinstance(d, str) else d.text for d in self.documents]

    def limit(self) -> int:
        n = self.top_n or self.top_k
        return len(self.documents) if n is None else min(n, len(self.documents))


class TeiRerankRequest(BaseModel):
    """Text Embeddings Inference's ``/rerank`` request. TEI serves one model, so ``model`` may be
    left out when only one reranker is known."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    model: ModelName | None = None
    query: Annotated[str, StringConstraints(min_length=1)]
    texts: Annotated[list[str], Field(min_length=1)]
    raw_scores: bool = False
    return_text: bool = False
    truncate: bool | None = None
    truncation_direction: Literal["left", "right", "Left", "Right"] | None = None


def is_tei(body: dict[str, Any]) -> bool:
    """TEI's request names its documents ``texts``; Cohere's and Jina's say ``documents``."""
    return "texts" in body and "documents" not in body


class RerankResult(ResponseBase):
    index: int = Field(description="Position of the document in the request.")
    relevance_score: float = Field(description="In [0, 1]; results are sorted by it, highest first.")
    document: DocumentObject | None = None


class RerankResponse(ResponseBase):
    """Cohere v1 and Jina's response (``document`` only with return_documents)."""

    id: str
    model: str
    results: list[RerankResult]
    usage: EmbeddingUsage


class V2RerankResult(ResponseBase):
    index: int
    relevance_score: float


class RerankMeta(ResponseBase):
    api_version: dict[str, str] = Field(default_factory=lambda: {"version": "2"})
    billed_units: dict[str, int] = Field(default_factory=lambda: {"search_units": 1})


class V2RerankResponse(ResponseBase):
    """Cohere v2's response: results carry no document."""

    id: str
    model: str
    results: list[V2RerankResult]
    meta: RerankMeta = Field(default_factory=RerankMeta)
    usage: EmbeddingUsage


class TeiRank(ResponseBase):
    index: int
    score: float = Field(description="Sigmoid-scaled relevance, or the model's raw logit with raw_scores.")
    text: str | None = None
