"""Pure placement and eviction decisions: no I/O, no clock, no logging.

Why pure: the embedded supervisor and the Kubernetes operator carry out the same plans,
and a pure function can be property-tested for the one promise that matters: the
planned footprints never exceed the budget.

Rules of ``plan``: models are evicted least recently used first, and only as many as
needed (a model that takes none of the budget, e.g. one placed on the CPU, is never evicted
for room); pinned, busy (requests in flight) and loading models are never evicted. At most
``cache_size_per_type`` unpinned models of one type stay loaded (pinned and parked models do
not count, so pinning a model never blocks its type for good). When only busy or loading models stand
in the way the answer is ``Wait`` (plan again once they drain); when even evicting every
unpinned model would not make room it is ``Refuse``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from llmi.modeltypes import ModelType

if TYPE_CHECKING:
    from llmi.settings import Settings

GIB = 1024**3
DEFAULT_CPU_BUDGET_FRACTION = 0.5

PlacementKind = Literal["gpu", "offload", "cpu"]
PlacementOverride = Literal["auto", "gpu", "offload", "cpu"]
DeviceKind = Literal["cpu", "cuda"]  # which memory a budget counts: host memory or GPU memory


@dataclass(frozen=True)
class Budget:
    """Bytes of accelerator memory (or host memory without a GPU) models may occupy."""

    total_bytes: int
    gpu: bool
    offload_enabled: bool
    offload_threshold_bytes: int
    cache_size_per_type: int

    @property
    def device(self) -> DeviceKind:
        """The device kind estimates for this budget are made for."""
        return "cuda" if self.gpu else "cpu"


def budget_from_settings(settings: Settings, gpu_memory_bytes: int | None, host_memory_bytes: int) -> Budget:
    """The budget for this machine: the configured GPU budget capped by the detected GPU, else host memory."""
    if gpu_memory_bytes is not None:
        configured = int(settings.available_gpu_memory_gb * GIB)
        total = int(min(configured, gpu_memory_bytes) * settings.gpu_memory_utilization)
    elif settings.cpu_memory_budget_gb is not None:
        total = int(settings.cpu_memory_budget_gb * GIB)
    else:
        total = int(host_memory_bytes * DEFAULT_CPU_BUDGET_FRACTION)
    return Budget(
        total_bytes=total,
        gpu=gpu_memory_bytes is not None,
        offload_enabled=settings.enable_gpu_memory_offload and gpu_memory_bytes is not None,
        offload_threshold_bytes=int(settings.gpu_memory_offload_threshold_gb * GIB),
        cache_size_per_type=settings.model_cache_size,
    )


@dataclass(frozen=True)
class Placement:
    """Where a model runs and how many bytes of the budget it takes (offload: its GPU share)."""

    kind: PlacementKind
    footprint_bytes: int


@dataclass(frozen=True)
class Refusal:
    reason: str


def gib(n: int) -> str:
    return f"{n / GIB:.1f} GiB"


def placement(memory_bytes: int, budget: Budget, override: PlacementOverride = "auto") -> Placement | Refusal:
    """Where a model of ``memory_bytes`` goes under ``budget``, honouring a folder's override."""
    if not budget.gpu:
        if override in ("gpu", "offload"):
            return Refusal(f"placement {override} was asked for but there is no GPU")
        if memory_bytes > budget.total_bytes:
            return Refusal(f"needs {gib(memory_bytes)}, the memory budget is {gib(budget.total_bytes)}")
        return Placement("cpu", memory_bytes)
    if override == "cpu":
        return Placement("cpu", 0)
    offload = override == "offload" or (
        override == "auto" and budget.offload_enabled and memory_bytes > budget.offload_threshold_bytes
    )
    if offload:
        footprint = min(memory_bytes, budget.offload_threshold_bytes)
        if footprint > budget.total_bytes:
            return Refusal(f"the offload threshold {gib(footprint)} exceeds the GPU budget {gib(budget.total_bytes)}")
        return Placement("offload", footprint)
    if memory_bytes > budget.total_bytes:
        hint = "" if budget.offload_enabled or override == "gpu" else " and offload is disabled"
        return Refusal(f"needs {gib(memory_bytes)}, the GPU budget is {gib(budget.total_bytes)}{hint}")
    return Placement("gpu", memory_bytes)


@dataclass(frozen=True)
class Loaded:
    """A model that holds (or is about to hold) part of the budget."""

    name: str
    type: ModelType
    footprint_bytes: int
    last_used: float
    pinned: bool = False
    in_flight: int = 0
    loading: bool = False
    parked: bool = False  # weights in host memory: holds only its residue, not a place of its type

    @property
    def evictable(self) -> bool:
        return not self.pinned and self.in_flight == 0 and not self.loading


@dataclass(frozen=True)
class Ready:
    """Already loaded (or loading: join that load)."""


@dataclass(frozen=True)
class Load:
    """Unload ``evict`` (least recently used first), then load the model."""

    evict: tuple[str, ...] = ()


@dataclass(frozen=True)
class Wait:
    """Room can only be made by evicting busy or loading models; plan again when they drain."""

    reason: str


@dataclass(frozen=True)
class Refuse:
    """The model cannot fit even if every unpinned model were evicted."""

    reason: str


Plan = Ready | Load | Wait | Refuse


def lru_key(model: Loaded) -> tuple[float, str]:
    return (model.last_used, model.name)


def plan(budget: Budget, loaded: Sequence[Loaded], name: str, type: ModelType, footprint_bytes: int) -> Plan:
    """What to do so that ``name`` (``footprint_bytes`` of the budget) can serve."""
    if any(m.name == name for m in loaded):
        return Ready()
    if footprint_bytes > budget.total_bytes:
        return Refuse(f"{name} needs {gib(footprint_bytes)}, the budget is {gib(budget.total_bytes)}")
    pinned = sum(m.footprint_bytes for m in loaded if m.pinned)
    if pinned + footprint_bytes > budget.total_bytes:
        return Refuse(
            f"{name} needs {gib(footprint_bytes)}; pinned models hold {gib(pinned)} "
            f"of the {gib(budget.total_bytes)} budget"
        )
    by_lru = sorted(loaded, key=lru_key)
    same_type = [m for m in by_lru if m.type == type and not m.pinned and not m.parked]
    excess = len(same_type) - (budget.cache_size_per_type - 1)
    idle_same_type = [m for m in same_type if m.evictable]
    if excess > len(idle_same_type):
        busy = ", ".join(m.name for m in same_type if not m.evictable)
        return Wait(f"{type} models {busy} are busy or loading (at most {budget.cache_size_per_type} stay loaded)")
    victims = idle_same_type[: max(excess, 0)]
    chosen = {m.name for m in victims}
    free = budget.total_bytes - sum(m.footprint_bytes for m in loaded) + sum(m.footprint_bytes for m in victims)
    for model in by_lru:
        if free >= footprint_bytes:
            break
        if model.evictable and model.footprint_bytes > 0 and model.name not in chosen:
            victims.append(model)
            free += model.footprint_bytes
    if free < footprint_bytes:
        holders = ", ".join(m.name for m in by_lru if not m.evictable and not m.pinned and m.footprint_bytes > 0)
        return Wait(f"{name} needs {gib(footprint_bytes)}; {holders or 'busy or loading models'} hold the room")
    return Load(tuple(m.name for m in sorted(victims, key=lru_key)))
