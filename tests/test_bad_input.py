"""Acceptance: every endpoint answers bad input with a 4xx OpenAI error envelope and stays healthy.

The table is built from one valid body per endpoint: generic breakages (JSON, types, missing,
empty, unknown fields, size, model names) apply to all, specific ones to each family.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.images import b64, encode, picture
from tests.servers import RuntimeProcess

pytestmark = pytest.mark.slow
Runtimes = Callable[[str], RuntimeProcess]
LIMIT = 2 * 1024 * 1024  # LLM_MAX_REQUEST_BYTES of the test runtimes

PNG = b64(picture(0, size=(16, 16)))
ENDPOINTS: dict[str, tuple[str, dict[str, Any]]] = {
    "/v1/chat/completions": ("tiny-llama-chat", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}),
    "/v1/completions": ("tiny-llama-chat", {"prompt": "hi", "max_tokens": 2}),
    "/v1/responses": ("tiny-llama-chat", {"input": "hi", "max_output_tokens": 2}),
    "/v1/embeddings": ("tiny-bert-embed", {"input": ["hi"]}),
    "/v1/rerank": ("tiny-bert-reranker", {"query": "q", "documents": ["a", "b"]}),
    "/v1/vision/encode": ("tiny-vit", {"images": [PNG]}),
    "/v1/vision/similarity": ("tiny-vit", {"image1": PNG, "image2": PNG}),
    "/v1/multimodal/encode": ("tiny-clip", {"images": [PNG], "texts": ["t"]}),
    "/v1/multimodal/match": ("tiny-clip", {"images": [PNG], "texts": ["t"]}),
}

# Fields without which a request is incomplete (multimodal/encode needs either of two).
REQUIRED: dict[str, tuple[str, ...]] = {
    "/v1/chat/completions": ("messages",),
    "/v1/completions": ("prompt",),
    "/v1/responses": ("input",),
    "/v1/embeddings": ("input",),
    "/v1/rerank": ("query", "documents"),
    "/v1/vision/encode": ("images",),
    "/v1/vision/similarity": ("image1", "image2"),
    "/v1/multimodal/encode": (),
    "/v1/multimodal/match": ("images", "texts"),
}


def _bomb() -> str:
    """100 megapixels of one grey: about 100 kB as PNG, 100 MB once decoded."""
    return base64.b64encode(encode(Image.new("L", (10_000, 10_000), 7), "PNG", optimize=True)).decode()


def _truncated_png() -> str:
    return base64.b64encode(encode(picture(1), "PNG")[:60]).decode()


BAD_IMAGES: dict[str, tuple[str, int]] = {
    "not-base64": ("@@@ not base64 !!!", 400),
    "text-not-image": (base64.b64encode(b"hello, I am not an image at all").decode(), 400),
    "truncated-png": (_truncated_png(), 400),
    "url": ("https://example.com/cat.png", 400),
    "path": ("/etc/passwd", 400),
    "text-data-url": ("data:text/plain;base64," + base64.b64encode(b"hello").decode(), 400),
    "bad-data-url": ("data:image/png,rawbytes", 400),
    "pdf-bytes": (base64.b64encode(b"%PDF-1.4\n%\xe2\xe3\n1 0 obj\n").decode(), 400),
    "empty": ("", 400),
}


@dataclass(frozen=True)
class Case:
    id: str
    path: str
    body: Any  # dict → JSON; bytes → sent raw
    status: int
    param: str | None = None


def cases() -> list[Case]:
    out: list[Case] = []
    for path, (model, valid) in ENDPOINTS.items():
        full = {"model": model, **valid}
        name = path.removeprefix("/v1/")

        def add(
            id_: str, body: Any, status: int = 400, param: str | None = None, path: str = path, name: str = name
        ) -> None:
            out.append(Case(f"{name}:{id_}", path, body, status, param))

        add("malformed-json", b'{"model": ')
        add("trailing-garbage", json.dumps(full).encode() + b"}")
        add("array-body", b"[1, 2, 3]")
        add("string-body", b'"hello"')
        add("null-body", b"null")
        add("empty-body", b"")
        add("not-utf8", b'{"model": "\xff\xfe"}')
        add("utf16-body", json.dumps(full).encode("utf-16"))
        add("deeply-nested", b'{"model": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
        add("lone-surrogate", json.dumps(full)[:-1].encode() + b', "user": "\\ud800"}')
        add("huge-integer", json.dumps(full)[:-1].encode() + b', "model": ' + b"9" * 5000 + b"}")
        add("nan-model", json.dumps(full)[:-1].encode() + b', "model": NaN}')
        add("missing-model", {k: v for k, v in full.items() if k != "model"}, param="model")
        add("model-wrong-type", {**full, "model": 123}, param="model")
        add("model-empty", {**full, "model": ""}, param="model")
        add("unknown-model", {**full, "model": "no-such-model"}, 404, param="model")
        add("path-like-model", {**full, "model": "../../../etc/passwd"}, 404, param="model")
        add("model-with-nul", {**full, "model": "tiny\u0000chat"}, 404, param="model")
        add("unknown-field", {**full, "bogus_field": 1}, param="bogus_field")
        add("oversize", {**full, "pad": "x" * (LIMIT + 10)}, 413)
        for key in REQUIRED[path]:
            value = valid[key]
            add(f"missing-{key}", {k: v for k, v in full.items() if k != key}, param=key)
            add(f"{key}-wrong-type", {**full, key: {"nested": True}}, param=key)
            add(f"{key}-null", {**full, key: None}, param=key)
            if isinstance(value, list):
                add(f"{key}-empty-list", {**full, key: []}, param=key)
                add(f"{key}-wrong-item-type", {**full, key: [12345]})
        if "images" in valid or "image1" in valid:
            field = "images" if "images" in valid else "image1"
            for bad, (data, status) in BAD_IMAGES.items():
                add(f"image-{bad}", {**full, field: [data] if field == "images" else data}, status)
            add("image-bomb", {**full, field: [_bomb()] if field == "images" else _bomb()}, 400)
        if "images" in valid:
            add("too-many-images", {**full, "images": [PNG] * 65})
            # 30 images of 48x40 pixels: over the 50,000 pixels the test runtimes allow per request.
            add("too-many-pixels", {**full, "images": [b64(picture(i)) for i in range(30)]})
        other = "/v1/embeddings" if path != "/v1/embeddings" else "/v1/chat/completions"
        wrong = (
            {"model": model, "input": "x"}
            if other == "/v1/embeddings"
            else {"model": model, "messages": [{"role": "user", "content": "x"}]}
        )
        out.append(Case(f"{name}:wrong-endpoint-for-model", other, wrong, 400, "model"))

    chat = ENDPOINTS["/v1/chat/completions"][0]
    msgs = [{"role": "user", "content": "hi"}]
    chat_cases: dict[str, tuple[dict[str, Any], str | None]] = {
        "role-unknown": ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
        "content-number": ({"messages": [{"role": "user", "content": 5}]}, None),
        "message-not-object": ({"messages": ["hi"]}, None),
        "temperature-string": ({"messages": msgs, "temperature": "hot"}, "temperature"),
        "temperature-too-high": ({"messages": msgs, "temperature": 5}, "temperature"),
        "top-p-zero": ({"messages": msgs, "top_p": 0}, "top_p"),
        "max-tokens-zero": ({"messages": msgs, "max_tokens": 0}, "max_tokens"),
        "max-tokens-negative": ({"messages": msgs, "max_tokens": -5}, "max_tokens"),
        "max-tokens-float": ({"messages": msgs, "max_tokens": 2.5}, "max_tokens"),
        "max-tokens-beyond-context": ({"messages": msgs, "max_tokens": 100_000}, "max_tokens"),
        "prompt-beyond-context": ({"messages": [{"role": "user", "content": "fox " * 3000}]}, "messages"),
        "n-two": ({"messages": msgs, "n": 2}, "n"),
        "stream-string": ({"messages": msgs, "stream": "yes"}, "stream"),
        "stream-options-without-stream": ({"messages": msgs, "stream_options": {"include_usage": True}}, None),
        "tools": ({"messages": msgs, "tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        "logprobs": ({"messages": msgs, "logprobs": True}, "logprobs"),
        "response-format-json": ({"messages": msgs, "response_format": {"type": "json_object"}}, "response_format"),
        "image-part": (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64," + PNG}}],
                    }
                ]
            },
            "messages",
        ),
        "unknown-part": ({"messages": [{"role": "user", "content": [{"type": "video", "x": 1}]}]}, None),
        "too-many-stops": ({"messages": msgs, "stop": [str(i) for i in range(20)]}, "stop"),
        "empty-stop": ({"messages": msgs, "stop": [""]}, None),
        "logit-bias-bad-key": ({"messages": msgs, "logit_bias": {"abc": 1}}, "logit_bias"),
        "logit-bias-out-of-vocab": ({"messages": msgs, "logit_bias": {"99999999": 1}}, "logit_bias"),
        "logit-bias-too-big": ({"messages": msgs, "logit_bias": {"1": 500}}, None),
        "penalty-out-of-range": ({"messages": msgs, "presence_penalty": 3}, "presence_penalty"),
        "seed-string": ({"messages": msgs, "seed": "42"}, "seed"),
        "temperature-nan": ({"messages": msgs, "temperature": float("nan")}, "temperature"),
        "top-p-infinite": ({"messages": msgs, "top_p": float("inf")}, "top_p"),
        "seed-beyond-64-bits": ({"messages": msgs, "seed": 10**30}, "seed"),
        "logit-bias-too-many": ({"messages": msgs, "logit_bias": {str(i): 1 for i in range(2000)}}, "logit_bias"),
        # Keys that pass str.isdigit() but are no int, or too long for int(): a 400, not a 500.
        "logit-bias-superscript-key": ({"messages": msgs, "logit_bias": {"²": 1}}, "logit_bias"),
        "logit-bias-5000-digit-key": ({"messages": msgs, "logit_bias": {"9" * 5000: 1}}, "logit_bias"),
        "too-long-stop": ({"messages": msgs, "stop": ["x" * 1001]}, "stop.0"),
    }
    for id_, (body, param) in chat_cases.items():
        out.append(Case(f"chat:{id_}", "/v1/chat/completions", {"model": chat, **body}, 400, param))
    responses_cases: dict[str, tuple[dict[str, Any], str | None]] = {
        "input-empty-string": ({"input": ""}, "input"),
        "input-empty-list": ({"input": []}, "input"),
        "item-of-unknown-type": ({"input": [{"type": "function_call_output", "call_id": "1", "output": "x"}]}, None),
        "role-unknown": ({"input": [{"role": "wizard", "content": "hi"}]}, None),
        "image-part": ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": PNG}]}]}, None),
        "previous-response-id": ({"input": "hi", "previous_response_id": "resp_1"}, "previous_response_id"),
        "tools": ({"input": "hi", "tools": [{"type": "web_search"}]}, "tools"),
        "json-schema-format": ({"input": "hi", "text": {"format": {"type": "json_schema"}}}, "text"),
        "max-output-tokens-zero": ({"input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
        "max-output-tokens-beyond-context": ({"input": "hi", "max_output_tokens": 100_000}, "max_output_tokens"),
        "prompt-beyond-context": ({"input": "fox " * 3000}, "input"),
        "temperature-too-high": ({"input": "hi", "temperature": 5}, "temperature"),
    }
    for id_, (body, param) in responses_cases.items():
        out.append(Case(f"responses:{id_}", "/v1/responses", {"model": chat, **body}, 400, param))
    completion_cases: dict[str, dict[str, Any]] = {
        "prompt-empty-ids": {"prompt": [[]]},
        "prompt-negative-id": {"prompt": [-1, 2]},
        "prompt-id-out-of-vocab": {"prompt": [10**9]},
        "prompt-mixed": {"prompt": [1, "a"]},
        "echo": {"prompt": "hi", "echo": True},
        "best-of": {"prompt": "hi", "best_of": 2},
        "suffix": {"prompt": "hi", "suffix": "x"},
        "stream-many-prompts": {"prompt": ["a", "b"], "stream": True},
    }
    for id_, body in completion_cases.items():
        out.append(Case(f"completions:{id_}", "/v1/completions", {"model": chat, "max_tokens": 2, **body}, 400))
    embed = ENDPOINTS["/v1/embeddings"][0]
    embedding_cases: dict[str, dict[str, Any]] = {
        "input-empty-string": {"input": ""},
        "input-list-with-empty": {"input": ["ok", ""]},
        "input-mixed": {"input": [1, "a"]},
        "input-empty-ids": {"input": [[]]},
        "input-id-out-of-vocab": {"input": [10**9]},
        "input-bool": {"input": True},
        "dimensions-zero": {"input": "a", "dimensions": 0},
        "dimensions-too-big": {"input": "a", "dimensions": 100_000},
        "encoding-hex": {"input": "a", "encoding_format": "hex"},
        "too-many-inputs": {"input": ["a"] * 65},
    }
    for id_, body in embedding_cases.items():
        out.append(Case(f"embeddings:{id_}", "/v1/embeddings", {"model": embed, **body}, 400))
    rr = ENDPOINTS["/v1/rerank"][0]
    rerank_cases: dict[str, dict[str, Any]] = {
        "query-empty": {"query": "", "documents": ["a"]},
        "top-n-zero": {"query": "q", "documents": ["a"], "top_n": 0},
        "top-n-string": {"query": "q", "documents": ["a"], "top_n": "1"},
        "top-n-top-k-disagree": {"query": "q", "documents": ["a"], "top_n": 1, "top_k": 2},
        "document-object-wrong-key": {"query": "q", "documents": [{"txt": "a"}]},
        "return-documents-string": {"query": "q", "documents": ["a"], "return_documents": "yes"},
        "too-many-documents": {"query": "q", "documents": ["a"] * 65},
        "instruction-too-long": {"query": "q", "documents": ["a"], "instruction": "x" * 5000},
    }
    for id_, body in rerank_cases.items():
        out.append(Case(f"rerank:{id_}", "/v1/rerank", {"model": rr, **body}, 400))
    clip = ENDPOINTS["/v1/multimodal/encode"][0]
    out.append(Case("multimodal/encode:nothing", "/v1/multimodal/encode", {"model": clip}, 400))
    out.append(Case("multimodal/encode:empty-text", "/v1/multimodal/encode", {"model": clip, "texts": [""]}, 400))
    return out


CASES = cases()


def check_envelope(response: httpx.Response, case: Case) -> None:
    assert response.status_code == case.status, f"{case.id}: {response.status_code} {response.text[:500]}"
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str)
    assert error["message"]
    assert isinstance(error["type"], str)
    assert error["code"] is None or isinstance(error["code"], str)
    if case.param is not None:
        assert error["param"] == case.param, error


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gets_openai_error(runtimes: Runtimes, case: Case) -> None:
    model = ENDPOINTS[case.path][0] if case.path in ENDPOINTS else "tiny-llama-chat"
    if case.id.endswith("wrong-endpoint-for-model"):
        model = case.body["model"]
    rt = runtimes(model)
    content = case.body if isinstance(case.body, bytes) else json.dumps(case.body).encode()
    with httpx.Client(base_url=rt.url, timeout=60) as client:
        response = client.post(case.path, content=content, headers={"content-type": "application/json"})
        check_envelope(response, case)
        assert client.get("/readyz").status_code == 200


def test_chunked_oversize_body_is_refused(runtimes: Runtimes) -> None:
    """No Content-Length: the limit is enforced while the body streams in."""
    rt = runtimes("tiny-bert-embed")

    def chunks():  # type: ignore[no-untyped-def]
        yield b'{"model": "tiny-bert-embed", "input": "'
        for _ in range(40):
            yield b"x" * 65536
        yield b'"}'

    with httpx.Client(base_url=rt.url, timeout=60) as client:
        response = client.post("/v1/embeddings", content=chunks())
        check_envelope(response, Case("chunked", "/v1/embeddings", None, 413))
        assert client.get("/readyz").status_code == 200


@pytest.mark.parametrize(
    "method_path", [("GET", "/v1/chat/completions"), ("POST", "/v1/nope"), ("GET", "/nope"), ("DELETE", "/v1/models")]
)
def test_unknown_routes_and_methods_use_the_envelope(runtimes: Runtimes, method_path: tuple[str, str]) -> None:
    method, path = method_path
    rt = runtimes("tiny-llama-chat")
    response = httpx.request(method, f"{rt.url}{path}", timeout=30)
    assert response.status_code in (404, 405)
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("path", ["/v1/models", "/readyz", "/metrics"])
def test_head_is_answered_as_get_without_a_body(runtimes: Runtimes, path: str) -> None:
    rt = runtimes("tiny-llama-chat")
    with httpx.Client(base_url=rt.url, timeout=30) as client:
        head, get = client.head(path), client.get(path)
        assert head.status_code == get.status_code == 200
        assert head.content == b""
        assert head.headers["content-type"] == get.headers["content-type"]
        assert client.get("/readyz").status_code == 200, "the connection stays usable after a HEAD"


def test_images_in_every_format_are_accepted(runtimes: Runtimes) -> None:
    rt = runtimes("tiny-vit")
    img = picture(9)
    palette = img.convert("P")
    gif = io.BytesIO()
    img.save(gif, format="GIF", save_all=True, append_images=[picture(10).convert("P")])
    images = [
        b64(img, "JPEG"),
        b64(img, "PNG"),
        b64(img, "WEBP"),
        b64(img, "BMP"),
        base64.b64encode(gif.getvalue()).decode(),
        b64(img.convert("RGBA"), "PNG"),
        b64(palette, "PNG"),
        b64(img.convert("L"), "PNG"),
        "data:image/png;base64," + b64(img, "PNG"),
        "data:image/jpeg;base64," + b64(img, "JPEG"),
    ]
    response = httpx.post(f"{rt.url}/v1/vision/encode", json={"model": "tiny-vit", "images": images}, timeout=60)
    assert response.status_code == 200, response.text
    assert len(response.json()["embeddings"]) == len(images)
