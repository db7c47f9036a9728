"""The Responses API with the official openai client: ``client.responses.create``, plain and
streamed, against a real runtime and through `llmi serve`; the same tokens as chat completions."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.serve_process import ServeProcess, model_folder, start_serve
from tests.servers import RuntimeProcess, runtime_env

pytestmark = pytest.mark.slow
Runtimes = Callable[[str], RuntimeProcess]
MODEL = "tiny-llama-chat"
CONVERSATION = [
    {"role": "user", "content": "the quick brown fox"},
    {"role": "assistant", "content": [{"type": "output_text", "text": "jumps"}]},
    {"role": "user", "content": [{"type": "input_text", "text": "over the lazy dog"}]},
]


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def serve(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    root = tmp_path_factory.mktemp("responses")
    models = model_folder(tiny_models, root / "models", [MODEL])
    server = start_serve(models, root, "--cpu-memory-gb", "8", env=runtime_env(LLM_AUTO_UNLOAD_MODELS="false"))
    yield server
    server.stop()


def test_a_response_is_the_chat_completion_of_the_same_conversation(runtimes: Runtimes) -> None:
    c = client(runtimes(MODEL).url)
    out = c.responses.create(
        model=MODEL, instructions="be brief", input=CONVERSATION, temperature=0, max_output_tokens=12
    )
    chat = c.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "the quick brown fox"},
            {"role": "assistant", "content": "jumps"},
            {"role": "user", "content": "over the lazy dog"},
        ],
        temperature=0,
        max_tokens=12,
    )
    assert out.object == "response"
    assert out.id.startswith("resp")
    assert out.output_text == chat.choices[0].message.content
    assert out.usage is not None
    assert chat.usage is not None
    assert out.usage.input_tokens == chat.usage.prompt_tokens
    assert out.usage.output_tokens == chat.usage.completion_tokens
    cut = chat.choices[0].finish_reason == "length"
    assert out.status == ("incomplete" if cut else "completed")
    assert (out.incomplete_details is not None) == cut


def test_a_streamed_response_sends_openais_events_and_the_same_text(runtimes: Runtimes) -> None:
    c = client(runtimes(MODEL).url)
    plain = c.responses.create(model=MODEL, input="count to ten", temperature=0, max_output_tokens=8)
    events = list(
        c.responses.create(model=MODEL, input="count to ten", temperature=0, max_output_tokens=8, stream=True)
    )
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    final = "response.completed" if plain.status == "completed" else "response.incomplete"
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done", final]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == plain.output_text
    assert events[-1].response.output_text == plain.output_text  # type: ignore[union-attr]


def test_through_the_router_and_what_only_vllm_honours_is_refused(serve: ServeProcess) -> None:
    c = client(serve.url)
    out = c.responses.create(model=MODEL, input="hello", temperature=0, max_output_tokens=4)
    assert out.output_text
    streamed = list(c.responses.create(model=MODEL, input="hello", temperature=0, max_output_tokens=4, stream=True))
    assert streamed[-1].response.output_text == out.output_text  # type: ignore[union-attr]
    with pytest.raises(openai.BadRequestError) as caught:
        c.responses.create(model=MODEL, input="hi", previous_response_id="resp_1")
    assert caught.value.body["param"] == "previous_response_id"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as tools:
        c.responses.create(model=MODEL, input="hi", tools=[{"type": "web_search"}])  # type: ignore[list-item]
    assert tools.value.body["code"] == "unsupported_parameter"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        c.responses.create(model="no-such-model", input="hi")


def test_retrieving_or_deleting_a_response_says_none_are_kept(serve: ServeProcess) -> None:
    c = client(serve.url)
    made = c.responses.create(model=MODEL, input="hello", temperature=0, max_output_tokens=2)
    for call in (c.responses.retrieve, c.responses.delete, c.responses.input_items.list):
        with pytest.raises(openai.NotFoundError) as caught:
            call(made.id)
        body = caught.value.body
        assert isinstance(body, dict)
        assert body["code"] == "response_not_found"  # not "Invalid URL": the route is known
        assert body["param"] == "response_id"
        assert "keeps no responses" in body["message"]
    spec = httpx.get(f"{serve.url}/openapi.json", timeout=30).json()
    paths = spec["paths"]
    item = paths["/v1/responses/{response_id}"]
    assert {item["get"]["operationId"], item["delete"]["operationId"]} == {"getResponse", "deleteResponse"}
    # Documented as what it always is: a 404 in the error envelope.
    for op in [*item.values(), paths["/v1/responses/{response_id}/input_items"]["get"]]:
        assert op["responses"]["404"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
        assert not {"200", "422"} & set(op["responses"])
