"""/v1/rerank in the Cohere/Jina shape, with the original tool's ``top_k`` alias."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from llmi.protocol.common import PositiveInt, Request


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
