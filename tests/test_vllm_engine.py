"""vLLM as the chat engine of `llmi serve`, through the same path a real vLLM takes: a stand-in
executable (tests/vllm_stub.py, not vLLM) is started from the shared command builder."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.serve_process import ServeProcess, model_folder, start_serve
from tests.servers import runtime_env

pytestmark = pytest.mark.slow
STUB = Path(__file__).with_name("vllm_stub.py")


@pytest.fixture(scope="module")
def stub_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stub") / "calls.jsonl"


@pytest.fixture(scope="module")
def serve(
    tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory, stub_log: Path
) -> Iterator[ServeProcess]:
    """Two chat models of 4 GiB on an (imagined) 8 GiB GPU: room for one, parking for the other."""
    root = tmp_path_factory.mktemp("vllm-serve")
    models = root / "models"
    model_folder(tiny_models, models / "x", ["tiny-llama-chat", "tiny-qwen2-chat"], memory="4GiB")
    for name in ("tiny-llama-chat", "tiny-qwen2-chat"):
        (models / "x" / name).rename(models / name)
    (models / "tiny-qwen2-chat" / "llmi.yaml").write_text("memory: 4GiB\nengine: vllm\n")
    env = runtime_env(
        LLM_VLLM_COMMAND=f"{sys.executable} {STUB}",
        LLM_VLLM_MAX_MODEL_LEN="2048",
        LLM_VLLM_DTYPE="bfloat16",
        LLM_HOST_MEMORY_BUDGET_GB="16",
        LLM_AUTO_UNLOAD_MODELS="false",
        LLMI_VLLM_STUB_LOG=str(stub_log),
    )
    server = start_serve(models, root, "--gpu-memory-gb", "8", env=env)
    yield server
    server.stop()


def calls(log: Path, model: str | None = None) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return [c for c in lines if model is None or c["model"] == model]


def test_chat_goes_to_vllm_started_from_the_shared_command(serve: ServeProcess, stub_log: Path) -> None:
    client = openai.OpenAI(base_url=f"{serve.url}/v1", api_key="x", max_retries=0, timeout=120)
    out = client.chat.completions.create(model="tiny-llama-chat", messages=[{"role": "user", "content": "hi"}])
    assert out.choices[0].message.content == "Hello from the stub"
    assert out.usage is not None
    assert out.usage.total_tokens == 7
    argv = next(c for c in calls(stub_log, "tiny-llama-chat") if c["event"] == "argv")
    args = argv["argv"]
    assert isinstance(args, list)
    assert args[0] == "serve"
    assert args[1].endswith("/tiny-llama-chat")
    for flag, value in {
        "--served-model-name": "tiny-llama-chat",
        "--max-model-len": "2048",
        "--dtype": "bfloat16",
        "--gpu-memory-utilization": "0.500",  # 4 GiB of the 8 GiB device
    }.items():
        assert args[args.index(flag) + 1] == value
    assert "--enable-sleep-mode" in args
    assert argv["env"] == {"VLLM_SERVER_DEV_MODE": "1"}  # the sleep endpoints exist only then
    card = next(m for m in httpx.get(f"{serve.url}/v1/models").json()["data"] if m["id"] == "tiny-llama-chat")
    assert card["engine"] == "vllm"


def test_streaming_passes_through(serve: ServeProcess) -> None:
    client = openai.OpenAI(base_url=f"{serve.url}/v1", api_key="x", max_retries=0, timeout=120)
    stream = client.chat.completions.create(
        model="tiny-llama-chat", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == "Hello from the stub"


def test_a_switch_parks_with_sleep_and_wakes_back(serve: ServeProcess, stub_log: Path) -> None:
    client = openai.OpenAI(base_url=f"{serve.url}/v1", api_key="x", max_retries=0, timeout=120)
    ask = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    client.chat.completions.create(model="tiny-llama-chat", **ask)  # type: ignore[call-overload]
    client.chat.completions.create(model="tiny-qwen2-chat", **ask)  # type: ignore[call-overload]
    assert [c["event"] for c in calls(stub_log, "tiny-llama-chat")][-1] == "sleep"
    states = {m["id"]: m["state"] for m in httpx.get(f"{serve.url}/v1/models").json()["data"]}
    assert states == {"tiny-llama-chat": "parked", "tiny-qwen2-chat": "ready"}
    out = client.chat.completions.create(model="tiny-llama-chat", **ask)  # type: ignore[call-overload]
    assert out.choices[0].message.content == "Hello from the stub"
    llama = [c["event"] for c in calls(stub_log, "tiny-llama-chat")]
    assert llama.count("argv") == 1  # woken, never started again
    assert llama[-2:] == ["wake_up", "chat"]
    assert next(c for c in calls(stub_log, "tiny-llama-chat") if c["event"] == "sleep")["level"] == "1"


def test_fields_vllm_honours_pass_through_and_its_errors_come_back_in_our_envelope(serve: ServeProcess) -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
    ask = {"model": "tiny-llama-chat", "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(timeout=120) as client:
        # The transformers engine refuses tools, logprobs and n > 1; vLLM takes them.
        passed = client.post(
            f"{serve.url}/v1/chat/completions", json={**ask, "tools": [tool], "logprobs": True, "n": 2}
        )
        assert passed.status_code == 200, passed.text
        refused = client.post(f"{serve.url}/v1/chat/completions", json={**ask, "max_tokens": 5000})
    assert refused.status_code == 400
    assert refused.json() == {
        "error": {
            "message": "max_tokens is too large for this stub's context.",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }
