"""Runtimes that are vLLM's own OpenAI-compatible server (`vllm serve`), for chat on a GPU.

The command comes from the shared builder (llmi/vllm.py), so embedded mode and the operator
start vLLM identically. Parking is vLLM's sleep mode level 1 (weights to host memory, KV cache
dropped); its endpoints exist only with VLLM_SERVER_DEV_MODE=1, which the launcher sets.
"""

from __future__ import annotations

import importlib.util
import shlex
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import httpx

from llmi.settings import Settings
from llmi.vllm import SLEEP_ENV, VllmLaunch, detect_quantization, vllm_args
from llmi_router.embedded.launch import RuntimeSpec
from llmi_router.embedded.process import RuntimeHandle, free_port, spawn_process, wait_ready, with_lifeline


def vllm_command(settings: Settings) -> list[str] | None:
    """How to run ``vllm`` here: LLM_VLLM_COMMAND, else the ``vllm`` script of an installed vLLM."""
    if settings.vllm_command:
        return shlex.split(settings.vllm_command)
    if importlib.util.find_spec("vllm") is None:
        return None
    script = Path(sys.executable).with_name("vllm")
    found = str(script) if script.is_file() else shutil.which("vllm")
    return [found] if found else [sys.executable, "-m", "vllm.entrypoints.cli.main"]


class VllmLauncher:
    """Starts ``vllm serve`` processes on loopback ports (the Launcher port)."""

    def __init__(self, settings: Settings, command: list[str], gpu_memory_bytes: int | None) -> None:
        self.settings = settings
        self.command = command
        self.gpu_memory_bytes = gpu_memory_bytes
        self._client = httpx.AsyncClient()

    def launch(self, spec: RuntimeSpec, port: int) -> VllmLaunch:
        s = self.settings
        return VllmLaunch(
            model_path=str(spec.path),
            served_name=spec.name,
            host="127.0.0.1",
            port=port,
            placement="offload" if spec.placement == "offload" else "gpu",
            footprint_bytes=spec.footprint_bytes,
            memory_bytes=spec.memory_bytes,
            gpu_memory_bytes=self.gpu_memory_bytes,
            max_model_len=s.vllm_max_model_len,
            dtype=s.vllm_dtype,
            tensor_parallel_size=s.vllm_tensor_parallel_size,
            quantization=detect_quantization(spec.path),
            sleep_mode=s.park_models,
        )

    async def start(self, spec: RuntimeSpec) -> RuntimeHandle:
        port = free_port()
        cmd = with_lifeline([*self.command, "serve", *vllm_args(self.launch(spec, port))])
        env = {**spec.env, **(SLEEP_ENV if self.settings.park_models else {})}
        return await spawn_process(spec.name, cmd, port, env)

    async def wait_ready(self, handle: RuntimeHandle, deadline_s: float) -> float:
        return await wait_ready(handle, deadline_s, self._client, path="/health")

    async def measure(self, handle: RuntimeHandle) -> int | None:
        return None  # vLLM holds what --gpu-memory-utilization gave it: the plan's own figure

    async def park(self, handle: RuntimeHandle) -> int | None:
        response = await self._client.post(f"{handle.url}/sleep", params={"level": "1"}, timeout=300)
        response.raise_for_status()
        return None

    async def wake(self, handle: RuntimeHandle) -> None:
        response = await self._client.post(f"{handle.url}/wake_up", timeout=300)
        response.raise_for_status()

    def reserved_bytes(self) -> int:
        return 0

    def on_shift(self, notify: Callable[[], None]) -> None:
        pass  # its own interpreters, sharing nothing with a launcher

    def spare_state(self) -> str | None:
        return None

    async def close(self) -> None:
        await self._client.aclose()
