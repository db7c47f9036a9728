"""How llmi starts vLLM's own OpenAI-compatible server: one pure command builder for both shapes.

Why one builder: embedded mode (`llmi serve` spawning a process) and the Kubernetes operator (a
pod's args) must start vLLM identically and honour every ``LLM_VLLM_*`` setting; a flag the user
already gives in ``engineArgs`` is never added twice. No I/O here but reading a folder's
``config.json`` for its quantization.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from llmi.catalog.classify import read_json
from llmi.modeltypes import ModelType

GIB = 1024**3
Engine = Literal["transformers", "vllm"]
# quantization_config.quant_method values and the --quantization name vLLM knows them by.
QUANTIZATIONS = {
    "awq": "awq",
    "gptq": "gptq",
    "fp8": "fp8",
    "bitsandbytes": "bitsandbytes",
    "compressed-tensors": "compressed-tensors",
    "compressed_tensors": "compressed-tensors",
    "marlin": "marlin",
    "gguf": "gguf",
    "modelopt": "modelopt",
    "mxfp4": "mxfp4",
}
# Where vLLM's sleep endpoints live (they exist only with VLLM_SERVER_DEV_MODE=1).
SLEEP_ENV = {"VLLM_SERVER_DEV_MODE": "1"}
MAX_SHARE = 0.95


@dataclass(frozen=True)
class VllmLaunch:
    """Everything the command depends on: the model, the plan's placement, and the settings."""

    model_path: str
    served_name: str
    host: str
    port: int
    placement: Literal["gpu", "offload", "cpu"]
    footprint_bytes: int  # the model's share of the GPU budget
    memory_bytes: int  # the whole model (offload puts the rest in host memory)
    gpu_memory_bytes: int | None  # the device's total memory, when known
    max_model_len: int | None = None
    dtype: str = "auto"
    tensor_parallel_size: int = 1
    quantization: str | None = None
    sleep_mode: bool = False
    engine_args: tuple[str, ...] = ()


def has_flag(args: Sequence[str], flag: str) -> bool:
    return any(a == flag or a.startswith(f"{flag}=") for a in args)


def vllm_args(launch: VllmLaunch) -> list[str]:
    """Arguments of ``vllm serve`` (after the word ``serve``) for this launch."""
    extra = launch.engine_args
    args = [launch.model_path]
    wanted: list[tuple[str, str | None]] = [
        ("--served-model-name", launch.served_name),
        ("--host", launch.host),
        ("--port", str(launch.port)),
    ]
    if launch.gpu_memory_bytes:
        # vLLM takes 90% of the GPU by default; on a shared GPU it may only take its budget share.
        share = min(launch.footprint_bytes / launch.gpu_memory_bytes, MAX_SHARE)
        wanted.append(("--gpu-memory-utilization", f"{math.floor(share * 1000) / 1000:.3f}"))
    if launch.placement == "offload":
        offload = max(launch.memory_bytes - launch.footprint_bytes, 0) / GIB
        wanted.append(("--cpu-offload-gb", f"{math.ceil(offload * 100) / 100:g}"))
    if launch.max_model_len:
        wanted.append(("--max-model-len", str(launch.max_model_len)))
    if launch.dtype and launch.dtype != "auto":
        wanted.append(("--dtype", launch.dtype))
    if launch.tensor_parallel_size > 1:
        wanted.append(("--tensor-parallel-size", str(launch.tensor_parallel_size)))
    if launch.quantization:
        wanted.append(("--quantization", launch.quantization))
    for flag, value in wanted:
        if not has_flag(extra, flag):
            args += [flag] if value is None else [flag, value]
    if launch.sleep_mode and not has_flag(extra, "--enable-sleep-mode"):
        args.append("--enable-sleep-mode")
    return args + list(extra)


def detect_quantization(folder: Path) -> str | None:
    """The --quantization a checkpoint needs, from its config.json (None: let vLLM decide)."""
    try:
        config = read_json(folder / "config.json")
    except Exception:
        return None
    quant = config.get("quantization_config") if isinstance(config, dict) else None
    method = quant.get("quant_method") if isinstance(quant, dict) else None
    return QUANTIZATIONS.get(str(method).lower()) if method else None


def resolve_engine(
    asked: str, model_type: ModelType, placement: str, *, gpu: bool, vllm_available: bool
) -> Engine | str:
    """``vllm`` for chat on a GPU when vLLM can be started (or when asked for), else
    ``transformers``; a reason string when the folder asks for vLLM where it cannot run."""
    if asked == "vllm":
        if model_type is not ModelType.CHAT:
            return f"engine vllm serves chat models here, this is a {model_type} model"
        if not gpu or placement == "cpu":
            return "engine vllm needs a GPU"
        if not vllm_available:
            return "engine vllm is asked for but vLLM is not installed (pip install 'llmi[vllm]')"
        return "vllm"
    if asked == "auto" and model_type is ModelType.CHAT and gpu and placement != "cpu" and vllm_available:
        return "vllm"
    return "transformers"
