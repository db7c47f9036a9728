"""`llmi serve` with its default spare runtime: a switch is handed to the spare, which then
runs the model, and the fork server forks the next one."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.serve_process import ServeProcess, model_folder, start_serve
from tests.servers import runtime_env

pytestmark = pytest.mark.slow
PAIR = ["tiny-bert-embed", "tiny-bert-reranker"]


def spares_of(serve: ServeProcess) -> list[int]:
    """Processes titled `llmi runtime-spare` under this server."""
    parents: dict[int, int] = {}
    titled: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if (entry / "cmdline").read_bytes().split(b"\0")[0] == b"llmi runtime-spare":
                titled.append(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue

    def under_serve(pid: int) -> bool:
        while pid > 1:
            pid = parents.get(pid, 0)
            if pid == serve.proc.pid:
                return True
        return False

    return [pid for pid in titled if under_serve(pid)]


def warm_spare(serve: ServeProcess, client: httpx.Client) -> int:
    """The spare's pid once the server reports it warm (state polled, bounded)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if client.get(f"{serve.url}/v1/health").json().get("spare_runtime") == "warm":
            (pid,) = spares_of(serve)
            return pid
        time.sleep(0.05)  # polling observable state, not a synchronisation by time
    raise AssertionError("the spare runtime never reported warm")


def measured_card(serve: ServeProcess, client: httpx.Client, model: str) -> dict[str, object]:
    """``model``'s /v1/models card once it shows a measured size (polled, bounded)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        card = {m["id"]: m for m in client.get(f"{serve.url}/v1/models").json()["data"]}[model]
        if card["memory_measured_bytes"]:
            return card
        time.sleep(0.05)  # polling observable state, not a synchronisation by time
    raise AssertionError(f"{model} never reported a measured size")


def embed(client: httpx.Client, serve: ServeProcess, model: str) -> None:
    path, body = (
        ("/v1/embeddings", {"model": model, "input": "hello"})
        if model == "tiny-bert-embed"
        else ("/v1/rerank", {"model": model, "query": "q", "documents": ["a", "b"]})
    )
    response = client.post(f"{serve.url}{path}", json=body, timeout=180)
    assert response.status_code == 200, response.text


def test_a_switch_is_handed_to_the_warm_spare_and_the_next_spare_is_forked(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    models = model_folder(tiny_models, tmp_path / "models", PAIR, memory="1GiB")
    env = runtime_env(LLM_SPARE_RUNTIME="true", LLM_AUTO_UNLOAD_MODELS="false")
    serve = start_serve(models, tmp_path, "--cpu-memory-gb", "1.5", env=env)  # room for one
    try:
        with httpx.Client() as client:
            embed(client, serve, PAIR[0])
            spare = warm_spare(serve, client)
            embed(client, serve, PAIR[1])  # a switch: the first model makes room
            assert serve.runtime_pids(PAIR[1]) == [spare], "the spare itself now serves the model"
            assert warm_spare(serve, client) != spare, "a new spare was forked and warmed up"
            card = measured_card(serve, client, PAIR[1])  # measured after its first answer, in the background
            assert card["state"] == "ready"
    finally:
        serve.stop()
