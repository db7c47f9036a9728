"""Memory of this machine, found without torch (the control plane never imports it)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llmi.catalog.estimate import Launch
    from llmi.planner import Budget
    from llmi.settings import Settings

MIB = 1024 * 1024
DEFAULT_HF_CACHE = "<default>"
NVIDIA_SMI_TIMEOUT_S = 10.0


def gpu_memory_bytes() -> int | None:
    """Total memory of the first visible NVIDIA GPU per ``nvidia-smi``, or None without one.

    Only the first GPU: runtimes are placed on one device (tensor parallelism is vLLM's business).
    """
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run(
            [smi, "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=NVIDIA_SMI_TIMEOUT_S,
            check=True,
        ).stdout
        return int(out.split()[0]) * MIB
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def host_memory_bytes() -> int:
    """Physical memory, capped by a cgroup v2 limit when the process runs in a container."""
    total = _meminfo_total()
    if total is None:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    limit = _cgroup_limit()
    return min(total, limit) if limit else total


def _meminfo_total() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_limit() -> int | None:
    try:
        value = Path("/sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        return None
    return int(value) if value.isdigit() else None


def forks_runtimes(settings: Settings) -> bool:
    """Whether `llmi serve` forks runtimes from a pre-imported fork server (warm runtimes on, and
    Linux's pidfds to reap them), which changes what each runtime costs in memory."""
    return settings.warm_runtimes and hasattr(os, "pidfd_open")


def launch(settings: Settings) -> Launch:
    """How `llmi serve` starts runtimes, which decides each one's share of the libraries' memory."""
    if not forks_runtimes(settings):
        return "cold"
    return "spare" if settings.spare_runtime else "forked"


def hf_cache_dir(arg: str | None) -> Path | None:
    """The Hugging Face cache folder named on the command line; "" means the hub's default."""
    if arg is None:
        return None
    if arg in ("", DEFAULT_HF_CACHE):
        from huggingface_hub.constants import HF_HUB_CACHE

        return Path(HF_HUB_CACHE)
    return Path(arg).expanduser()


def machine_budget(settings: Settings, gpu_memory_gb: float | None = None) -> tuple[Settings, Budget]:
    """The budget of this machine, or of an imagined GPU of ``gpu_memory_gb`` GiB (for planning)."""
    from llmi.planner import budget_from_settings

    if gpu_memory_gb is not None:
        settings = settings.model_copy(update={"available_gpu_memory_gb": gpu_memory_gb})
        gpu: int | None = int(gpu_memory_gb * 2**30)
    else:
        gpu = gpu_memory_bytes()
    return settings, budget_from_settings(settings, gpu, host_memory_bytes())
