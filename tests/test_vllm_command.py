"""The one vLLM command builder: every placement and setting, and when vLLM is chosen."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from llmi.modeltypes import ModelType
from llmi.vllm import VllmLaunch, detect_quantization, resolve_engine, vllm_args

GIB = 2**30
BASE = VllmLaunch(
    model_path="/models/qwen",
    served_name="qwen",
    host="127.0.0.1",
    port=8001,
    placement="gpu",
    footprint_bytes=4 * GIB,
    memory_bytes=4 * GIB,
    gpu_memory_bytes=16 * GIB,
)


def flags(args: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for i, arg in enumerate(args[1:], 1):
        if arg.startswith("--"):
            nxt = args[i + 1] if i + 1 < len(args) else None
            out[arg] = None if nxt is None or nxt.startswith("--") else nxt
    return out


def test_gpu_placement_takes_its_share_of_the_device() -> None:
    args = vllm_args(BASE)
    assert args[0] == "/models/qwen"
    f = flags(args)
    assert f["--served-model-name"] == "qwen"
    assert (f["--host"], f["--port"]) == ("127.0.0.1", "8001")
    assert f["--gpu-memory-utilization"] == "0.250"
    assert "--cpu-offload-gb" not in f
    assert "--enable-sleep-mode" not in f


def test_the_share_is_rounded_down_and_capped() -> None:
    assert (
        flags(vllm_args(replace(BASE, footprint_bytes=GIB, gpu_memory_bytes=3 * GIB)))["--gpu-memory-utilization"]
        == "0.333"
    )
    assert flags(vllm_args(replace(BASE, footprint_bytes=20 * GIB)))["--gpu-memory-utilization"] == "0.950"


def test_offload_puts_the_rest_in_host_memory() -> None:
    f = flags(vllm_args(replace(BASE, placement="offload", footprint_bytes=4 * GIB, memory_bytes=int(14.5 * GIB))))
    assert f["--cpu-offload-gb"] == "10.5"
    assert f["--gpu-memory-utilization"] == "0.250"


def test_every_setting_reaches_the_command() -> None:
    launch = replace(BASE, max_model_len=8192, dtype="bfloat16", tensor_parallel_size=2, quantization="awq",
                     sleep_mode=True)  # fmt: skip
    f = flags(vllm_args(launch))
    assert f["--max-model-len"] == "8192"
    assert f["--dtype"] == "bfloat16"
    assert f["--tensor-parallel-size"] == "2"
    assert f["--quantization"] == "awq"
    assert "--enable-sleep-mode" in f


def test_defaults_add_nothing_vllm_would_choose_itself() -> None:
    f = flags(vllm_args(replace(BASE, gpu_memory_bytes=None)))
    assert set(f) == {"--served-model-name", "--host", "--port"}


def test_a_flag_given_in_engine_args_is_never_added_twice() -> None:
    given = ("--gpu-memory-utilization=0.5", "--max-model-len", "4096", "--enable-sleep-mode")
    launch = replace(BASE, max_model_len=8192, sleep_mode=True, engine_args=given)
    args = vllm_args(launch)
    assert sum(a.startswith("--gpu-memory-utilization") for a in args) == 1
    assert args.count("--max-model-len") == 1
    assert args.count("--enable-sleep-mode") == 1
    assert tuple(args[-4:]) == given


@pytest.mark.parametrize(
    ("quantization_config", "expected"),
    [
        ({"quant_method": "awq", "bits": 4}, "awq"),
        ({"quant_method": "gptq"}, "gptq"),
        ({"quant_method": "fp8"}, "fp8"),
        ({"quant_method": "compressed-tensors"}, "compressed-tensors"),
        ({"quant_method": "bitsandbytes", "load_in_4bit": True}, "bitsandbytes"),
        ({"quant_method": "something-new"}, None),
        (None, None),
    ],
)
def test_quantization_is_detected_from_the_folder(tmp_path: Path, quantization_config: object, expected: str) -> None:
    config: dict[str, object] = {"architectures": ["Qwen2ForCausalLM"]}
    if quantization_config is not None:
        config["quantization_config"] = quantization_config
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert detect_quantization(tmp_path) == expected


def test_a_folder_without_config_has_no_quantization(tmp_path: Path) -> None:
    assert detect_quantization(tmp_path) is None


def test_engine_choice() -> None:
    chat, embed = ModelType.CHAT, ModelType.EMBEDDING
    assert resolve_engine("auto", chat, "gpu", gpu=True, vllm_available=True) == "vllm"
    assert resolve_engine("auto", chat, "offload", gpu=True, vllm_available=True) == "vllm"
    assert resolve_engine("auto", chat, "cpu", gpu=True, vllm_available=True) == "transformers"
    assert resolve_engine("auto", chat, "gpu", gpu=True, vllm_available=False) == "transformers"
    assert resolve_engine("auto", chat, "cpu", gpu=False, vllm_available=True) == "transformers"
    assert resolve_engine("auto", embed, "gpu", gpu=True, vllm_available=True) == "transformers"
    assert resolve_engine("transformers", chat, "gpu", gpu=True, vllm_available=True) == "transformers"
    assert resolve_engine("vllm", chat, "gpu", gpu=True, vllm_available=True) == "vllm"
    assert "needs a GPU" in resolve_engine("vllm", chat, "cpu", gpu=False, vllm_available=True)
    assert "not installed" in resolve_engine("vllm", chat, "gpu", gpu=True, vllm_available=False)
    assert "chat models" in resolve_engine("vllm", embed, "gpu", gpu=True, vllm_available=True)


def test_vllm_error_bodies_become_openai_envelopes() -> None:
    from llmi.errors import openai_error

    old = b'{"object": "error", "message": "too long", "type": "BadRequestError", "param": null, "code": 400}'
    new = b'{"error": {"message": "boom", "type": "InternalServerError", "param": null, "code": 500}}'
    assert json.loads(openai_error(old, 400)) == {
        "error": {"message": "too long", "type": "invalid_request_error", "param": None, "code": None}
    }
    assert json.loads(openai_error(new, 500))["error"] == {
        "message": "boom",
        "type": "server_error",
        "param": None,
        "code": None,
    }
    ours = b'{"error": {"message": "x", "type": "invalid_request_error", "param": "model", "code": "model_not_found"}}'
    assert openai_error(ours, 404) == ours
    assert openai_error(b"not json", 502) == b"not json"
