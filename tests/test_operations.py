"""`/v1/events` and the admin endpoints against a real `llmi serve` (budget for one model)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.serve_process import ServeProcess, model_folder, start_serve
from tests.servers import runtime_env

pytestmark = pytest.mark.slow
EMBED = {"input": "hello"}


@pytest.fixture(scope="module")
def serve(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    root = tmp_path_factory.mktemp("ops")
    models = model_folder(tiny_models, root / "models", ["tiny-bert-embed", "tiny-qwen3-embed"], memory="1GiB")
    env = runtime_env(LLM_MODEL_CACHE_SIZE="4", LLM_AUTO_UNLOAD_MODELS="false")
    server = start_serve(models, root, "--cpu-memory-gb", "1.5", env=env)
    yield server
    server.stop()


class Reader(threading.Thread):
    """Reads /v1/events into a list until told to stop (or the stream ends)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.events: list[dict[str, object]] = []
        self.opened = threading.Event()
        self.seen = threading.Condition()
        self.content_type = ""

    def run(self) -> None:
        timeout = httpx.Timeout(60, read=120)
        # The stream ends (abruptly) when the server stops at the end of the module.
        with contextlib.suppress(httpx.HTTPError), httpx.stream("GET", f"{self.url}/v1/events", timeout=timeout) as r:
            self.content_type = r.headers["content-type"]
            self.opened.set()
            for line in r.iter_lines():
                if line.startswith("data: "):
                    with self.seen:
                        self.events.append(json.loads(line[6:]))
                        self.seen.notify_all()

    def wait_for(self, predicate: object, timeout: float = 120) -> None:
        with self.seen:
            assert self.seen.wait_for(lambda: predicate(self.events), timeout), self.events  # type: ignore[operator]


def kinds(events: list[dict[str, object]], model: str) -> list[object]:
    """The transitions of ``model`` (progress notes of a long load left out)."""
    return [e["kind"] for e in events if e.get("model") == model and e["kind"] != "progress"]


def test_every_transition_of_a_load_and_an_eviction_arrives_in_order(serve: ServeProcess) -> None:
    reader = Reader(serve.url)
    reader.start()
    assert reader.opened.wait(30)
    assert reader.content_type.startswith("text/event-stream")
    reader.wait_for(lambda ev: ev and ev[0]["kind"] == "snapshot")
    snapshot = reader.events[0]["models"]
    assert {m["id"] for m in snapshot} == {"tiny-bert-embed", "tiny-qwen3-embed"}  # type: ignore[union-attr]
    with httpx.Client(timeout=120) as client:
        assert client.post(f"{serve.url}/v1/embeddings", json={"model": "tiny-bert-embed", **EMBED}).status_code == 200
        assert client.post(f"{serve.url}/v1/embeddings", json={"model": "tiny-qwen3-embed", **EMBED}).status_code == 200
    reader.wait_for(lambda ev: kinds(ev, "tiny-qwen3-embed")[-1:] == ["ready"])
    assert kinds(reader.events, "tiny-bert-embed")[:2] == ["loading", "ready"]
    assert kinds(reader.events, "tiny-bert-embed")[-2:] == ["evicting", "stopped"]
    order = [(e["model"], e["kind"]) for e in reader.events[1:] if e["kind"] != "progress"]
    assert order.index(("tiny-bert-embed", "stopped")) < order.index(("tiny-qwen3-embed", "loading"))
    ready = next(e for e in reader.events if e.get("kind") == "ready" and e["model"] == "tiny-qwen3-embed")
    assert ready["state"] == "ready"
    assert isinstance(ready["seconds"], float)
    assert ready["memory_estimated_bytes"] == 2**30


def test_admin_load_unload_and_pin(serve: ServeProcess) -> None:
    with httpx.Client(timeout=120) as client:
        card = client.post(f"{serve.url}/v1/admin/models/tiny-bert-embed/load").json()
        assert (card["id"], card["state"]) == ("tiny-bert-embed", "ready")
        pinned = client.post(f"{serve.url}/v1/admin/models/tiny-bert-embed/pin", json={"pinned": True}).json()
        assert pinned["pinned"] is True
        # Pinned, it holds the one-model budget: the other model cannot get room.
        refused = client.post(f"{serve.url}/v1/embeddings", json={"model": "tiny-qwen3-embed", **EMBED})
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "no_room"
        client.post(f"{serve.url}/v1/admin/models/tiny-bert-embed/pin", json={"pinned": False})
        card = client.post(f"{serve.url}/v1/admin/models/tiny-bert-embed/unload").json()
        assert card["state"] in ("unloading", "available")
        missing = client.post(f"{serve.url}/v1/admin/models/nobody/unload")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "model_not_found"
        bad = client.post(f"{serve.url}/v1/admin/models/tiny-bert-embed/pin", json={"pinned": "yes"})
        assert bad.status_code == 400
        assert bad.json()["error"]["param"] == "pinned"


def test_llmi_ps_shows_the_running_servers_models(serve: ServeProcess) -> None:
    with httpx.Client(timeout=120) as client:
        assert client.post(f"{serve.url}/v1/embeddings", json={"model": "tiny-qwen3-embed", **EMBED}).status_code == 200
    env = runtime_env()
    as_json = subprocess.run(
        [sys.executable, "-m", "llmi.cli", "ps", "--url", serve.url, "--json"], capture_output=True, text=True, env=env
    )
    assert as_json.returncode == 0, as_json.stderr
    cards = {c["id"]: c for c in json.loads(as_json.stdout)}
    assert cards["tiny-qwen3-embed"]["state"] == "ready"
    shown = subprocess.run(
        [sys.executable, "-m", "llmi.cli", "ps", "--url", serve.url], capture_output=True, text=True, env=env
    )
    lines = shown.stdout.splitlines()
    assert lines[0].split()[:3] == ["NAME", "TYPE", "STATE"]
    assert lines[1].split()[:3] == ["tiny-qwen3-embed", "embedding", "ready"]  # loaded models first
    assert "ago" in lines[1]
    gone = subprocess.run(
        [sys.executable, "-m", "llmi.cli", "ps", "--url", "http://127.0.0.1:9"], capture_output=True, text=True, env=env
    )
    assert gone.returncode == 1
    assert "cannot reach" in gone.stderr
