"""Acceptance: the official openai client against real `llmi runtime` processes."""

from __future__ import annotations

import base64
from collections.abc import Callable

import numpy as np
import openai
import pytest

from tests.servers import RuntimeProcess

pytestmark = pytest.mark.slow
Runtimes = Callable[[str], RuntimeProcess]


def client(rt: RuntimeProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{rt.url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.mark.parametrize("model", ["tiny-llama-chat", "tiny-qwen2-chat"])
def test_chat_plain_and_streamed_agree(runtimes: Runtimes, model: str) -> None:
    c = client(runtimes(model))
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the quick brown fox"}]
    plain = c.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=24)
    assert plain.object == "chat.completion"
    choice = plain.choices[0]
    assert choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length")
    assert plain.usage is not None
    assert plain.usage.prompt_tokens > 0
    assert plain.usage.total_tokens == plain.usage.prompt_tokens + plain.usage.completion_tokens

    stream = c.chat.completions.create(
        model=model,
        messages=messages,
        temperature=0,
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert text == choice.message.content
    assert finishes == [choice.finish_reason]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    assert len({ch.id for ch in chunks}) == 1


def test_chat_max_tokens_gives_length(runtimes: Runtimes) -> None:
    c = client(runtimes("tiny-llama-chat"))
    out = c.chat.completions.create(
        model="tiny-llama-chat",
        messages=[{"role": "user", "content": "count"}],
        temperature=0,
        max_completion_tokens=3,
        logit_bias={"0": -100},
    )
    assert out.usage is not None
    assert out.usage.completion_tokens <= 3


def test_tiny_temperature_is_greedy_not_an_error(runtimes: Runtimes) -> None:
    c = client(runtimes("tiny-llama-chat"))
    kwargs = {"model": "tiny-llama-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 12}
    greedy = c.chat.completions.create(**kwargs, temperature=0)  # type: ignore[call-overload]
    tiny = c.chat.completions.create(**kwargs, temperature=1e-9, seed=-5)  # type: ignore[call-overload]
    assert tiny.choices[0].message.content == greedy.choices[0].message.content


def test_seeded_sampling_is_reproducible(runtimes: Runtimes) -> None:
    c = client(runtimes("tiny-llama-chat"))
    kwargs = {
        "model": "tiny-llama-chat",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 16,
        "temperature": 1.5,
        "top_p": 0.95,
        "seed": 1234,
    }
    first = c.chat.completions.create(**kwargs)  # type: ignore[call-overload]
    second = c.chat.completions.create(**kwargs)  # type: ignore[call-overload]
    other = c.chat.completions.create(**{**kwargs, "seed": 99})  # type: ignore[call-overload]
    assert first.choices[0].message.content == second.choices[0].message.content
    assert first.choices[0].message.content != other.choices[0].message.content


def test_stop_string_ends_generation(runtimes: Runtimes) -> None:
    c = client(runtimes("tiny-llama-chat"))
    base = c.completions.create(model="tiny-llama-chat", prompt="the fox", max_tokens=20, temperature=0)
    text = base.choices[0].text
    visible = [ch for ch in text if ch.strip() and ch != "\ufffd"]
    if not visible:
        pytest.skip("greedy output of this random model has no visible character to stop on")
    stop = visible[min(2, len(visible) - 1)]
    cut = c.completions.create(model="tiny-llama-chat", prompt="the fox", max_tokens=20, temperature=0, stop=[stop])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].text == text[: text.index(stop)]


def test_completions(runtimes: Runtimes) -> None:
    c = client(runtimes("tiny-qwen2-chat"))
    out = c.completions.create(model="tiny-qwen2-chat", prompt=["the lazy dog", "jumps"], max_tokens=5, temperature=0)
    assert out.object == "text_completion"
    assert [ch.index for ch in out.choices] == [0, 1]
    assert out.usage is not None
    assert out.usage.completion_tokens <= 10
    streamed = c.completions.create(
        model="tiny-qwen2-chat", prompt="the lazy dog", max_tokens=5, temperature=0, stream=True
    )
    assert "".join(ch.choices[0].text for ch in streamed if ch.choices) == out.choices[0].text


@pytest.mark.parametrize("model", ["tiny-bert-embed", "tiny-qwen3-embed"])
def test_embeddings_float_base64_and_dimensions(runtimes: Runtimes, model: str) -> None:
    rt = runtimes(model)
    c = client(rt)
    texts = ["a quick brown fox", "jumps over", "the lazy dog today"]
    floats = c.embeddings.create(model=model, input=texts, encoding_format="float")
    assert [d.index for d in floats.data] == [0, 1, 2]
    vectors = np.array([d.embedding for d in floats.data])
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert floats.usage.prompt_tokens > 0

    # The SDK's default asks for base64 and decodes it itself.
    default = c.embeddings.create(model=model, input=texts)
    assert np.allclose(np.array([d.embedding for d in default.data]), vectors, atol=1e-6)
    raw = c.with_raw_response.embeddings.create(model=model, input=texts, encoding_format="base64").http_response
    first = raw.json()["data"][0]["embedding"]
    assert isinstance(first, str)
    assert np.allclose(np.frombuffer(base64.b64decode(first), dtype="<f4"), vectors[0], atol=1e-6)

    short = c.embeddings.create(model=model, input=texts, dimensions=8, encoding_format="float")
    cut = np.array([d.embedding for d in short.data])
    assert cut.shape == (3, 8)
    assert np.allclose(np.linalg.norm(cut, axis=1), 1.0, atol=1e-5)
    expected = vectors[:, :8] / np.linalg.norm(vectors[:, :8], axis=1, keepdims=True)
    assert np.allclose(cut, expected, atol=1e-5)

    single = c.embeddings.create(model=model, input=texts[0], encoding_format="float")
    assert np.allclose(single.data[0].embedding, vectors[0], atol=1e-5)


def test_embeddings_from_token_ids(runtimes: Runtimes) -> None:
    c = client(runtimes("tiny-bert-embed"))
    ids = [[2, 10, 11, 12, 3], [2, 13, 3]]
    out = c.embeddings.create(model="tiny-bert-embed", input=ids, encoding_format="float")
    assert len(out.data) == 2
    assert out.usage.prompt_tokens == 8
    one = c.embeddings.create(model="tiny-bert-embed", input=ids[1], encoding_format="float")
    assert np.allclose(one.data[0].embedding, out.data[1].embedding, atol=1e-5)
