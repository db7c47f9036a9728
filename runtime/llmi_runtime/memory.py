"""What this runtime process really holds, in the figure that counts against its budget.

Why measured and not computed from the weights: the weights are a fraction of a runtime's
footprint. On CPU the interpreter and libraries alone take about 400 MiB; on a GPU the CUDA
context and the caching allocator's slack are outside any tensor. So the runtime reports:

- CPU placement: the proportional set size (PSS), so pages shared with another process (a
  launcher that forked this one, the same library mapped twice) are counted once in total;
  the resident set size (RSS) is reported beside it and stands in where PSS is unreadable.
- GPU or offload placement: the bytes this process holds on the device: the allocator's
  reserved bytes plus the CUDA context. With NVML the process's own usage is read and the
  context is what it holds outside the allocator. Without NVML the context is taken from
  ``torch.cuda.mem_get_info`` readings just after CUDA init and after the load: the device
  memory the load took beyond what the allocator reserved (cuBLAS workspaces, lazily loaded
  kernels); the primary context made by the first reading itself is then not seen, so the
  figure errs low by it (a few hundred MiB), and another process loading on the same GPU at
  the same time blurs the deltas. NVML (``nvidia-ml-py``) should be installed where it matters;
  in a container whose PID namespace hides the host PIDs NVML cannot name this process and the
  deltas are used.

The arithmetic (``report``) is pure over injected readings; ``MemoryProbe`` takes the readings.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmi.modeltypes import ModelType
from llmi.planner import DeviceKind

if TYPE_CHECKING:
    from llmi_runtime.engines.base import LoadOptions


@dataclass(frozen=True)
class ProcessReading:
    """Host memory of the process, from /proc (smaps_rollup for PSS)."""

    rss_bytes: int
    pss_bytes: int | None


@dataclass(frozen=True)
class GpuReading:
    """Device memory readings of the process; None where the source is not available."""

    reserved_bytes: int  # torch.cuda.memory_reserved: what the caching allocator holds
    process_used_bytes: int | None = None  # NVML: everything this process holds on the device
    free_at_init: int | None = None  # mem_get_info just after CUDA init, before the weights
    free_now: int | None = None  # mem_get_info now
    reserved_at_init: int = 0


@dataclass(frozen=True)
class MemoryReport:
    """The ``memory`` object of ``/v1/health``; ``measured_bytes`` counts against the budget."""

    measured_bytes: int
    pss_bytes: int | None
    rss_bytes: int
    gpu_bytes: int | None
    gpu_context_bytes: int | None
    device: DeviceKind

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def gpu_held(reading: GpuReading) -> tuple[int, int | None]:
    """(bytes this process holds on the device, of which outside the allocator: the context)."""
    reserved = reading.reserved_bytes
    if reading.process_used_bytes is not None:
        held = max(reading.process_used_bytes, reserved)
        return held, held - reserved
    if reading.free_at_init is not None and reading.free_now is not None:
        taken = reading.free_at_init - reading.free_now
        outside = max(taken - (reserved - reading.reserved_at_init), 0)
        return reserved + outside, outside
    return reserved, None


def report(process: ProcessReading, gpu: GpuReading | None, device: DeviceKind) -> MemoryReport:
    """The figure for the budget: PSS (else RSS) on CPU, device bytes held on a GPU."""
    gpu_bytes, context = gpu_held(gpu) if gpu is not None else (None, None)
    if device == "cuda" and gpu_bytes is not None:
        measured = gpu_bytes
    else:
        measured = process.pss_bytes if process.pss_bytes is not None else process.rss_bytes
    return MemoryReport(measured, process.pss_bytes, process.rss_bytes, gpu_bytes, context, device)


def read_process(pid: int | None = None) -> ProcessReading:
    """RSS and PSS of ``pid`` (default: this process) through psutil (smaps_rollup on Linux)."""
    import psutil

    proc = psutil.Process(pid)
    try:
        full = proc.memory_full_info()
        return ProcessReading(int(full.rss), int(full.pss) if hasattr(full, "pss") else None)
    except (psutil.AccessDenied, OSError):
        return ProcessReading(int(proc.memory_info().rss), None)


def nvml_process_used(device_index: int, pid: int) -> int | None:
    """What NVML says ``pid`` holds on the device, or None without NVML (pip install nvidia-ml-py)."""
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
            for info in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if info.pid == pid and isinstance(info.usedGpuMemory, int):
                    return int(info.usedGpuMemory)
        finally:
            pynvml.nvmlShutdown()
    except pynvml.NVMLError:
        return None
    return None


class MemoryProbe:
    """Takes the readings for ``report``; ``mark_init`` runs once CUDA is initialised, before the load.

    The readers are injected so that tests can simulate a GPU (there is none where they run).
    """

    def __init__(
        self,
        device: DeviceKind,
        cuda: Any = None,
        process: Callable[[], ProcessReading] = read_process,
        nvml: Callable[[int, int], int | None] = nvml_process_used,
        device_index: int = 0,
    ) -> None:
        self.device = device
        self._cuda = cuda
        self._process = process
        self._nvml = nvml
        self._index = device_index
        self._free_at_init: int | None = None
        self._reserved_at_init = 0

    def mark_init(self) -> None:
        """Record the device's free memory before the weights arrive (initialises CUDA)."""
        if self.device == "cuda" and self._cuda is not None:
            self._free_at_init = int(self._cuda.mem_get_info(self._index)[0])
            self._reserved_at_init = int(self._cuda.memory_reserved(self._index))

    def gpu(self) -> GpuReading | None:
        """The device readings, or None on CPU or when the driver cannot answer (a health check must)."""
        if self.device != "cuda" or self._cuda is None:
            return None
        try:
            return GpuReading(
                reserved_bytes=int(self._cuda.memory_reserved(self._index)),
                process_used_bytes=self._nvml(self._index, os.getpid()),
                free_at_init=self._free_at_init,
                free_now=int(self._cuda.mem_get_info(self._index)[0]) if self._free_at_init is not None else None,
                reserved_at_init=self._reserved_at_init,
            )
        except RuntimeError:
            return None

    def read(self) -> MemoryReport:
        return report(self._process(), self.gpu(), self.device)


def probe_for(options: LoadOptions) -> MemoryProbe:
    """The probe for a runtime loading with ``options``; creates no CUDA context."""
    import torch

    device, _ = options.resolve()
    if device.type == "cuda":
        return MemoryProbe("cuda", torch.cuda, device_index=device.index or 0)
    return MemoryProbe("cpu")


def estimated_bytes(path: Path, model_type: ModelType, max_model_len: int, device: DeviceKind) -> int | None:
    """The catalog's estimate for this folder on this device, shown next to the measured figure."""
    from llmi.catalog.classify import NotAModel
    from llmi.catalog.estimate import estimate

    try:
        return estimate(path, model_type, max_model_len, device).total_bytes
    except (NotAModel, OSError, ValueError):
        return None
