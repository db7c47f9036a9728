"""How many tokens a chat request may generate, and the 400 that says why when none fit.

Pure: ``ChatEngine.token_budget`` reads only the model's context length, so a stand-in with
that one attribute runs it without loading a model."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from llmi.errors import BadRequest
from llmi_runtime.engines.chat import ChatEngine

MODEL = SimpleNamespace(context_length=100)


CHAT = ("messages", "max_tokens")


def budget(prompt: int, requested: int | None, default: int | None = None, names: tuple[str, str] = CHAT) -> int:
    return ChatEngine.token_budget(MODEL, prompt, requested, default, names)  # type: ignore[arg-type]


def refusal(prompt: int, requested: int | None, names: tuple[str, str] = CHAT) -> dict[str, str]:
    with pytest.raises(BadRequest) as caught:
        budget(prompt, requested, names=names)
    error: dict[str, str] = caught.value.body()["error"]
    return error


def test_without_max_tokens_the_rest_of_the_context_or_the_default() -> None:
    assert budget(30, None) == 70
    assert budget(30, None, default=16) == 16
    assert budget(90, None, default=16) == 10  # the default never passes the context
    assert budget(30, 70) == 70


def test_a_prompt_that_fills_the_context_names_the_prompt_and_its_tokens() -> None:
    error = refusal(100, None)
    assert error["code"] == "context_length_exceeded"
    assert error["param"] == "messages"
    assert error["message"] == (
        "This model's maximum context length is 100 tokens; the prompt has 100 tokens, "
        "which leaves none to generate. Shorten messages."
    )


def test_too_many_requested_tokens_says_how_many_fit_in_the_api_s_own_names() -> None:
    error = refusal(30, 71, names=("input", "max_output_tokens"))
    assert error["param"] == "max_output_tokens"
    assert error["message"] == (
        "This model's maximum context length is 100 tokens; the prompt has 30 tokens "
        "and max_output_tokens asks for 71 more; at most 70 fit."
    )
