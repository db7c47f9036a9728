"""Issue 12's name rules: a model name is only ever a key into the catalog. Path-like, overlong,
control-character and look-alike names get 404 (model_not_found) on every route that takes a
name, start no load, and touch no file: the filesystem calls are watched while they are served.
"""

from __future__ import annotations

import builtins
import os
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import pytest_asyncio

from llmi.names import valid_name
from llmi.settings import Settings
from llmi_router.app import build_router_app
from llmi_router.metrics import RouterMetrics
from tests.supervisor_fakes import FakeLauncher, entry, make

aio = pytest.mark.asyncio(loop_scope="session")
KNOWN = "embed"
HOSTILE = {
    "parent": "../x",
    "absolute": "/etc/passwd",
    "climbing": "a/../../b",
    "through-itself": "embed/../embed",
    "dot": "./embed",
    "trailing-slash": "embed/",
    "backslashes": "..\\..\\windows",
    "home": "~/models/embed",
    "encoded-dots": "%2e%2e/embed",
    "overlong": "e" * 257,
    "very-long": "e" * 5000,
    "nul": "emb\x00ed",
    "newline": "embed\n",
    "escape": "embed\x1b[31m",
    "cyrillic-e": "emb\u0435d",
    "zero-width": "embed\u200b",
    "fullwidth": "\uff45\uff4d\uff42\uff45\uff44",  # NFKC makes it "embed"; it is not
    "rtl-override": "\u202edebme",
}


def test_the_rule_refuses_every_hostile_name_and_keeps_real_ones() -> None:
    assert not any(valid_name(n) for n in HOSTILE.values())
    for name in ("embed", "Qwen/Qwen3-0.6B", "bge-m3.v1_5", "e" * 256):
        assert valid_name(name), name


@pytest.fixture
def watched_files(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every path the process opens, stats or lists while the test runs."""
    seen: list[str] = []

    def watch(real: Callable[..., Any]) -> Callable[..., Any]:
        def watched(path: Any, *args: Any, **kwargs: Any) -> Any:
            seen.append(os.fsdecode(path) if isinstance(path, str | bytes | os.PathLike) else repr(path))
            return real(path, *args, **kwargs)

        return watched

    for name in ("stat", "lstat", "open", "listdir", "scandir", "access", "readlink"):
        monkeypatch.setattr(os, name, watch(getattr(os, name)))
    monkeypatch.setattr(builtins, "open", watch(builtins.open))
    return seen


@pytest_asyncio.fixture(loop_scope="session")
async def served() -> AsyncIterator[tuple[httpx.AsyncClient, FakeLauncher]]:
    sup, launcher, _ = await make(entry(KNOWN))
    app = build_router_app(sup, Settings(_env_file=None), RouterMetrics())  # type: ignore[call-arg]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://router") as client:
        yield client, launcher
    await sup.close()


def check_not_found(r: httpx.Response, code: str | None = "model_not_found") -> None:
    assert r.status_code == 404, r.text[:300]
    body = r.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code
    assert body["error"]["param"] == ("model" if code else None)
    assert body["error"]["type"] == "invalid_request_error"
    assert len(body["error"]["message"]) < 200  # an overlong name is not echoed whole


@aio
@pytest.mark.parametrize("name", list(HOSTILE.values()), ids=list(HOSTILE))
async def test_a_hostile_name_is_404_without_touching_the_filesystem(
    served: tuple[httpx.AsyncClient, FakeLauncher], watched_files: list[str], name: str
) -> None:
    client, launcher = served
    for body, path in [
        ({"model": name, "input": "x"}, "/v1/embeddings"),
        ({"model": name, "messages": [{"role": "user", "content": "x"}]}, "/v1/chat/completions"),
        ({"model": name, "query": "q", "documents": ["d"]}, "/v1/rerank"),
    ]:
        check_not_found(await client.post(path, json=body))
    check_not_found(await client.get(f"/v1/models/{quote(name, safe='')}"))
    # A name with a newline inside an admin path matches no route at all: 404 Invalid URL.
    code = None if "\n" in name else "model_not_found"
    check_not_found(await client.post(f"/v1/admin/models/{quote(name, safe='')}/load"), code)
    check_not_found(await client.post(f"/v1/admin/models/{quote(name, safe='')}/pin", json={"pinned": True}), code)
    assert launcher.started == []
    fragments = {part for part in name.split("/") if len(part) > 2} | {name}
    assert not [p for p in watched_files if any(f in p for f in fragments)]
    # Healthy: probes answer and the real model is still there, under its own name only.
    assert (await client.get("/healthz")).status_code == 200
    assert [m["id"] for m in (await client.get("/v1/models")).json()["data"]] == [KNOWN]
    assert (await client.get(f"/v1/models/{KNOWN}")).status_code == 200


def test_the_watch_sees_a_lookup_that_opens_a_file(watched_files: list[str]) -> None:
    """The watch can fail: a name resolved on disk would show up in it."""
    os.path.exists(os.path.join("/models", HOSTILE["parent"]))
    assert any("../x" in p for p in watched_files)
