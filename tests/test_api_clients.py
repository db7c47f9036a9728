"""`llmi serve` as a process, read by tools and driven by the clients people use: its OpenAPI
description (checked, then fuzzed with schemathesis for a bounded number of examples), the
`cohere` SDK (v1 and v2 clients), LangChain's OpenAI classes and a TEI-style rerank request."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cohere
import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langchain_openai import ChatOpenAI, OpenAIEmbeddings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.serve_process import ServeProcess, model_folder, start_serve
from tests.servers import runtime_env

pytestmark = pytest.mark.slow
CHAT, EMBED, RERANK = "tiny-llama-chat", "tiny-bert-embed", "tiny-bert-reranker"
VIT, CLIP = "tiny-vit", "tiny-clip"
# Which model each request schema is fuzzed with (the rest of the body is the fuzzer's).
MODEL_OF = {
    "ChatCompletionRequest": CHAT,
    "CompletionRequest": CHAT,
    "ResponseRequest": CHAT,
    "EmbeddingRequest": EMBED,
    "RerankRequest": RERANK,
    "TeiRerankRequest": RERANK,
    "VisionEncodeRequest": VIT,
    "VisionSimilarityRequest": VIT,
    "MultimodalEncodeRequest": CLIP,
    "MultimodalMatchRequest": CLIP,
}
FUZZED = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/responses",
    "/v1/embeddings",
    "/v1/rerank",
    "/v2/rerank",
    "/rerank",
    "/v1/vision/encode",
    "/v1/vision/similarity",
    "/v1/multimodal/encode",
    "/v1/multimodal/match",
]
# Per operation and mode (valid and invalid bodies): 300 generated cases per POST endpoint, 3300 in
# all, about 2 of the module's 2-3 minutes on two CPU cores (chat, which generates, is the most).
EXAMPLES = 150


@pytest.fixture(scope="module")
def serve(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    root = tmp_path_factory.mktemp("clients")
    models = model_folder(tiny_models, root / "models", [CHAT, EMBED, RERANK, VIT, CLIP], memory="1GiB")
    # Small caps keep fuzzed chats cheap; the limits make huge bodies cheap to refuse.
    env = runtime_env(
        LLM_MODEL_CACHE_SIZE="5",
        LLM_AUTO_UNLOAD_MODELS="false",
        LLM_MAX_TOKENS_DEFAULT="4",
        LLM_MAX_TOKENS_LIMIT="8",
        LLM_MAX_REQUEST_BYTES=str(256 * 1024),
        LLM_MAX_BATCH_INPUTS="32",
    )
    server = start_serve(models, root, "--cpu-memory-gb", "6", env=env)
    yield server
    server.stop()


def test_openapi_names_request_and_error_schemas(serve: ServeProcess) -> None:
    spec = httpx.get(f"{serve.url}/openapi.json", timeout=30).json()
    posts = {path: item["post"] for path, item in spec["paths"].items() if "post" in item}
    assert set(FUZZED) <= set(posts)
    schemas = spec["components"]["schemas"]
    for path, op in posts.items():
        assert op["operationId"] != "Handler", path
        assert op["summary"], path
        if "admin" in op.get("tags", []):  # load/unload take no body; every admin error is the envelope
            for status in ("400", "401", "404", "501"):
                error = op["responses"][status]["content"]["application/json"]["schema"]
                assert error == {"$ref": "#/components/schemas/ErrorResponse"}, (path, status)
            continue
        body = op["requestBody"]["content"]["application/json"]["schema"]
        refs = [body] if "$ref" in body else body["oneOf"]
        for ref in refs:
            assert ref["$ref"].split("/")[-1] in schemas, path
        for status in ("400", "404", "413", "429", "503"):
            error = op["responses"][status]["content"]["application/json"]["schema"]
            assert error == {"$ref": "#/components/schemas/ErrorResponse"}, (path, status)
    pin = posts["/v1/admin/models/{model}/pin"]["requestBody"]["content"]["application/json"]["schema"]
    assert pin["properties"]["pinned"]["type"] == "boolean"
    chat = posts["/v1/chat/completions"]["responses"]["200"]["content"]
    assert set(chat) == {"application/json", "text/event-stream"}
    assert schemas["ChatCompletion"]["properties"]["system_fingerprint"]["type"] == "string"


def pinned_schema(serve: ServeProcess) -> Any:
    """The served description with each request's ``model`` pinned to the model that serves it."""
    raw = httpx.get(f"{serve.url}/openapi.json", timeout=30).json()
    for name, model in MODEL_OF.items():
        raw["components"]["schemas"][name]["properties"]["model"] = {"const": model}
    raw["paths"] = {p: item for p, item in raw["paths"].items() if p in FUZZED}
    return schemathesis.openapi.from_dict(raw)


@pytest.mark.parametrize("path", FUZZED)
def test_schemathesis_finds_no_5xx_and_no_schema_violation(
    serve: ServeProcess, path: str, record_property: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """Acceptance 4: schema-driven requests, valid and invalid, for a bounded number of examples;
    the number run is printed and recorded (``fuzz_cases`` in a JUnit report)."""
    operation = pinned_schema(serve)[path]["POST"]
    strategy = st.one_of(
        operation.as_strategy(schemathesis.GenerationMode.POSITIVE),
        operation.as_strategy(schemathesis.GenerationMode.NEGATIVE),
    )
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]

    @given(case=strategy)
    @settings(
        max_examples=2 * EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        statuses.append(
            case.call_and_validate(base_url=serve.url, session=session, checks=checks, timeout=60).status_code
        )

    statuses: list[int] = []
    with requests.Session() as session:
        run()
    record_property("fuzz_cases", len(statuses))
    with capsys.disabled():
        by_status = ", ".join(f"{s}: {statuses.count(s)}" for s in sorted(set(statuses)))
        print(f"\nschemathesis POST {path}: {len(statuses)} cases ({by_status})")
    # Hypothesis stops early only when a strategy runs dry: the count must not silently collapse.
    assert len(statuses) >= EXAMPLES


def test_cohere_sdk_v1_and_v2(serve: ServeProcess) -> None:
    docs = ["Paris is the capital of France.", "Bananas are yellow.", "The Eiffel Tower is in Paris."]
    with httpx.Client(timeout=120) as http:
        check_cohere(serve, http, docs)


def check_cohere(serve: ServeProcess, http: httpx.Client, docs: list[str]) -> None:
    v1 = cohere.Client(api_key="x", base_url=serve.url, httpx_client=http)
    out = v1.rerank(model=RERANK, query="Where is Paris?", documents=docs, top_n=2, return_documents=True)
    assert [r.document.text for r in out.results] == [docs[r.index] for r in out.results]  # type: ignore[union-attr]
    assert len(out.results) == 2
    v2 = cohere.ClientV2(api_key="x", base_url=serve.url, httpx_client=http)
    out2 = v2.rerank(model=RERANK, query="Where is Paris?", documents=docs, top_n=3)
    assert [r.index for r in out2.results] == [r.index for r in out.results] + [
        next(i for i in range(3) if i not in {r.index for r in out.results})
    ]
    scores = [r.relevance_score for r in out2.results]
    assert scores == sorted(scores, reverse=True)
    assert all(0 <= s <= 1 for s in scores)


def test_tei_rerank_request(serve: ServeProcess) -> None:
    """TEI's request and answer on TEI's path; no model named when there is one reranker."""
    texts = ["Paris is the capital of France.", "Bananas are yellow."]
    query = "Where is Paris?"
    r = httpx.post(
        f"{serve.url}/rerank",
        json={"query": query, "texts": texts, "raw_scores": True, "return_text": True},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    ranks = r.json()
    assert isinstance(ranks, list)
    assert sorted(x["index"] for x in ranks) == [0, 1]
    assert all(x["text"] == texts[x["index"]] for x in ranks)
    cohere_shape = httpx.post(
        f"{serve.url}/v1/rerank", json={"model": RERANK, "query": query, "documents": texts}, timeout=120
    ).json()
    by_index = {x["index"]: x["relevance_score"] for x in cohere_shape["results"]}
    for x in ranks:  # the raw score is the logit behind the sigmoid-scaled relevance
        assert math.isclose(1 / (1 + math.exp(-x["score"])), by_index[x["index"]], rel_tol=1e-4)


def test_langchain_chat_and_embeddings(serve: ServeProcess) -> None:
    with httpx.Client(timeout=120) as http:
        check_langchain(serve, http)


def check_langchain(serve: ServeProcess, http: httpx.Client) -> None:
    chat = ChatOpenAI(
        model=CHAT,
        base_url=f"{serve.url}/v1",
        api_key="x",
        max_tokens=4,
        temperature=0,
        max_retries=0,
        http_client=http,
    )
    message = chat.invoke("Hello")
    assert isinstance(message.content, str)
    assert message.response_metadata["finish_reason"] in ("stop", "length")
    streamed = "".join(str(c.content) for c in chat.stream("Hello"))
    assert streamed == message.content
    # LangChain tokenizes with tiktoken (OpenAI's vocabularies) unless told not to; llmi's models
    # have their own tokenizers, so the texts must be sent as text.
    embeddings = OpenAIEmbeddings(
        model=EMBED,
        base_url=f"{serve.url}/v1",
        api_key="x",
        check_embedding_ctx_length=False,
        max_retries=0,
        http_client=http,
    )
    vectors = embeddings.embed_documents(["a", "b"])
    assert len(vectors) == 2
    assert math.isclose(math.fsum(v * v for v in vectors[0]), 1.0, rel_tol=1e-4)
    assert embeddings.embed_query("a") == pytest.approx(vectors[0], abs=1e-5)
