"""Which way the front sends a request: straight to a runtime only when routing is all there is to
do (a public POST, a ready transformers model of the right type, an accepted key); everything
that needs the app (a load, a refusal, vLLM's error mapping, a 401) goes to the app unchanged."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from llmi.auth import ApiKeys
from llmi.errors import TooManyRequests
from llmi.protocol.models import ModelCard
from llmi.settings import Settings
from llmi_router.app import Gateway
from llmi_router.dispatch import GatewayDispatch
from llmi_router.front import Request
from llmi_router.metrics import RouterMetrics
from llmi_router.ports import OnceLease
from tests.control_stubs import ControlStubs

APP = "/tmp/app.sock"


@dataclass
class Control(ControlStubs):
    ready: set[str] = field(default_factory=lambda: {"embed", "chat", "served-by-vllm"})
    busy: set[str] = field(default_factory=set)
    released: list[str] = field(default_factory=list)
    sockets: dict[str, str] = field(default_factory=dict)  # models whose runtime listens on a Unix socket

    async def acquire(self, model: str, deadline_s: float) -> OnceLease:
        if model in self.busy:
            raise TooManyRequests("busy", retry_after=1)
        return OnceLease("http://127.0.0.1:4321", lambda: self.released.append(model))

    def model_type(self, model: str) -> str | None:
        types = {"embed": "embedding", "chat": "chat", "cold": "embedding", "served-by-vllm": "chat"}
        return types.get(model)

    def is_ready(self, model: str) -> bool:
        return model in self.ready

    def hold_now(self, model: str) -> OnceLease | None:
        if model in self.busy or model not in self.ready:
            return None  # at its concurrency bound: it would have to wait
        return OnceLease("http://127.0.0.1:4321", lambda: self.released.append(model), self.sockets.get(model))

    def engine(self, model: str) -> str | None:
        return "vllm" if model == "served-by-vllm" else "transformers"

    def describe(self) -> list[ModelCard]:
        return []


def request(path: str, body: Any, *headers: tuple[bytes, bytes], method: str = "POST", version: str = "1.1") -> Request:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Request(method, path.encode(), version, list(headers), raw, True)


def dispatcher(control: Control, keys: frozenset[str] = frozenset()) -> GatewayDispatch:
    gateway = Gateway(control, Settings(), RouterMetrics())
    return GatewayDispatch(gateway, APP, ApiKeys(keys))


EMBED = {"model": "embed", "input": "hi"}


def test_a_ready_model_goes_straight_to_its_runtime_with_the_body_unchanged() -> None:
    control = Control()
    route = dispatcher(control)(request("/v1/embeddings", EMBED, (b"authorization", b"Bearer x")))
    assert route.address == ("127.0.0.1", 4321)
    assert route.head.startswith(b"POST /v1/embeddings HTTP/1.1\r\n")
    assert b"content-length: %d\r\n" % len(json.dumps(EMBED)) in route.head
    assert b"authorization" not in route.head, "the runtime gets no client credentials"
    assert route.fallback is not None
    assert route.fallback.address == APP
    route.release()
    route.release()
    assert control.released == ["embed"], "released exactly once"


def test_a_runtime_with_a_unix_socket_is_reached_through_it() -> None:
    control = Control(sockets={"embed": "/tmp/runtimes/4321.sock"})
    route = dispatcher(control)(request("/v1/embeddings", EMBED))
    assert route.address == "/tmp/runtimes/4321.sock"
    assert route.fallback is not None
    assert route.fallback.address == APP  # the app (over TCP) if the socket cannot be reached
    assert dispatcher(control)(request("/v1/chat/completions", {"model": "chat"})).address == ("127.0.0.1", 4321)


@pytest.mark.parametrize(
    ("why", "req"),
    [
        ("a model that is not loaded: the app loads it", request("/v1/embeddings", {"model": "cold", "input": "x"})),
        ("an unknown model: the app answers 404", request("/v1/embeddings", {"model": "nope", "input": "x"})),
        ("the wrong type: the app answers 400", request("/v1/chat/completions", EMBED)),
        ("vLLM's errors need the app's mapping", request("/v1/chat/completions", {"model": "served-by-vllm"})),
        ("not JSON: the app names the problem", request("/v1/embeddings", b"{nope")),
        ("no model: the app decides", request("/v1/embeddings", {"input": "x"})),
        ("a GET", request("/v1/models", b"", method="GET")),
        ("not a public inference path", request("/v1/admin/unload", EMBED)),
        ("a query string", request("/v1/embeddings?x=1", EMBED)),
        ("HTTP/1.0", request("/v1/embeddings", EMBED, version="1.0")),
    ],
)
def test_everything_else_goes_to_the_app_unchanged(why: str, req: Request) -> None:
    route = dispatcher(Control())(req)
    assert route.address == APP, why
    assert route.head is None, "the client's own head, built by the front"
    assert route.fallback is None


def test_a_lease_that_would_wait_goes_to_the_app_which_queues_it() -> None:
    route = dispatcher(Control(busy={"embed"}))(request("/v1/embeddings", EMBED))
    assert route.address == APP


def test_keys_are_checked_before_the_fast_path() -> None:
    dispatch = dispatcher(Control(), keys=frozenset({"sk-good"}))
    good = dispatch(request("/v1/embeddings", EMBED, (b"authorization", b"Bearer sk-good")))
    assert good.address == ("127.0.0.1", 4321)
    for headers in [(), ((b"authorization", b"Bearer sk-bad"),), ((b"x-api-key", b"wrong"),)]:
        route = dispatch(request("/v1/embeddings", EMBED, *headers))
        assert route.address == APP, "the app answers 401"
    assert (dispatch(request("/v1/embeddings", EMBED, (b"x-api-key", b"sk-good")))).address != APP


def test_a_fast_request_is_counted_under_its_model() -> None:
    control = Control()
    dispatch = dispatcher(control)
    route = dispatch(request("/v1/embeddings", EMBED))
    route.finished(200)
    labels = {"model": "embed", "endpoint": "/v1/embeddings", "status": "200"}
    assert dispatch.gateway.metrics.registry.get_sample_value("llmi_requests_total", labels) == 1


def test_a_fast_stream_carries_the_error_event_that_ends_it_if_the_runtime_breaks_off() -> None:
    dispatch = dispatcher(Control())
    chat = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
    streamed = dispatch(request("/v1/chat/completions", {**chat, "stream": True}))
    assert streamed.stream_error is not None
    events = streamed.stream_error()
    event = json.loads(events.strip().split(b"\n\n")[0].removeprefix(b"data: "))
    assert event["error"]["code"] == "upstream_failed"
    assert "'chat' failed mid-stream" in event["error"]["message"]
    assert events.endswith(b"data: [DONE]\n\n")
    assert (dispatch(request("/v1/chat/completions", chat))).stream_error is None
