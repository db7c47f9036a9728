"""The supervisor's state machine with an in-memory launcher: races and failures, no processes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from llmi import planner
from llmi.catalog.estimate import Estimate
from llmi.catalog.scan import Catalog, ModelEntry
from llmi.errors import ModelNotFound, TooManyRequests, Unavailable
from llmi.modeltypes import ModelType
from llmi.settings import Settings
from llmi_router.embedded.process import StartFailed
from llmi_router.embedded.supervisor import TRANSITIONS, State, Supervisor
from llmi_router.metrics import RouterMetrics

GIB = 2**30


class FakeHandle:
    def __init__(self, name: str, n: int) -> None:
        self.url = f"http://fake/{name}/{n}"
        self._exit: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.exited = self._exit
        self.stopped = False
        self.stop_gate: asyncio.Event | None = None  # set by a test to hold a stop midway

    def reason(self) -> str:
        return "fake runtime said goodbye"

    async def stop(self, grace_s: float = 10.0) -> int:
        if self.stop_gate is not None:
            await self.stop_gate.wait()
        self.stopped = True
        if not self._exit.done():
            self._exit.set_result(0)
        return 0

    def crash(self) -> None:
        self._exit.set_result(-9)


class FakeLauncher:
    """Records starts; readiness is held by per-model gates the test opens."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.handles: dict[str, FakeHandle] = {}
        self.gates: dict[str, asyncio.Event] = {}
        self.fail: dict[str, str] = {}

    async def start(
        self, name: str, path: Path, model_type: str, placement: str, max_gpu_memory: int | None, env: dict[str, str]
    ) -> FakeHandle:
        handle = self.handles[name] = FakeHandle(name, len(self.started))
        self.started.append(name)
        return handle

    async def wait_ready(self, handle: FakeHandle, deadline_s: float) -> float:
        name = handle.url.split("/")[3]
        if name in self.gates:
            await self.gates[name].wait()
        if name in self.fail:
            raise StartFailed(self.fail[name])
        return 0.0

    async def measure(self, handle: FakeHandle) -> int | None:
        return None

    def reserved_bytes(self) -> int:
        return 0

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
    *entries: ModelEntry, budget_gib: float = 2.5, **settings: object
) -> tuple[Supervisor, FakeLauncher, Clock]:
    launcher, clock = FakeLauncher(), Clock()
    budget = planner.Budget(
        int(budget_gib * GIB), gpu=False, offload_enabled=False, offload_threshold_bytes=4 * GIB, cache_size_per_type=8
    )
    s = Settings(_env_file=None, **settings)  # type: ignore[call-arg]
    sup = Supervisor(s, budget, RouterMetrics(), clock=clock, launcher=launcher)
    await sup.update_catalog(Catalog(tuple(entries), ()))
    return sup, launcher, clock


async def settle() -> None:
    """Let every ready task run until nothing changes (no time passes)."""
    for _ in range(50):
        await asyncio.sleep(0)


async def use(sup: Supervisor, name: str) -> str:
    lease = await sup.acquire(name, 30)
    lease.release()
    await settle()
    return lease.url


def test_transition_table_is_complete_and_closed() -> None:
    assert set(TRANSITIONS) == set(State)
    for state, targets in TRANSITIONS.items():
        assert state not in targets
        assert targets <= set(State)
    assert State.READY in TRANSITIONS[State.STARTING]
    assert State.STARTING not in TRANSITIONS[State.READY]  # a ready model is never started twice


async def test_lru_eviction_happens_before_the_next_load() -> None:
    sup, launcher, clock = await make(entry("a"), entry("b"), entry("c"))
    for name in "abc":
        clock.now += 1
        await use(sup, name)
    assert launcher.started == ["a", "b", "c"]
    assert launcher.handles["a"].stopped
    assert not launcher.handles["b"].stopped
    assert sup.snapshot()["planned_bytes"] <= sup.budget.total_bytes
    assert sup.snapshot()["models"] == {"a": "stopped", "b": "ready", "c": "ready"}


async def test_a_model_still_stopping_is_not_followed_by_a_second_eviction() -> None:
    sup, launcher, clock = await make(entry("a"), entry("b"), entry("c"))
    for name in "ab":
        clock.now += 1
        await use(sup, name)
    launcher.handles["a"].stop_gate = asyncio.Event()
    waiting = [asyncio.create_task(sup.acquire("c", 30)) for _ in range(2)]
    await settle()
    assert sup.snapshot()["models"]["a"] == "draining"
    # A release wakes the waiters, who plan again while "a" is still stopping. (Were "b" evicted
    # too, this lease could never be had: the guard turns that hang into a failure.)
    await asyncio.wait_for(use(sup, "b"), 10)
    assert sup.snapshot()["models"] == {"a": "draining", "b": "ready", "c": "stopped"}
    launcher.handles["a"].stop_gate.set()
    for lease in await asyncio.gather(*waiting):
        lease.release()
    await settle()
    assert sup.snapshot()["models"] == {"a": "stopped", "b": "ready", "c": "ready"}
    assert not launcher.handles["b"].stopped


async def test_concurrent_requests_join_one_load() -> None:
    sup, launcher, _ = await make(entry("a"))
    launcher.gates["a"] = asyncio.Event()
    waiters = [asyncio.create_task(sup.acquire("a", 30)) for _ in range(5)]
    await settle()
    assert launcher.started == ["a"]
    assert sup.snapshot()["models"]["a"] == "starting"
    launcher.gates["a"].set()
    leases = await asyncio.gather(*waiters)
    assert {lease.url for lease in leases} == {"http://fake/a/0"}
    for lease in leases:
        lease.release()
        lease.release()  # idempotent
    await settle()
    assert sup.slots["a"].in_flight == 0


async def test_busy_model_is_not_evicted_until_it_drains() -> None:
    sup, launcher, clock = await make(entry("a", 2), entry("b", 2))
    busy = await sup.acquire("a", 30)
    clock.now += 1
    wanting_b = asyncio.create_task(sup.acquire("b", 30))
    await settle()
    assert not wanting_b.done()
    assert not launcher.handles["a"].stopped
    busy.release()
    lease_b = await wanting_b
    assert launcher.handles["a"].stopped
    lease_b.release()


async def test_a_full_queue_is_429() -> None:
    sup, launcher, _ = await make(entry("a"), max_queue_per_model=2)
    launcher.gates["a"] = asyncio.Event()
    first = asyncio.create_task(sup.acquire("a", 30))
    second = asyncio.create_task(sup.acquire("a", 30))
    await settle()
    with pytest.raises(TooManyRequests) as info:
        await sup.acquire("a", 30)
    assert info.value.status == 429
    launcher.gates["a"].set()
    for task in (first, second):
        (await task).release()


async def test_zero_deadline_is_503_not_a_hang() -> None:
    sup, launcher, _ = await make(entry("a"))
    launcher.gates["a"] = asyncio.Event()
    with pytest.raises(Unavailable) as info:
        await sup.acquire("a", 0)
    assert info.value.status == 503
    assert info.value.retry_after >= 1


async def test_load_failure_fails_waiters_and_others_keep_serving() -> None:
    sup, launcher, clock = await make(entry("bad"), entry("good"))
    launcher.fail["bad"] = "runtime could not load the model: broken weights"
    with pytest.raises(Unavailable) as info:
        await sup.acquire("bad", 30)
    assert info.value.code == "model_failed"
    assert "broken weights" in info.value.message
    assert sup.snapshot()["models"]["bad"] == "failed"
    assert await use(sup, "good")
    # No retry before the backoff ends; after it, a retry is attempted.
    with pytest.raises(Unavailable):
        await sup.acquire("bad", 30)
    assert launcher.started.count("bad") == 1
    clock.now += 3600
    del launcher.fail["bad"]
    assert await use(sup, "bad")
    assert launcher.started.count("bad") == 2


async def test_crash_is_noticed_and_the_next_request_restarts() -> None:
    sup, launcher, _ = await make(entry("a"))
    first = await use(sup, "a")
    launcher.handles["a"].crash()
    await settle()
    assert sup.snapshot()["models"]["a"] == "stopped"
    assert sup.slots["a"].error
    assert "goodbye" in sup.slots["a"].error
    second = await use(sup, "a")
    assert first != second


async def test_repeated_crashes_end_failed() -> None:
    sup, launcher, clock = await make(entry("a"))
    for _ in range(5):
        clock.now += 120  # past any backoff
        await use(sup, "a")
        launcher.handles["a"].crash()
        await settle()
    assert sup.snapshot()["models"]["a"] == "failed"


async def test_idle_models_unload_and_pinned_ones_stay() -> None:
    sup, _launcher, clock = await make(entry("a"), entry("p", pinned=True), idle_timeout_s=60)
    await use(sup, "a")
    await use(sup, "p")
    clock.now += 30
    await sup.reap_idle()
    assert sup.snapshot()["models"] == {"a": "ready", "p": "ready"}
    clock.now += 31
    await sup.reap_idle()
    assert sup.snapshot()["models"] == {"a": "stopped", "p": "ready"}


async def test_idle_reaping_never_takes_a_model_with_a_request() -> None:
    sup, _, clock = await make(entry("a"), idle_timeout_s=1)
    lease = await sup.acquire("a", 30)
    clock.now += 100
    await sup.reap_idle()
    assert sup.snapshot()["models"]["a"] == "ready"
    lease.release()


async def test_removed_model_404s_and_unloads() -> None:
    sup, launcher, _ = await make(entry("a"), entry("b"))
    await use(sup, "a")
    await sup.update_catalog(Catalog((entry("b"),), ()))
    with pytest.raises(ModelNotFound):
        await sup.acquire("a", 30)
    await sup.reap_idle()
    assert "a" not in sup.snapshot()["models"]
    assert launcher.handles["a"].stopped


async def test_shutdown_during_start_stops_everything() -> None:
    sup, launcher, _ = await make(entry("a"), entry("b"))
    await use(sup, "b")
    launcher.gates["a"] = asyncio.Event()
    waiting = asyncio.create_task(sup.acquire("a", 30))
    await settle()
    await sup.close()
    with pytest.raises((Unavailable, asyncio.CancelledError)):
        await waiting
    assert all(h.stopped for h in launcher.handles.values())


async def test_model_too_big_is_refused_with_a_reason() -> None:
    sup, _, _ = await make(entry("huge", 10))
    with pytest.raises(Unavailable) as info:
        await sup.acquire("huge", 30)
    assert info.value.code == "model_too_large"
