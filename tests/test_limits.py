"""Issue 12's limits: one test per limit, each asserting the status, the envelope (naming the limit's
setting and the parameter), that the router refused before asking for a load, that the runtime
refuses the same request with the same body, and that both stay healthy afterwards.

The router runs against a control plane that records every load it is asked for and a fake
runtime on a real socket; the runtime is the real runtime app over a loaded tiny model, driven
in process. Small limits keep every over-limit body small.
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from llmi.errors import BadRequest
from llmi.limits import check_limits, image_payload_bytes, token_id
from llmi.modeltypes import ENDPOINTS, ModelType
from llmi.protocol.chat import ChatCompletionRequest
from llmi.protocol.models import ModelCard
from llmi.settings import Settings
from llmi_router.app import ROUTES, build_router_app
from llmi_router.metrics import RouterMetrics
from llmi_router.ports import OnceLease
from tests.control_stubs import ControlStubs
from tests.images import b64, picture
from tests.test_proxy import serving

aio = pytest.mark.asyncio(loop_scope="session")
CHAT, EMBED, RERANK, VIT, CLIP = "chat", "embed", "rerank", "vit", "clip"
TYPES = {CHAT: "chat", EMBED: "embedding", RERANK: "reranker", VIT: "vision", CLIP: "multimodal"}
LIMITS: dict[str, Any] = {
    "max_request_bytes": 64 * 1024,
    "max_batch_inputs": 4,
    "max_input_chars": 100,
    "max_prompts": 2,
    "max_stop_strings": 2,
    "max_stop_chars": 5,
    "max_logit_bias": 3,
    "max_instruction_chars": 10,
    "max_images_per_request": 2,
    "max_image_bytes": 1000,
    "max_tokens_limit": 8,
}
PNG = b64(picture(0, size=(8, 8)))
BIG_IMAGE = base64.b64encode(b"\x89PNG" + b"\0" * 2000).decode()  # about 2 kB: over the 1000-byte limit
MSGS = [{"role": "user", "content": "hi"}]


@dataclass(frozen=True)
class Limit:
    id: str
    path: str
    body: dict[str, Any]
    param: str
    setting: str
    status: int = 400
    code: str = "limit_exceeded"


def _chat(**extra: Any) -> dict[str, Any]:
    return {"model": CHAT, "messages": MSGS, **extra}


CASES = [
    Limit("chat-text", "/v1/chat/completions", _chat(messages=[{"role": "user", "content": "x" * 101}]), "messages",
          "LLM_MAX_INPUT_CHARS"),
    Limit("chat-text-together", "/v1/chat/completions",
          _chat(messages=[{"role": "user", "content": "x" * 60}, {"role": "assistant", "content": "y" * 60}]),
          "messages", "LLM_MAX_INPUT_CHARS"),
    Limit("stop-count", "/v1/chat/completions", _chat(stop=["a", "b", "c"]), "stop", "LLM_MAX_STOP_STRINGS"),
    Limit("stop-length", "/v1/chat/completions", _chat(stop="abcdef"), "stop", "LLM_MAX_STOP_CHARS"),
    Limit("stop-length-in-list", "/v1/chat/completions", _chat(stop=["ok", "abcdef"]), "stop.1",
          "LLM_MAX_STOP_CHARS"),
    Limit("logit-bias-size", "/v1/chat/completions", _chat(logit_bias={str(i): 1 for i in range(4)}), "logit_bias",
          "LLM_MAX_LOGIT_BIAS"),
    Limit("logit-bias-superscript-key", "/v1/chat/completions", _chat(logit_bias={"²": 1}), "logit_bias",
          "token id", code="invalid_logit_bias"),
    Limit("logit-bias-5000-digit-key", "/v1/chat/completions", _chat(logit_bias={"9" * 5000: 1}), "logit_bias",
          "token id", code="invalid_logit_bias"),
    Limit("logit-bias-negative-key", "/v1/chat/completions", _chat(logit_bias={"-1": 1}), "logit_bias",
          "token id", code="invalid_logit_bias"),
    Limit("max-tokens", "/v1/chat/completions", _chat(max_tokens=9), "max_tokens", "LLM_MAX_TOKENS_LIMIT",
          code="max_tokens_too_large"),
    Limit("max-completion-tokens", "/v1/chat/completions", _chat(max_completion_tokens=9), "max_completion_tokens",
          "LLM_MAX_TOKENS_LIMIT", code="max_tokens_too_large"),
    Limit("completion-prompts", "/v1/completions", {"model": CHAT, "prompt": ["a", "b", "c"]}, "prompt",
          "LLM_MAX_PROMPTS"),
    Limit("completion-text", "/v1/completions", {"model": CHAT, "prompt": "x" * 101}, "prompt",
          "LLM_MAX_INPUT_CHARS"),
    Limit("completion-stops", "/v1/completions", {"model": CHAT, "prompt": "a", "stop": ["1", "2", "3"]}, "stop",
          "LLM_MAX_STOP_STRINGS"),
    Limit("responses-text", "/v1/responses", {"model": CHAT, "input": "x" * 101}, "input", "LLM_MAX_INPUT_CHARS"),
    Limit("responses-text-together", "/v1/responses",
          {"model": CHAT, "instructions": "y" * 60, "input": [{"role": "user", "content": "x" * 60}]}, "input",
          "LLM_MAX_INPUT_CHARS"),
    Limit("max-output-tokens", "/v1/responses", {"model": CHAT, "input": "a", "max_output_tokens": 9},
          "max_output_tokens", "LLM_MAX_TOKENS_LIMIT", code="max_tokens_too_large"),
    Limit("embedding-inputs", "/v1/embeddings", {"model": EMBED, "input": ["a"] * 5}, "input",
          "LLM_MAX_BATCH_INPUTS"),
    Limit("embedding-text", "/v1/embeddings", {"model": EMBED, "input": "x" * 101}, "input", "LLM_MAX_INPUT_CHARS"),
    Limit("embedding-text-in-list", "/v1/embeddings", {"model": EMBED, "input": ["a", "x" * 101]}, "input.1",
          "LLM_MAX_INPUT_CHARS"),
    Limit("rerank-documents", "/v1/rerank", {"model": RERANK, "query": "q", "documents": ["d"] * 5}, "documents",
          "LLM_MAX_BATCH_INPUTS"),
    Limit("rerank-document-text", "/v2/rerank", {"model": RERANK, "query": "q", "documents": [{"text": "x" * 101}]},
          "documents.0", "LLM_MAX_INPUT_CHARS"),
    Limit("rerank-query-text", "/v1/rerank", {"model": RERANK, "query": "x" * 101, "documents": ["d"]}, "query",
          "LLM_MAX_INPUT_CHARS"),
    Limit("rerank-instruction", "/v1/rerank",
          {"model": RERANK, "query": "q", "documents": ["d"], "instruction": "x" * 11}, "instruction",
          "LLM_MAX_INSTRUCTION_CHARS"),
    Limit("tei-texts", "/rerank", {"model": RERANK, "query": "q", "texts": ["t"] * 5}, "texts",
          "LLM_MAX_BATCH_INPUTS"),
    Limit("vision-images", "/v1/vision/encode", {"model": VIT, "images": [PNG] * 3}, "images",
          "LLM_MAX_IMAGES_PER_REQUEST"),
    Limit("vision-image-bytes", "/v1/vision/encode", {"model": VIT, "images": [PNG, BIG_IMAGE]}, "images.1",
          "LLM_MAX_IMAGE_BYTES"),
    Limit("similarity-image-bytes", "/v1/vision/similarity",
          {"model": VIT, "image1": PNG, "image2": "data:image/png;base64," + BIG_IMAGE}, "image2",
          "LLM_MAX_IMAGE_BYTES"),
    Limit("multimodal-texts", "/v1/multimodal/encode", {"model": CLIP, "texts": ["t"] * 5}, "texts",
          "LLM_MAX_BATCH_INPUTS"),
    Limit("multimodal-text", "/v1/multimodal/match", {"model": CLIP, "images": [PNG], "texts": ["x" * 101]},
          "texts.0", "LLM_MAX_INPUT_CHARS"),
    Limit("multimodal-images", "/v1/multimodal/match", {"model": CLIP, "images": [PNG] * 3, "texts": ["t"]},
          "images", "LLM_MAX_IMAGES_PER_REQUEST"),
    Limit("body-bytes", "/v1/embeddings", {"model": EMBED, "input": "x", "user": "u" * (64 * 1024)}, "",
          "LLM_MAX_REQUEST_BYTES", status=413, code="request_too_large"),
]  # fmt: skip


def test_every_request_route_has_a_limit_case() -> None:
    assert {c.path for c in CASES} == set(ROUTES)


# -- the router, before any load ---------------------------------------------------------------


@dataclass
class RecordingControl(ControlStubs):
    """Every model is loadable at once; records each load the router asks for."""

    url: str = ""
    acquired: list[str] = field(default_factory=list)

    async def acquire(self, model: str, deadline_s: float) -> OnceLease:
        self.acquired.append(model)
        return OnceLease(self.url, lambda: None)

    def model_type(self, model: str) -> str | None:
        return TYPES.get(model)

    def describe(self) -> list[ModelCard]:
        return [ModelCard(id=name, type=kind) for name, kind in TYPES.items()]


def _answering_runtime() -> Starlette:
    async def answer(request: Request) -> Response:
        await request.body()
        return JSONResponse({"ok": True})

    paths = {p for ps in ENDPOINTS.values() for p in ps}
    return Starlette(routes=[Route(p, answer, methods=["POST"]) for p in sorted(paths)])


@dataclass
class Router:
    url: str
    control: RecordingControl
    client: httpx.AsyncClient


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def router() -> AsyncIterator[Router]:
    async with serve_router(RecordingControl()) as served:
        yield served


@contextlib.asynccontextmanager
async def serve_router(control: RecordingControl) -> AsyncIterator[Router]:
    """The router app with the limits of this module, in front of a runtime that answers 200."""
    app = build_router_app(control, Settings(_env_file=None, **LIMITS), RouterMetrics())  # type: ignore[call-arg]
    async with (
        serving(_answering_runtime()) as upstream,
        serving(app) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as client,
    ):
        control.url = upstream
        yield Router(url, control, client)


def check_refusal(r: httpx.Response, case: Limit) -> dict[str, Any]:
    assert r.status_code == case.status, r.text[:300]
    body: dict[str, Any] = r.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["code"] == case.code
    assert error["param"] == (case.param or None)
    assert case.setting in error["message"]
    return body


@aio
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_router_refuses_over_the_limit_before_any_load(router: Router, case: Limit) -> None:
    before = len(router.control.acquired)
    r = await router.client.post(case.path, json=case.body)
    check_refusal(r, case)
    assert len(router.control.acquired) == before, "the router asked for a load before refusing"
    # Still healthy: probes answer and a request within the limits is forwarded.
    assert (await router.client.get("/healthz")).status_code == 200
    ok = await router.client.post("/v1/embeddings", json={"model": EMBED, "input": ["a"] * 4})
    assert ok.status_code == 200, ok.text
    assert router.control.acquired[before:] == [EMBED]


@aio
async def test_exactly_at_each_limit_is_accepted(router: Router) -> None:
    within = [
        ("/v1/chat/completions", _chat(stop=["ab", "abcde"], logit_bias={"0": 1, "1": 1, "2": -1}, max_tokens=8)),
        ("/v1/chat/completions", _chat(messages=[{"role": "user", "content": "x" * 100}])),
        ("/v1/completions", {"model": CHAT, "prompt": ["a", "x" * 100]}),
        ("/v1/embeddings", {"model": EMBED, "input": ["x" * 100] * 4}),
        ("/v1/rerank", {"model": RERANK, "query": "q", "documents": ["d"] * 4, "instruction": "x" * 10}),
        ("/v1/vision/encode", {"model": VIT, "images": [PNG, PNG]}),
    ]
    for path, body in within:
        r = await router.client.post(path, json=body)
        assert r.status_code == 200, (path, r.text)


# -- the runtime, the same way -------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def runtime(tiny_models: dict[str, Path]) -> AsyncIterator[httpx.AsyncClient]:
    from llmi_runtime.app import build_app
    from llmi_runtime.engines.base import LoadOptions
    from llmi_runtime.state import Phase, RuntimeState

    settings = Settings(_env_file=None, **LIMITS)  # type: ignore[call-arg]
    state = RuntimeState(
        EMBED, ModelType.EMBEDDING, tiny_models["tiny-bert-embed"], LoadOptions(device="cpu"), settings
    )
    await state.load()
    assert state.phase is Phase.READY, state.error
    app = build_app(state)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://runtime") as client:
            yield client
    finally:
        state.close()


@aio
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_runtime_refuses_the_same_way(router: Router, runtime: httpx.AsyncClient, case: Limit) -> None:
    """The runtime's refusal is the router's, byte for byte, even for a model it does not serve:
    the limits come before the model is looked at."""
    r = await runtime.post(case.path, json=case.body)
    body = check_refusal(r, case)
    assert body == (await router.client.post(case.path, json=case.body)).json()
    assert (await runtime.get("/healthz")).status_code == 200
    ok = await runtime.post("/v1/embeddings", json={"model": EMBED, "input": ["a"] * 4})
    assert ok.status_code == 200, ok.text


# -- the pieces ------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["²", "٣", "1.0", "0x1", " 1", "1e3", "", "-0", "9" * 10, "9" * 5000])
def test_a_logit_bias_key_that_is_no_token_id_is_a_400(key: str) -> None:
    with pytest.raises(BadRequest) as info:
        token_id(key)
    assert info.value.status == 400
    assert info.value.param == "logit_bias"
    assert len(info.value.message) < 200  # a 5000-digit key is not echoed whole


def test_token_ids_parse() -> None:
    assert [token_id(k) for k in ("0", "42", "999999999")] == [0, 42, 999999999]


def test_image_size_is_estimated_from_the_base64_length() -> None:
    raw = bytes(range(256)) * 4
    text = base64.b64encode(raw).decode()
    assert abs(image_payload_bytes(text) - len(raw)) <= 2
    assert image_payload_bytes("data:image/png;base64," + text) == image_payload_bytes(text)


def test_defaults_are_safe_and_set_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    assert (defaults.max_stop_strings, defaults.max_stop_chars, defaults.max_logit_bias) == (16, 1000, 1024)
    assert (defaults.max_prompts, defaults.max_instruction_chars) == (64, 4096)
    monkeypatch.setenv("LLM_MAX_STOP_STRINGS", "1")
    monkeypatch.setenv("LLM_MAX_INSTRUCTION_CHARS", "3")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert (settings.max_stop_strings, settings.max_instruction_chars) == (1, 3)
    req = ChatCompletionRequest.model_validate_json(json.dumps(_chat(stop=["a", "b"])))
    with pytest.raises(BadRequest, match="LLM_MAX_STOP_STRINGS"):
        check_limits(req, settings)
    check_limits(req, defaults)


# -- vLLM's chat models: forwarded unparsed, yet limited ---------------------------------------------


@dataclass
class VllmControl(RecordingControl):
    """The chat model is served by vLLM, which validates bodies itself (tools, logprobs, n)."""

    def engine(self, model: str) -> str | None:
        return "vllm" if model == CHAT else "transformers"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def vllm_router() -> AsyncIterator[Router]:
    async with serve_router(VllmControl()) as served:
        yield served


CHAT_CASES = [c for c in CASES if c.body.get("model") == CHAT]


@aio
@pytest.mark.parametrize("case", CHAT_CASES, ids=[c.id for c in CHAT_CASES])
async def test_a_vllm_model_is_limited_the_same_way_before_any_load(vllm_router: Router, case: Limit) -> None:
    before = len(vllm_router.control.acquired)
    check_refusal(await vllm_router.client.post(case.path, json=case.body), case)
    assert len(vllm_router.control.acquired) == before
    # What only vLLM honours still passes through to it.
    ok = await vllm_router.client.post("/v1/chat/completions", json=_chat(n=2, logprobs=True, stop=["a", "b"]))
    assert ok.status_code == 200, ok.text
    assert vllm_router.control.acquired[before:] == [CHAT]


# -- large work stays off the model's thread ---------------------------------------------------------


@aio
async def test_templating_and_tokenizing_run_off_the_model_thread(tiny_models: dict[str, Path]) -> None:
    import threading

    from llmi_runtime.app import build_app
    from llmi_runtime.engines.base import LoadOptions
    from llmi_runtime.state import Phase, RuntimeState

    settings = Settings(_env_file=None, **LIMITS)  # type: ignore[call-arg]
    state = RuntimeState(CHAT, ModelType.CHAT, tiny_models["tiny-llama-chat"], LoadOptions(device="cpu"), settings)
    await state.load()
    assert state.phase is Phase.READY, state.error
    threads: dict[str, str] = {}
    engine = state.engine

    def recorded(name: str, fn: Any) -> Any:
        def run(*args: Any) -> Any:
            threads[name] = threading.current_thread().name
            return fn(*args)

        return run

    engine.chat_prompt = recorded("chat_prompt", engine.chat_prompt)
    engine.text_prompt = recorded("text_prompt", engine.text_prompt)
    try:
        transport = httpx.ASGITransport(app=build_app(state))
        async with httpx.AsyncClient(transport=transport, base_url="http://runtime", timeout=60) as client:
            chat = await client.post("/v1/chat/completions", json=_chat(max_tokens=2))
            assert chat.status_code == 200, chat.text
            done = await client.post("/v1/completions", json={"model": CHAT, "prompt": "hi", "max_tokens": 2})
            assert done.status_code == 200, done.text
    finally:
        state.close()
    # Not the model's thread ("model-worker", where they ran before), nor the event loop's.
    assert threads["chat_prompt"].startswith("prepare"), threads
    assert threads["text_prompt"].startswith("prepare"), threads
