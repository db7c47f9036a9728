"""What every engine shares: load options, placement, and the facts /v1/health reports."""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import torch

from llmi.modeltypes import ModelType
from llmi_runtime.engines.packed_linear import packed_parameters

Placement = Literal["gpu", "offload", "cpu"]
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


@dataclass(frozen=True)
class LoadOptions:
    """How to load: where, in which precision, and how much GPU memory offload may use."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    placement: Literal["auto", "gpu", "offload", "cpu"] = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    max_gpu_memory_bytes: int | None = None
    trust_remote_code: bool = False

    def resolve(self) -> tuple[torch.device, Placement]:
        """The device inputs go to, and the placement actually used."""
        cuda = torch.cuda.is_available() and self.device != "cpu"
        if self.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("--device cuda was asked for, but no CUDA device is available")
        if not cuda or self.placement == "cpu":
            return torch.device("cpu"), "cpu"
        placement: Placement = "offload" if self.placement == "offload" else "gpu"
        return torch.device("cuda", 0), placement

    def torch_dtype(self, device: torch.device) -> torch.dtype | str:
        """float32 on CPU (exact, and fast enough there); the checkpoint's own dtype on GPU."""
        if self.dtype != "auto":
            return DTYPES[self.dtype]
        return torch.float32 if device.type == "cpu" else "auto"

    def prepare_process(self) -> None:
        """Settings of this (one-model) process that the load reads.

        transformers copies checkpoint tensors on a pool of threads. For a CPU placement that is
        slower: each thread's dtype conversion starts its own OpenMP team on the same few cores, and
        a fresh runtime process pays for creating them (2 cores: a 135M model's load 1.35 s
        threaded, 0.84 s in order). A value the user set is kept."""
        if self.resolve()[0].type == "cpu":
            os.environ.setdefault("HF_DEACTIVATE_ASYNC_LOAD", "1")

    def from_pretrained_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for transformers' ``from_pretrained`` that realise the placement."""
        device, placement = self.resolve()
        kwargs: dict[str, Any] = {
            "dtype": self.torch_dtype(device),
            "trust_remote_code": self.trust_remote_code,
            "local_files_only": True,
        }
        if placement == "offload":
            # accelerate spreads layers over GPU then CPU within the budget.
            gib = (self.max_gpu_memory_bytes or torch.cuda.mem_get_info(0)[0]) / 2**30
            kwargs["device_map"] = "auto"
            kwargs["max_memory"] = {0: f"{gib:.2f}GiB", "cpu": "1024GiB"}
        return kwargs


class Engine(Protocol):
    """A loaded model. Type-specific engines add their own methods."""

    model_type: ModelType
    path: Path

    def info(self) -> dict[str, Any]: ...


def module_facts(module: torch.nn.Module, device: torch.device, placement: Placement) -> dict[str, Any]:
    """Parameters, memory in use and dtype of a loaded module, for /v1/health."""
    params = sum(p.numel() for p in module.parameters()) + packed_parameters(module)
    weight_bytes = sum(p.numel() * p.element_size() for p in module.parameters()) + sum(
        b.numel() * b.element_size() for b in module.buffers()
    )
    facts: dict[str, Any] = {
        "device": str(device),
        "placement": placement,
        "parameters": params,
        "weights_bytes": weight_bytes,
        "memory_bytes": weight_bytes,
        "dtype": str(next(itertools.chain(module.parameters(), module.buffers())).dtype).removeprefix("torch."),
    }
    if device.type == "cuda":
        facts["memory_bytes"] = torch.cuda.memory_allocated(device)
        facts["memory_reserved_bytes"] = torch.cuda.memory_reserved(device)
    return facts


def place(module: torch.nn.Module, options: LoadOptions) -> tuple[torch.nn.Module, torch.device, Placement]:
    """Move a module loaded without a device map to its device; return where inputs go."""
    device, placement = options.resolve()
    if placement != "offload":
        module = module.to(device)
    else:
        device = next(module.parameters()).device
    return module.eval(), device, placement
