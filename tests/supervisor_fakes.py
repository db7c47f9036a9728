"""An in-memory launcher and helpers for the supervisor's tests: no processes, time injected."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from llmi import planner
from llmi.catalog.estimate import Estimate
from llmi.catalog.scan import Catalog, ModelEntry
from llmi.modeltypes import ModelType
from llmi.settings import Settings
from llmi_router.embedded.launch import RuntimeSpec
from llmi_router.embedded.process import StartFailed
from llmi_router.embedded.slots import World
from llmi_router.embedded.supervisor import Supervisor
from llmi_router.metrics import RouterMetrics

GIB = 2**30


class FakeHandle:
    def __init__(self, name: str, n: int) -> None:
        self.name = name
        self.url = f"http://fake/{name}/{n}"
        self.socket = f"/fake/{name}/{n}.sock"
        self._exit: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.exited = self._exit
        self.stopped = False
        self.killed = False  # SIGKILL sent, before the stop waits for the exit
        self.grace_s: float | None = None  # of the stop
        self.stop_gate: asyncio.Event | None = None  # set by a test to hold a stop midway

    def reason(self) -> str:
        return "fake runtime said goodbye"

    def kill(self) -> None:
        self.killed = True

    async def stop(self, grace_s: float = 10.0) -> int:
        if self.stop_gate is not None:
            await self.stop_gate.wait()
        self.stopped = True
        self.grace_s = grace_s
        if not self._exit.done():
            self._exit.set_result(0)
        return await asyncio.shield(self._exit)  # as the real handle: its exit future is the truth

    def crash(self) -> None:
        self._exit.set_result(-9)


class FakeLauncher:
    """Records starts, parks and wakes; readiness is held by per-model gates the test opens."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.handles: dict[str, FakeHandle] = {}
        self.gates: dict[str, asyncio.Event] = {}
        self.fail: dict[str, str] = {}
        self.explode: dict[str, BaseException] = {}  # raised by start() itself
        self.measured: dict[str, int] = {}
        self.parked: list[str] = []
        self.woken: list[str] = []
        self.residue = GIB // 4
        self.load_seconds = 0.0
        self.reserved = 0
        self.shifted: Callable[[], None] | None = None  # the supervisor's remeasure hook
        self.specs: list[RuntimeSpec] = []
        self.began: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)  # start() was called

    async def start(self, spec: RuntimeSpec) -> FakeHandle:
        name = spec.name
        self.specs.append(spec)
        if name in self.explode:
            raise self.explode[name]
        handle = self.handles[name] = FakeHandle(name, len(self.started))
        self.started.append(name)
        self.began[name].set()
        return handle

    async def wait_ready(self, handle: FakeHandle, deadline_s: float) -> float:
        if handle.name in self.gates:
            await self.gates[handle.name].wait()
        if handle.name in self.fail:
            raise StartFailed(self.fail[handle.name])
        return self.load_seconds

    async def measure(self, handle: FakeHandle) -> int | None:
        return self.measured.get(handle.name)

    async def park(self, handle: FakeHandle) -> int | None:
        self.parked.append(handle.name)
        return self.residue

    async def wake(self, handle: FakeHandle) -> None:
        self.woken.append(handle.name)

    def reserved_bytes(self) -> int:
        return self.reserved

    def on_shift(self, notify: Callable[[], None]) -> None:
        self.shifted = notify  # a test calls it as a spare's warm-up would

    def spare_state(self) -> str | None:
        return None

    async def close(self) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def entry(name: str, gib: float = 1.0, type_: ModelType = ModelType.EMBEDDING, **kw: object) -> ModelEntry:
    size = int(gib * GIB)
    return ModelEntry(name, type_, Path(f"/models/{name}"), size, Estimate(size, 0, 0, size), **kw)  # type: ignore[arg-type]


async def make(
    *entries: ModelEntry, budget_gib: float = 2.5, gpu: bool = False, host_gib: float = 0, **settings: object
) -> tuple[Supervisor, FakeLauncher, Clock]:
    launcher, clock = FakeLauncher(), Clock()
    budget = planner.Budget(
        int(budget_gib * GIB), gpu=gpu, offload_enabled=False, offload_threshold_bytes=4 * GIB, cache_size_per_type=8
    )
    settings.setdefault("swap_linger_ms", 0)  # a fake clock stands still: lingering is tested on its own
    s = Settings(_env_file=None, **settings)  # type: ignore[call-arg]
    sup = Supervisor(s, budget, RouterMetrics(), clock=clock, launcher=launcher, host_budget_bytes=int(host_gib * GIB))
    await sup.update_catalog(Catalog(tuple(entries), ()))
    return sup, launcher, clock


async def use(sup: Supervisor, name: str) -> str:
    lease = await sup.acquire(name, 30)
    lease.release()
    await sup.settled()
    return lease.url


def states(sup: Supervisor) -> dict[str, str]:
    return dict(sup.snapshot()["models"])


async def state_is(sup: Supervisor, name: str, state: str) -> None:
    """Wait (bounded) until ``name`` is in ``state``: an observation, not a sleep."""

    def ok(world: World) -> bool:
        slot = world.slots.get(name)
        return slot is not None and slot.state.value == state

    await sup.wait_until(ok, 10)
