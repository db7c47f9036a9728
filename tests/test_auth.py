"""API keys: every /v1 route needs one when keys are set; probes stay open; the envelope is OpenAI's."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute

from llmi.auth import ApiKeyMiddleware, KeyError_, load_keys
from tests.serve_process import ServeProcess, model_folder, start_serve
from tests.servers import runtime_env


def app_with(keys: set[str], open_paths: set[str] = frozenset()) -> httpx.AsyncClient:  # type: ignore[assignment]
    async def ok(_: object) -> PlainTextResponse:
        return PlainTextResponse("ok")

    inner = Starlette(routes=[Route(p, ok, methods=["GET", "POST"]) for p in ("/v1/models", "/healthz", "/metrics")])
    app = ApiKeyMiddleware(inner, keys, open_paths)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


async def test_a_request_without_or_with_a_wrong_key_is_401_with_the_envelope() -> None:
    async with app_with({"sk-one", "sk-two"}) as client:
        missing = await client.get("/v1/models")
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"].startswith("Bearer")
        assert missing.json() == {
            "error": {
                "message": "Missing API key: send 'Authorization: Bearer <key>'.",
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_api_key",
            }
        }
        wrong = await client.get("/v1/models", headers={"Authorization": "Bearer sk-three"})
        assert (wrong.status_code, wrong.json()["error"]["message"]) == (401, "Invalid API key.")
        assert "sk-three" not in wrong.text  # keys are never echoed
        for headers in ({"Authorization": "Bearer sk-two"}, {"authorization": "bearer sk-one"}, {"x-api-key": "sk-one"},
                        {"api-key": "sk-two"}):  # fmt: skip
            assert (await client.get("/v1/models", headers=headers)).status_code == 200
        assert (await client.get("/v1/models", headers={"Authorization": "Basic sk-one"})).status_code == 401
        assert (await client.get("/v1/models", headers={"Authorization": "Bearer "})).status_code == 401


async def test_probes_stay_open_and_metrics_when_configured() -> None:
    async with app_with({"k"}, {"/metrics"}) as client:
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/metrics")).status_code == 200
    async with app_with({"k"}) as client:
        assert (await client.get("/metrics")).status_code == 401


def test_a_websocket_without_a_key_is_refused_before_it_is_accepted() -> None:
    from starlette.testclient import TestClient
    from starlette.websockets import WebSocket, WebSocketDisconnect

    async def echo(ws: WebSocket) -> None:
        await ws.accept()
        await ws.send_text("in")
        await ws.close()

    app = ApiKeyMiddleware(Starlette(routes=[WebSocketRoute("/v1/ws", echo)]), {"sk-one"})
    with TestClient(app) as client:
        with pytest.raises(WebSocketDisconnect) as info, client.websocket_connect("/v1/ws"):
            pass
        assert info.value.code == 1008
        with client.websocket_connect("/v1/ws", headers={"Authorization": "Bearer sk-one"}) as ws:
            assert ws.receive_text() == "in"


async def test_without_keys_everything_is_open() -> None:
    async with app_with(set()) as client:
        assert (await client.get("/v1/models")).status_code == 200


def test_keys_come_from_the_setting_and_a_file(tmp_path: Path) -> None:
    file = tmp_path / "keys"
    file.write_text("# team keys\nsk-file-1\n\n  sk-file-2  \n")
    assert load_keys(" sk-a, ,sk-b ", file) == {"sk-a", "sk-b", "sk-file-1", "sk-file-2"}
    assert load_keys(None, None) == frozenset()
    (tmp_path / "empty").write_text("# nothing\n")
    with pytest.raises(KeyError_, match="holds no key"):
        load_keys(None, tmp_path / "empty")
    with pytest.raises(KeyError_, match="cannot read"):
        load_keys(None, tmp_path / "missing")


@pytest.fixture(scope="module")
def serve(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    root = tmp_path_factory.mktemp("auth")
    models = model_folder(tiny_models, root / "models", ["tiny-bert-embed"])
    server = start_serve(models, root, env=runtime_env(LLM_API_KEYS="sk-test-1,sk-test-2"))
    yield server
    server.stop()


@pytest.mark.slow
def test_serve_with_keys_admits_the_openai_client_with_a_key_only(serve: ServeProcess) -> None:
    good = openai.OpenAI(base_url=f"{serve.url}/v1", api_key="sk-test-2", max_retries=0, timeout=120)
    assert len(good.embeddings.create(model="tiny-bert-embed", input="hi").data) == 1
    bad = openai.OpenAI(base_url=f"{serve.url}/v1", api_key="sk-nope", max_retries=0, timeout=120)
    with pytest.raises(openai.AuthenticationError) as info:
        bad.models.list()
    assert info.value.code == "invalid_api_key"
    assert httpx.get(f"{serve.url}/healthz").status_code == 200
    assert httpx.get(f"{serve.url}/metrics").status_code == 200
    # Admin endpoints and the event stream are behind the same keys.
    assert httpx.post(f"{serve.url}/v1/admin/models/tiny-bert-embed/unload").status_code == 401
    ok = httpx.post(f"{serve.url}/v1/admin/models/tiny-bert-embed/unload", headers={"x-api-key": "sk-test-1"})
    assert ok.status_code == 200
    assert httpx.get(f"{serve.url}/v1/events").status_code == 401
    # The page itself opens (a browser sends no key) but shows no model until given one.
    page = httpx.get(f"{serve.url}/").text
    assert 'id="key"' in page
    assert 'data-model="tiny-bert-embed"' not in page
    assert "sk-test" not in serve.output()  # keys are never logged
