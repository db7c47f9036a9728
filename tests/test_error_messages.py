"""Validation errors read as sentences for people: the field named, a stable code where llmi
refuses what only vLLM honours, a union's problem told by the branch that fits, no pydantic
prefixes. Pure: the protocol models through ``parse_json``, as both router and runtime use them."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel

from llmi.errors import BadRequest, WrongModelType
from llmi.protocol.chat import ChatCompletionRequest, CompletionRequest
from llmi.protocol.embeddings import EmbeddingRequest
from llmi.web import parse_json

HI = [{"role": "user", "content": "hi"}]


def refusal(model: type[BaseModel], **body: Any) -> dict[str, Any]:
    with pytest.raises(BadRequest) as caught:
        parse_json(json.dumps({"model": "m", **body}).encode(), model)
    error: dict[str, Any] = caught.value.body()["error"]
    return error


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools", "tool calling"),
        ({"logprobs": True}, "logprobs", "log probabilities"),
        ({"top_logprobs": 3}, "top_logprobs", "log probabilities"),
        ({"n": 2}, "n", "more than one choice"),
        ({"response_format": {"type": "json_object"}}, "response_format", "type 'json_object'"),
    ],
)
def test_what_only_vllm_honours_is_refused_by_name_with_a_code(body: dict[str, Any], param: str, words: str) -> None:
    error = refusal(ChatCompletionRequest, messages=HI, **body)
    assert error["param"] == param
    assert error["code"] == "unsupported_parameter"
    assert error["message"].startswith(f"{param}: {words}")
    assert "vLLM" in error["message"]
    assert "should" not in error["message"]  # not pydantic's "List should have at most 0 items"


def test_neutral_values_of_refused_fields_are_accepted() -> None:
    body = {
        "messages": HI,
        "tools": [],
        "logprobs": False,
        "top_logprobs": 0,
        "n": 1,
        "response_format": {"type": "text"},
    }
    parsed = parse_json(json.dumps({"model": "m", **body}).encode(), ChatCompletionRequest)
    assert parsed.n == 1
    assert parsed.tools == []


def test_a_non_text_part_names_its_message_and_part() -> None:
    content = [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "x"}}]
    error = refusal(ChatCompletionRequest, messages=[HI[0], {"role": "user", "content": content}])
    assert error["param"] == "messages"
    assert error["code"] == "unsupported_parameter"
    assert "message 1" in error["message"]
    assert "'image_url' (part 1)" in error["message"]


def test_completions_refusals_say_what_is_missing() -> None:
    assert refusal(CompletionRequest, prompt="x", echo=True)["message"].startswith("echo: echoing the prompt")
    assert refusal(CompletionRequest, prompt="x", suffix="y")["param"] == "suffix"
    assert parse_json(b'{"model": "m", "prompt": "x", "suffix": null}', CompletionRequest).suffix is None


def test_a_constraint_of_the_fitting_union_branch_wins_over_type_mismatches() -> None:
    empty = refusal(EmbeddingRequest, input=[])
    assert empty["message"] == "input: List should have at least 1 item after validation, not 0"
    assert empty["param"] == "input"
    assert "more problem" not in empty["message"]  # one field, one problem: not four branches


def test_a_union_mismatch_points_where_the_branches_got_furthest() -> None:
    error = refusal(EmbeddingRequest, input=["a", 3])
    assert error["param"] == "input.1"
    assert error["message"] == "input.1: Input should be a valid string or a valid array"
    nested = refusal(EmbeddingRequest, input=[[1, 2], [3, "x"]])
    assert nested["message"] == "input.1.1: Input should be a valid integer"


def test_value_errors_lose_pydantics_prefix_and_counts_agree_in_number() -> None:
    error = refusal(ChatCompletionRequest, messages=HI, stream_options={"include_usage": True})
    assert error["message"] == "stream_options is only allowed when stream is true"
    two = refusal(EmbeddingRequest, input="x", bogus=1, other=2)
    assert two["message"] == "bogus: Unrecognized request argument supplied (and 1 more problem)"


def test_the_schema_still_says_what_the_transformers_engine_takes() -> None:
    props = ChatCompletionRequest.model_json_schema()["properties"]
    assert {"type": "array", "items": {"additionalProperties": True, "type": "object"}, "maxItems": 0} in props[
        "tools"
    ]["anyOf"]
    assert {"type": "boolean", "const": False} in props["logprobs"]["anyOf"]
    assert {"type": "integer", "minimum": 1, "maximum": 1} in props["n"]["anyOf"]


def test_wrong_model_type_reads_as_english() -> None:
    assert "is an embedding model" in WrongModelType("e5", "embedding", "/v1/chat/completions").message
    assert "is a chat model" in WrongModelType("smol", "chat", "/v1/embeddings").message


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize(
    ("model", "field", "body"),
    [
        (ChatCompletionRequest, "temperature", {"messages": HI}),
        (ChatCompletionRequest, "top_p", {"messages": HI}),
        (ChatCompletionRequest, "frequency_penalty", {"messages": HI}),
        (CompletionRequest, "presence_penalty", {"prompt": "hi"}),
    ],
)
def test_nan_and_infinity_are_not_finite_numbers(
    model: type[BaseModel], field: str, body: dict[str, Any], literal: str
) -> None:
    # JSON has no NaN or Infinity, but parsers (Python's, pydantic's) accept them: without the
    # finite check, NaN read "should be less than or equal to 2", which it is not about.
    raw = json.dumps({"model": "m", **body})[:-1] + f', "{field}": {literal}}}'
    with pytest.raises(BadRequest) as caught:
        parse_json(raw.encode(), model)
    error = caught.value.body()["error"]
    assert error["param"] == field
    assert error["message"] == f"{field}: Input should be a finite number"
