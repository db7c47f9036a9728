"""What a generation request asks for and what each step yields; kept apart from the engine so
the HTTP layer can use them without importing transformers."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class Delta:
    """New text since the last delta; ``finish_reason`` is set on the last one."""

    text: str
    completion_tokens: int
    finish_reason: str | None = None
    token_id: int | None = None
