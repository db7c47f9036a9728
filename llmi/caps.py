"""The token caps (LLM_MAX_TOKENS_LIMIT, LLM_MAX_TOKENS_DEFAULT), checked by the router before a
load and applied by the runtime, which alone knows the context length."""

from __future__ import annotations

from typing import Any

from llmi.errors import TokenLimitExceeded
from llmi.settings import Settings


def check_token_caps(request: Any, settings: Settings) -> None:
    """400 when a chat or completion request asks for more than LLM_MAX_TOKENS_LIMIT tokens."""
    limit = settings.max_tokens_limit
    if limit is None:
        return
    for name in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        asked = getattr(request, name, None)
        if isinstance(asked, int) and asked > limit:
            raise TokenLimitExceeded(
                f"{name} is {asked}; this server allows at most {limit} (LLM_MAX_TOKENS_LIMIT).", param=name
            )


def default_cap(settings: Settings) -> int | None:
    """Most tokens generated for a request that names none (None: the rest of the context, as
    OpenAI does); LLM_MAX_TOKENS_DEFAULT, never above LLM_MAX_TOKENS_LIMIT."""
    caps = [c for c in (settings.max_tokens_default, settings.max_tokens_limit) if c is not None]
    return min(caps) if caps else None
