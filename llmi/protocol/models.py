"""What /v1/models says about each model: OpenAI's model object plus llmi's own facts.

One typed card for both control planes (embedded and Kubernetes) and the runtime, so the
list, the status page and the OpenAPI description cannot drift apart.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

PublicState = Literal["available", "loading", "ready", "parked", "unloading", "failed"]


class ModelCard(BaseModel):
    """One entry of ``GET /v1/models``. Fields after ``owned_by`` are llmi's additions."""

    model_config = ConfigDict(frozen=True)

    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "llmi"
    type: str | None = None
    engine: str | None = None
    state: PublicState = "available"
    placement: str | None = None
    memory_bytes: int | None = Field(None, description="What the planner counts: measured if known, else estimated.")
    memory_estimated_bytes: int | None = None
    memory_measured_bytes: int | None = None
    pinned: bool = False
    in_flight: int = 0
    queued: int = 0
    last_used: float | None = Field(None, description="Unix time of the last request, when there was one.")
    loading_s: float | None = Field(None, description="While loading: seconds since the load began.")
    last_load_s: float | None = Field(None, description="How long the model's last load took (s).")
    phase: str | None = Field(None, description="Kubernetes only: the LocalModel's status phase.")
    error: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
