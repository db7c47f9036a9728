"""The embedded control plane: runtime processes started, stopped and swapped under a budget.

One asyncio.Condition guards every slot; all state changes happen under it through
``_move`` (checked against ``TRANSITIONS``) and wake every waiter, who then looks again.
Decisions come from the pure planner; this module only carries them out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from llmi import planner
from llmi.catalog.scan import Catalog, ModelEntry
from llmi.errors import ModelNotFound, NotReadyInTime, TooManyRequests, Unavailable
from llmi.protocol.models import ModelCard
from llmi.settings import Settings
from llmi_router.embedded.launch import Handle, Launcher
from llmi_router.embedded.process import ProcessLauncher, StartFailed
from llmi_router.metrics import RouterMetrics
from llmi_router.ports import OnceLease

log = logging.getLogger("llmi.supervisor")


class State(StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    FAILED = "failed"


TRANSITIONS: dict[State, set[State]] = {
    State.STOPPED: {State.STARTING},
    State.STARTING: {State.READY, State.FAILED, State.STOPPED},
    State.READY: {State.DRAINING, State.STOPPED, State.FAILED},  # STOPPED/FAILED: the process died
    State.DRAINING: {State.STOPPED},
    State.FAILED: {State.STARTING},
}
# What /v1/models shows for each state (ARCHITECTURE: available/loading/ready/failed).
PUBLIC_STATE = {
    State.STOPPED: "available",
    State.STARTING: "loading",
    State.READY: "ready",
    State.DRAINING: "unloading",
    State.FAILED: "failed",
}
MAX_FAILURES = 5
LOAD_RETRY_S = 30.0


@dataclass
class Slot:
    entry: ModelEntry
    state: State = State.STOPPED
    handle: Handle | None = None
    in_flight: int = 0
    waiting: int = 0
    last_used: float = 0.0
    placement: str = ""
    footprint: int = 0
    error: str | None = None
    failures: int = 0
    retry_at: float = 0.0
    ready_since: float = 0.0
    removed: bool = False
    watcher: asyncio.Task[None] | None = field(default=None, repr=False)


class Supervisor:
    """Implements the router's ControlPlane port with local runtime processes."""

    def __init__(
        self,
        settings: Settings,
        budget: planner.Budget,
        metrics: RouterMetrics,
        clock: Callable[[], float] = time.monotonic,
        launcher: Launcher | None = None,
    ) -> None:
        self.settings = settings
        self.budget = budget
        self.metrics = metrics
        self.clock = clock
        self.slots: dict[str, Slot] = {}
        self.problems: list[dict[str, str]] = []
        self._cond = asyncio.Condition()
        self.launcher: Launcher = launcher or ProcessLauncher()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False
        metrics.budget_bytes.set(budget.total_bytes)
        metrics.planned_bytes.set_function(lambda: float(self.snapshot()["planned_bytes"]))

    # -- catalog --------------------------------------------------------------------------

    async def update_catalog(self, catalog: Catalog) -> None:
        """Add new models, forget vanished ones (a loaded one is stopped once idle)."""
        async with self._cond:
            seen = set()
            for entry in catalog.entries:
                seen.add(entry.name)
                slot = self.slots.get(entry.name)
                if slot is None:
                    self.slots[entry.name] = Slot(entry)
                    log.info(
                        "found %s (%s, ~%.2f GiB) at %s", entry.name, entry.type, entry.memory_bytes / 2**30, entry.path
                    )
                elif slot.entry != entry and slot.state in (State.STOPPED, State.FAILED):
                    slot.entry, slot.failures, slot.retry_at, slot.removed = entry, 0, 0.0, False
            for name, slot in list(self.slots.items()):
                if name not in seen and not slot.removed:
                    slot.removed = True
                    log.info("model folder of %s is gone", name)
                    if slot.state in (State.STOPPED, State.FAILED):
                        del self.slots[name]
            self.problems = [{"path": str(p.path), "reason": p.reason} for p in catalog.problems]
            self._cond.notify_all()

    def model_type(self, model: str) -> str | None:
        slot = self.slots.get(model)
        return None if slot is None or slot.removed else str(slot.entry.type)

    def describe(self) -> list[ModelCard]:
        out = []
        for name, slot in sorted(self.slots.items()):
            if slot.removed:
                continue
            where = planner.placement(slot.entry.memory_bytes, self.budget, slot.entry.placement)
            out.append(
                ModelCard(
                    id=name,
                    created=_created(slot),
                    type=str(slot.entry.type),
                    engine=slot.entry.engine,
                    state=PUBLIC_STATE[slot.state],
                    memory_bytes=slot.entry.memory_bytes,
                    memory_estimated_bytes=slot.entry.memory_bytes,
                    placement=slot.placement or getattr(where, "kind", None),
                    in_flight=slot.in_flight,
                    queued=slot.waiting,
                    error=slot.error,
                )
            )
        return out

    def health(self) -> dict[str, Any]:
        return {**self.snapshot(), "problems": self.problems}

    def snapshot(self) -> dict[str, Any]:
        """Planned memory and states, for tests and /v1/health."""
        used = sum(s.footprint for s in self.slots.values() if s.state in _HOLDING)
        return {
            "budget_bytes": self.budget.total_bytes,
            "planned_bytes": used,
            "models": {n: s.state.value for n, s in self.slots.items()},
        }

    # -- requests -------------------------------------------------------------------------

    async def acquire(self, model: str, deadline_s: float) -> OnceLease:
        deadline = self.clock() + deadline_s
        async with self._cond:
            slot = self.slots.get(model)
            if slot is None or slot.removed:
                raise ModelNotFound(model)
            if slot.waiting >= self.settings.max_queue_per_model:
                raise TooManyRequests(f"Too many requests are waiting for '{model}'.", retry_after=1)
            slot.waiting += 1
            self.metrics.queue.labels(model).inc()
            try:
                while True:
                    if self._closing:
                        raise Unavailable("The server is shutting down.", retry_after=5)
                    if slot.state is State.READY:
                        assert slot.handle is not None
                        slot.in_flight += 1
                        slot.last_used = self.clock()
                        self.metrics.in_flight.labels(model).inc()
                        return OnceLease(slot.handle.url, lambda s=slot: self._release(s))
                    if slot.removed:
                        raise ModelNotFound(model)
                    if slot.state is State.FAILED and self.clock() < slot.retry_at:
                        raise Unavailable(
                            f"Model '{model}' failed: {slot.error}",
                            retry_after=slot.retry_at - self.clock(),
                            code="model_failed",
                        )
                    if slot.state in (State.STOPPED, State.FAILED):
                        self._try_start(slot)
                    remaining = deadline - self.clock()
                    if remaining <= 0:
                        raise NotReadyInTime(model, deadline_s)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._cond.wait(), remaining)
            finally:
                slot.waiting -= 1
                self.metrics.queue.labels(model).dec()

    def _release(self, slot: Slot) -> None:
        slot.in_flight -= 1
        slot.last_used = self.clock()
        self.metrics.in_flight.labels(slot.entry.name).dec()
        self._spawn(self._notify())

    async def _notify(self) -> None:
        async with self._cond:
            self._cond.notify_all()

    def _loaded(self) -> list[planner.Loaded]:
        return [
            planner.Loaded(
                name=n,
                type=s.entry.type,
                footprint_bytes=s.footprint,
                last_used=s.last_used,
                pinned=s.entry.pinned,
                in_flight=s.in_flight,
                loading=s.state is not State.READY,
            )
            for n, s in self.slots.items()
            if s.state in _HOLDING
        ]

    def _try_start(self, slot: Slot) -> None:
        """Under the lock: plan the load; when it can go ahead, start it (and its evictions)."""
        where = planner.placement(slot.entry.memory_bytes, self.budget, slot.entry.placement)
        if isinstance(where, planner.Refusal):
            raise Unavailable(
                f"Model '{slot.entry.name}' cannot be loaded: {where.reason}", retry_after=60, code="model_too_large"
            )
        name, kind, footprint = slot.entry.name, slot.entry.type, where.footprint_bytes
        loaded = self._loaded()
        now = planner.plan(self.budget, loaded, name, kind, footprint)
        if not (isinstance(now, planner.Load) and not now.evict):
            # Models already being stopped will free their memory: plan without them, so a
            # second waiter never evicts more than needed, and wait while they go.
            going = {n for n, s in self.slots.items() if s.state is State.DRAINING}
            decision = planner.plan(self.budget, [m for m in loaded if m.name not in going], name, kind, footprint)
            if isinstance(decision, planner.Refuse):
                raise Unavailable(f"Model '{name}' cannot be loaded: {decision.reason}", retry_after=30, code="no_room")
            if isinstance(decision, planner.Wait):
                return  # busy models must drain first; a release wakes us to plan again
            assert isinstance(decision, planner.Load)
            # Stop the victims first and plan again once they are gone, so that planned memory
            # never exceeds the budget, not even while a runtime shuts down.
            for victim_name in decision.evict:
                victim = self.slots[victim_name]
                self._move(victim, State.DRAINING)
                self.metrics.evictions.labels(victim_name).inc()
                log.info("evicting %s (least recently used) to make room for %s", victim_name, name)
                self._spawn(self._stop(victim))
            return
        self._move(slot, State.STARTING)
        slot.placement, slot.footprint, slot.error = where.kind, where.footprint_bytes, None
        self._spawn(self._start(slot))

    async def _start(self, slot: Slot) -> None:
        name = slot.entry.name
        t0 = self.clock()
        log.info("loading %s (%s, %s)", name, slot.entry.type, slot.placement)
        handle: Handle | None = None
        try:
            handle = await self.launcher.start(
                name,
                slot.entry.path,
                str(slot.entry.type),
                slot.placement,
                slot.footprint if slot.placement == "offload" else None,
                self._child_env(),
            )
            slot.handle = handle
            await self.launcher.wait_ready(handle, self.settings.load_timeout_s)
        except (StartFailed, OSError) as exc:
            if handle is not None:
                await handle.stop()
            async with self._cond:
                slot.handle = None
                slot.failures += 1
                slot.error = str(exc)
                # A model that cannot load will not load on the next request either.
                slot.retry_at = self.clock() + min(LOAD_RETRY_S * 2 ** (slot.failures - 1), 600.0)
                self._move(slot, State.FAILED)
                self._cond.notify_all()
            self.metrics.loads.labels(name, "failed").inc()
            log.error("loading %s failed: %s", name, exc)
            return
        except asyncio.CancelledError:
            if handle is not None:
                await handle.stop()
            raise
        seconds = self.clock() - t0
        async with self._cond:
            self._move(slot, State.READY)
            slot.ready_since = slot.last_used = self.clock()
            slot.watcher = asyncio.create_task(self._watch(slot, handle))
            self._cond.notify_all()
        self.metrics.loads.labels(name, "ok").inc()
        self.metrics.load_seconds.labels(name).observe(seconds)
        log.info("ready: %s in %.2fs", name, seconds)

    async def _watch(self, slot: Slot, handle: Handle) -> None:
        """Notice a runtime that dies on its own; the next request restarts it (with backoff)."""
        assert handle.exited is not None
        code = await handle.exited
        async with self._cond:
            if slot.handle is not handle or slot.state is not State.READY:
                return  # stopped on purpose
            await handle.stop()
            slot.handle = None
            lived = self.clock() - slot.ready_since
            slot.failures = 1 if lived > 60 else slot.failures + 1
            slot.error = f"runtime exited unexpectedly with code {code}: {handle.reason()}"
            log.error("%s: %s", slot.entry.name, slot.error)
            self.metrics.crashes.labels(slot.entry.name).inc()
            if slot.failures >= MAX_FAILURES:
                self._move(slot, State.FAILED)
                slot.retry_at = self.clock() + _backoff(slot.failures)
            else:
                self._move(slot, State.STOPPED)
                slot.retry_at = self.clock() + _backoff(slot.failures - 1)
            slot.footprint = 0
            self._cond.notify_all()

    async def _stop(self, slot: Slot) -> None:
        """Stop a DRAINING slot once its in-flight requests are done."""
        async with self._cond:
            await self._cond.wait_for(lambda: slot.in_flight == 0 or self._closing)
            handle, slot.handle = slot.handle, None
        if handle is not None:
            await handle.stop()
        async with self._cond:
            self._move(slot, State.STOPPED)
            slot.footprint = 0
            if slot.removed:
                self.slots.pop(slot.entry.name, None)
            self._cond.notify_all()
        log.info("unloaded %s", slot.entry.name)

    async def forget_if_dead(self, model: str, url: str, timeout_s: float = 5.0) -> bool:
        """After a refused connection to ``url``: wait briefly for that runtime's exit to be
        noticed, so the caller can retry on a fresh one. True when it is gone."""
        slot = self.slots.get(model)
        if slot is None:
            return False
        handle = slot.handle
        if handle is None or handle.url != url:
            return True  # already noticed and cleared (or replaced)
        if handle.exited is None:
            return False
        done, _ = await asyncio.wait({handle.exited}, timeout=timeout_s)
        if done and slot.watcher is not None:
            await asyncio.wait({slot.watcher}, timeout=timeout_s)
        return bool(done)

    # -- background duties ----------------------------------------------------------------

    async def reap_idle(self) -> None:
        """Unload models idle past their timeout (LLM_AUTO_UNLOAD_MODELS)."""
        now = self.clock()
        async with self._cond:
            idle = [
                s
                for s in self.slots.values()
                if s.state is State.READY
                and s.in_flight == 0
                and s.waiting == 0
                and not s.entry.pinned
                and (s.removed or now - s.last_used >= self._idle_timeout(s))
            ]
            for slot in idle:
                log.info("unloading %s: idle for %.0fs", slot.entry.name, now - slot.last_used)
                self._move(slot, State.DRAINING)
        await asyncio.gather(*(self._stop(s) for s in idle))

    def _idle_timeout(self, slot: Slot) -> float:
        if slot.entry.idle_timeout_s is not None:
            return slot.entry.idle_timeout_s
        return self.settings.idle_timeout_s if self.settings.auto_unload_models else float("inf")

    async def close(self) -> None:
        """Drain in-flight requests (bounded), stop every runtime, cancel background work."""
        async with self._cond:
            self._closing = True
            for slot in self.slots.values():
                if slot.state is State.READY:
                    self._move(slot, State.DRAINING)
            self._cond.notify_all()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.settings.drain_timeout_s):
                async with self._cond:
                    await self._cond.wait_for(lambda: all(s.in_flight == 0 for s in self.slots.values()))
        for task in list(self._tasks):
            task.cancel()
        handles = [s.handle for s in self.slots.values() if s.handle is not None]
        await asyncio.gather(*(h.stop() for h in handles), return_exceptions=True)
        for slot in self.slots.values():
            if slot.watcher is not None:
                slot.watcher.cancel()
        await self.launcher.close()

    # -- helpers --------------------------------------------------------------------------

    def _move(self, slot: Slot, new: State) -> None:
        if new not in TRANSITIONS[slot.state]:
            raise RuntimeError(f"{slot.entry.name}: illegal transition {slot.state} -> {new}")
        self.metrics.state.labels(slot.entry.name, slot.state.value).set(0)
        slot.state = new
        self.metrics.state.labels(slot.entry.name, new.value).set(1)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.settings.cuda_visible_devices is not None:
            env["CUDA_VISIBLE_DEVICES"] = self.settings.cuda_visible_devices
        return env


_HOLDING = {State.STARTING, State.READY, State.DRAINING}


def _created(slot: Slot) -> int:
    """OpenAI's ``created``: when the model folder last changed."""
    try:
        return int(slot.entry.path.stat().st_mtime)
    except OSError:
        return 0


def _backoff(failures: int) -> float:
    return 0.0 if failures <= 1 else min(2.0 ** (failures - 1), 60.0)
