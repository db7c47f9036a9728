"""The embedded control plane: one owner task applies ``step`` and carries out its effects.

Only the owner task changes ``world``; everything else posts events to it: requests (``Want``,
``Cancel``, ``Release``), and the child tasks that start, stop, park and wake runtimes, which
report their outcome. Effects that answer a request resolve that request's own future, so a
change wakes only those it concerns. The router sees the ``ControlPlane`` port only.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from llmi import planner
from llmi.catalog import measured
from llmi.catalog.scan import Catalog, ModelEntry
from llmi.errors import LlmiError, ModelNotFound, ModelTooLarge, NotReadyInTime, TooManyRequests, Unavailable
from llmi.protocol.models import ModelCard
from llmi.settings import Settings
from llmi.vllm import resolve_engine
from llmi_router.embedded import slots as s
from llmi_router.embedded.launch import Handle, Launcher, RuntimeSpec
from llmi_router.embedded.process import ProcessLauncher
from llmi_router.embedded.step import idle_deadline, next_waiter_id, next_wakeup, request_step, step
from llmi_router.events import EventHub, ModelEvent
from llmi_router.metrics import RouterMetrics
from llmi_router.ports import OnceLease

log = logging.getLogger("llmi.supervisor")
State = s.State
TRANSITIONS = s.TRANSITIONS
STOP_GRACE_S = 10.0


def config_from(settings: Settings, budget: planner.Budget, host_budget_bytes: int = 0) -> s.Config:
    """The decision rules' knobs, from the settings (parking only with a GPU and a host budget)."""
    return s.Config(
        budget=budget,
        host_budget_bytes=host_budget_bytes if budget.gpu and settings.park_models else 0,
        max_queue=settings.max_queue_per_model,
        max_concurrent=settings.max_concurrent_per_model,
        fairness_s=settings.swap_fairness_s,
        linger_s=settings.swap_linger_ms / 1000,
        load_timeout_s=settings.load_timeout_s,
        idle_timeout_s=settings.idle_timeout_s if settings.auto_unload_models else float("inf"),
        drain_timeout_s=settings.drain_timeout_s,
        max_failures=settings.max_load_failures,
        load_retry_s=settings.load_retry_s,
    )


class Supervisor:
    """Implements the router's ControlPlane port with local runtime processes."""

    def __init__(
        self,
        settings: Settings,
        budget: planner.Budget,
        metrics: RouterMetrics,
        clock: Callable[[], float] = time.monotonic,
        launcher: Launcher | None = None,
        host_budget_bytes: int = 0,
        vllm_launcher: Launcher | None = None,
        measured_store: Path | None = None,
    ) -> None:
        self.settings = settings
        self.budget = budget
        self.metrics = metrics
        self.clock = clock
        self.launcher: Launcher = launcher or ProcessLauncher()
        self.vllm_launcher = vllm_launcher  # for chat models on vLLM (GPU); None: vLLM cannot run here
        self.config = config_from(settings, budget, host_budget_bytes)
        self.world = s.World()
        self.problems: list[dict[str, str]] = []
        self._store_path = measured_store  # where measurements are remembered across restarts
        self._store = measured.load(measured_store) if measured_store is not None else measured.MeasuredStore()
        self._saving = asyncio.Lock()
        self.events = EventHub()
        self._created: dict[str, int] = {}
        self._inbox: deque[tuple[s.Event, asyncio.Future[list[asyncio.Task[Any]]] | None]] = deque()
        self._wakeup = asyncio.Event()
        self._sleeping_until: float | None = None  # the owner's timer while it waits (None: no timer)
        self._applying = False  # an event is going through step() now: another one waits its turn
        self._changed = asyncio.Event()
        self._engine_of: dict[str, tuple[ModelEntry, str | None, str | None]] = {}  # engine(), per entry
        self._hot: dict[str, tuple[s.Want, Callable[[], None]]] = {}  # _hot_of(), per model
        self._owner: asyncio.Task[None] | None = None
        self._futures: dict[int, asyncio.Future[OnceLease] | _Inline] = {}
        self._handles: dict[str, tuple[int, Handle, Launcher]] = {}
        self._starting: dict[str, asyncio.Task[None]] = {}
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._ops: dict[str, asyncio.Task[None]] = {}
        self._busy: set[asyncio.Task[Any]] = set()
        self._published: dict[str, tuple[s.Slot, int]] = {}  # what the gauges show, by model
        self._series: dict[str, _Series] = {}
        metrics.budget_bytes.set(budget.total_bytes)
        self.launcher.on_shift(lambda: self.post(s.Remeasure()))
        metrics.planned_bytes.set_function(lambda: float(self.world.planned_bytes()))

    # -- the port -----------------------------------------------------------------------------

    async def update_catalog(self, catalog: Catalog) -> None:
        """Add new models, forget vanished ones (a loaded one is stopped once idle)."""
        self.problems = [{"path": str(p.path), "reason": p.reason} for p in catalog.problems]
        for entry in catalog.entries:
            if entry.name not in self._created:
                self._created[entry.name] = _mtime(entry.path)
        await self._call(s.CatalogChanged(catalog.entries, self._remembered(catalog)))

    def _remembered(self, catalog: Catalog) -> dict[str, int]:
        """Measurements of earlier runs, for the placement each model would get now."""
        out = {}
        for entry in catalog.entries:
            where = planner.placement(entry.memory_bytes, self.budget, entry.placement)
            kind = where.kind if isinstance(where, planner.Placement) else None
            size = kind and self._store.get(
                entry.path, kind, self.budget.device, known_fingerprint=entry.weights_fingerprint or None
            )
            if size:
                out[entry.name] = size
        return out

    def is_ready(self, model: str) -> bool:
        """Ready to serve now (the router then skips the strict parse: the runtime validates)."""
        slot = self.world.slots.get(model)
        return slot is not None and slot.state is State.READY and not slot.removed

    def hold_now(self, model: str) -> OnceLease | None:
        """A lease granted this instant, or None: the front door then sends the request to the
        app, which waits for it. A want that would queue (at the concurrency bound) is withdrawn."""
        slot = self.world.slots.get(model)
        if slot is None or slot.state is not State.READY or slot.removed:
            return None
        if self._inbox or self._applying or self._owner is None or self._owner.done():
            return None
        want, _ = self._hot_of(model)
        hot = request_step(self.world, want, self.clock(), self.config)
        if hot is not None:  # the common case, without a waiter's bookkeeping: granted this instant
            self.world, effects = hot
            self._changed.set()
            grant = effects[0]
            assert isinstance(grant, s.Grant)
            return self._lease(model, grant.url)
        wid = next_waiter_id()
        answer = self._futures[wid] = _Inline()
        self._post_hot(s.Want(wid, model))  # applied inline: the inbox is empty
        if answer.lease is None and self._futures.pop(wid, None) is not None:
            self.post(s.Cancel(wid))  # it queued: withdrawn
        return answer.lease

    def engine(self, model: str) -> str | None:
        """The engine that serves (or would serve) ``model``: "vllm" or "transformers"."""
        slot = self.world.slots.get(model)
        if slot is None:
            return None
        known = self._engine_of.get(model)
        if known is not None and known[0] is slot.entry and known[1] == slot.placement:
            return known[2]  # the front door asks on every request; the answer changes with these only
        entry = slot.entry
        placement = slot.placement or _kind(planner.placement(entry.memory_bytes, self.budget, entry.placement))
        engine = self._engine(entry, placement)
        found = engine if engine in ("vllm", "transformers") else None
        self._engine_of[model] = (entry, slot.placement, found)
        return found

    def model_type(self, model: str) -> str | None:
        slot = self.world.slots.get(model)
        return None if slot is None or slot.removed else str(slot.entry.type)

    async def acquire(self, model: str, deadline_s: float) -> OnceLease:
        """Wait (bounded) for ``model`` to be ready and hold it for one request. Cancelling this
        withdraws the request: a load nobody waits for any more is not started."""
        self._ensure_owner()
        wid = next_waiter_id()
        future: asyncio.Future[OnceLease] = asyncio.get_running_loop().create_future()
        self._futures[wid] = future
        self._post_hot(s.Want(wid, model))
        if future.done() and not future.cancelled() and future.exception() is None:
            return future.result()  # granted at once: a ready model
        try:
            async with asyncio.timeout(deadline_s):
                return await future
        except TimeoutError:
            self._abandon(wid, future)
            raise NotReadyInTime(model, deadline_s) from None
        except asyncio.CancelledError:
            self._abandon(wid, future)
            raise

    def _abandon(self, wid: int, future: asyncio.Future[OnceLease]) -> None:
        self._futures.pop(wid, None)
        if future.done() and not future.cancelled() and future.exception() is None:
            future.result().release()  # granted just as the caller gave up
        else:
            future.cancel()
            self.post(s.Cancel(wid))

    def describe(self) -> list[ModelCard]:
        cards = []
        for name, slot in sorted(self.world.slots.items()):
            if slot.removed:
                continue
            where = planner.placement(slot.entry.memory_bytes, self.budget, slot.entry.placement)
            engine = self._engine(slot.entry, slot.placement or _kind(where))
            cards.append(
                ModelCard(
                    id=name,
                    created=self._created.get(name, 0),
                    type=str(slot.entry.type),
                    engine=engine if engine in ("vllm", "transformers") else slot.entry.engine,
                    state=s.PUBLIC_STATE[slot.state],
                    placement=slot.placement or getattr(where, "kind", None),
                    memory_bytes=slot.measured or slot.entry.memory_bytes,
                    memory_estimated_bytes=slot.entry.memory_bytes,
                    memory_measured_bytes=slot.measured,
                    pinned=slot.is_pinned,
                    in_flight=slot.in_flight,
                    queued=self.world.queued(name),
                    last_used=_wall(slot.last_used, self.clock) if slot.last_used else None,
                    loading_s=round(self.clock() - slot.since, 1) if slot.state is State.STARTING else None,
                    last_load_s=round(slot.last_load_s, 2) if slot.last_load_s else None,
                    error=slot.error,
                )
            )
        return cards

    def health(self) -> dict[str, Any]:
        return {**self.snapshot(), "problems": self.problems}

    def snapshot(self) -> dict[str, Any]:
        """Planned memory and states, for tests and /v1/health."""
        return {
            "budget_bytes": self.budget.total_bytes,
            "reserved_bytes": self.config.reserved_bytes,
            "spare_runtime": self.launcher.spare_state(),
            "planned_bytes": self.world.planned_bytes(),
            "models": {n: slot.state.value for n, slot in self.world.slots.items()},
        }

    @property
    def slots(self) -> dict[str, s.Slot]:
        return dict(self.world.slots)

    async def forget_if_dead(self, model: str, url: str, timeout_s: float = 5.0) -> bool:
        """After a refused connection to ``url``: wait briefly for that runtime's exit to be
        noticed, so the caller can retry on a fresh one. True when it is gone."""
        known = self._handles.get(model)
        if known is None or known[1].url != url:
            return True  # already noticed and cleared (or replaced)
        exited = known[1].exited
        if exited is None:
            return False
        done, _ = await asyncio.wait({exited}, timeout=timeout_s)
        if not done:
            return False
        with contextlib.suppress(TimeoutError):
            await self.wait_until(lambda w: (slot := w.slots.get(model)) is None or slot.url != url, timeout_s)
        return True

    # -- operations (admin endpoints) ---------------------------------------------------------

    async def load(self, model: str, deadline_s: float) -> ModelCard:
        """Make ``model`` ready as a request would, and hold it no longer."""
        (await self.acquire(model, deadline_s)).release()
        return self.card(model)

    async def unload(self, model: str) -> ModelCard:
        """Unload now: no new requests, in-flight ones finish, then the runtime stops."""
        if self.model_type(model) is None:
            raise ModelNotFound(model)
        await self._call(s.Unload(model))
        return self.card(model)

    async def pin(self, model: str, pinned: bool) -> ModelCard:
        """Keep ``model`` loaded (never evicted, never idle-unloaded), or let it go again."""
        if self.model_type(model) is None:
            raise ModelNotFound(model)
        await self._call(s.Pin(model, pinned))
        return self.card(model)

    def card(self, model: str) -> ModelCard:
        for card in self.describe():
            if card.id == model:
                return card
        raise ModelNotFound(model)

    async def reap_idle(self) -> None:
        """Look at idle timeouts now and wait for the unloads that follows (the owner also does
        this by itself when a timeout is due)."""
        await self._call(s.Tick())
        await self.settled()

    async def close(self) -> None:
        """Drain in-flight requests (bounded), stop every runtime, end background work."""
        self._ensure_owner()
        self.post(s.Close())
        limit = self.settings.drain_timeout_s + 2 * STOP_GRACE_S + 5
        with contextlib.suppress(TimeoutError):
            await self.wait_until(lambda w: all(x.state not in s.HOLDING for x in w.slots.values()), limit)
        for _, handle, _ in list(self._handles.values()):  # only if a stop itself hung
            with contextlib.suppress(Exception):
                await handle.stop(0)
        tasks = [*self._watchers.values(), *self._busy]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._owner is not None:
            self._owner.cancel()
            await asyncio.gather(self._owner, return_exceptions=True)
        await self.launcher.close()
        if self.vllm_launcher is not None:
            await self.vllm_launcher.close()

    # -- observing (tests, the event stream) --------------------------------------------------

    async def wait_until(self, predicate: Callable[[s.World], bool], timeout_s: float | None = None) -> None:
        async with asyncio.timeout(timeout_s):
            while not predicate(self.world):
                self._changed.clear()
                await self._changed.wait()

    async def settled(self) -> None:
        """Until no event is pending and no start, stop, park or wake is under way."""
        while self._inbox or self._busy:
            if self._busy:
                await asyncio.wait(set(self._busy))
            else:
                self._changed.clear()
                await self._changed.wait()

    # -- the owner ----------------------------------------------------------------------------

    def post(self, event: s.Event) -> None:
        """Hand an event to the owner task; safe from any task and from sync callbacks."""
        self._inbox.append((event, None))
        self._wakeup.set()

    def _post_hot(self, event: s.Want | s.Release) -> None:
        """A request's own event (want, release), applied at once when nothing is queued before it:
        the same order as the owner would apply it, without a task switch each way. The owner is
        woken only when the event brings its next timer forward (an idle timeout that starts)."""
        if self._inbox or self._applying or self._owner is None or self._owner.done():
            self.post(event)
            return
        hot = request_step(self.world, event, self.clock(), self.config)
        if hot is not None:  # the gauges show nothing these change (in flight is read when scraped)
            self.world, effects = hot
            for effect in effects:
                self._do(effect)
            self._changed.set()
            wake = idle_deadline(self.world.slots[event.model], self.config) if isinstance(event, s.Release) else None
        else:
            self._apply(event)
            if isinstance(event, s.Want) and event.waiter not in self._futures:
                return  # granted at once: in flight now, so no idle timer of this model can start
            if isinstance(event, s.Release) and (slot := self.world.slots.get(event.model)) and slot.in_flight:
                return  # still busy: its idle timer does not start yet
            wake = next_wakeup(self.world, self.clock(), self.config)
        if wake is not None and (self._sleeping_until is None or wake < self._sleeping_until):
            self._wakeup.set()

    async def _call(self, event: s.Event) -> list[asyncio.Task[Any]]:
        """Post an event and wait until the owner has applied it."""
        self._ensure_owner()
        ack: asyncio.Future[list[asyncio.Task[Any]]] = asyncio.get_running_loop().create_future()
        self._inbox.append((event, ack))
        self._wakeup.set()
        return await ack

    def _ensure_owner(self) -> None:
        if self._owner is None or self._owner.done():
            self._owner = asyncio.create_task(self._run(), name="llmi-supervisor")

    async def _run(self) -> None:
        while True:
            while not self._inbox:
                self._wakeup.clear()
                wake = self._sleeping_until = next_wakeup(self.world, self.clock(), self.config)
                try:
                    async with asyncio.timeout(None if wake is None else max(0.001, wake - self.clock())):
                        await self._wakeup.wait()
                except TimeoutError:
                    self._inbox.append((s.Tick(), None))
                finally:
                    self._sleeping_until = None
            event, ack = self._inbox.popleft()
            spawned = self._apply(event)
            if ack is not None and not ack.done():
                ack.set_result(spawned)

    def _apply(self, event: s.Event) -> list[asyncio.Task[Any]]:
        """One event through the transition function, and its effects; synchronous throughout."""
        spawned: list[asyncio.Task[Any]] = []
        self._applying = True
        try:
            if not isinstance(event, s.Want | s.Release | s.Cancel):  # not on the hot path: it reads /proc
                self.config = replace(self.config, reserved_bytes=self._reserved())
            self.world, effects = step(self.world, event, self.clock(), self.config)
            spawned = [t for t in (self._do(effect) for effect in effects) if t is not None]
            self._publish()
        except Exception:
            log.exception("supervisor: could not apply %s", event)
        finally:
            self._applying = False
            self._changed.set()
        return spawned

    def _reserved(self) -> int:
        # A launcher's own memory is host memory: it counts where the budget is host memory.
        return 0 if self.budget.gpu else self.launcher.reserved_bytes()

    def _do(self, effect: s.Effect) -> asyncio.Task[Any] | None:
        match effect:
            case s.Grant(waiter=wid, model=model, url=url):
                future = self._futures.pop(wid, None)
                if future is None or future.done():
                    self.post(s.Release(model))  # the caller left in the meantime
                else:
                    future.set_result(self._lease(model, url))
            case s.Refuse(waiter=wid):
                future = self._futures.pop(wid, None)
                if future is not None and not future.done():
                    future.set_exception(_refusal(effect))
            case s.Spawn():
                task = self._background(self._start(effect), effect.model)
                self._starting[effect.model] = task
                return task
            case s.Stop(model=model, attempt=attempt, quick=quick):
                return self._background(self._stop(model, attempt, 0.0 if quick else STOP_GRACE_S), model)
            case s.Park(model=model, attempt=attempt):
                task = self._ops[model] = self._background(self._park(model, attempt), model)
                return task
            case s.Wake(model=model, attempt=attempt):
                task = self._ops[model] = self._background(self._wake(model, attempt), model)
                return task
            case s.Measure(model=model, attempt=attempt):
                return self._background(self._measure(model, attempt), model)
            case s.Note():
                self._note(effect)
        return None

    def _lease(self, model: str, url: str) -> OnceLease:
        """One request's hold on ``model``: its release is a hot event; the runtime's Unix socket
        (none for a vLLM server) is where the front relays it."""
        held = self._handles.get(model)
        socket = held[1].socket if held is not None else None
        return OnceLease(url, self._hot_of(model)[1], socket)

    def _hot_of(self, model: str) -> tuple[s.Want, Callable[[], None]]:
        """A request's want (waiter 0: granted at once or not at all) and its release, made once per
        model: events are frozen, so one of each serves every request (a frozen dataclass costs
        the fast path microseconds to make, a cold cache several times that)."""
        found = self._hot.get(model)
        if found is None:
            found = self._hot[model] = (s.Want(0, model), functools.partial(self._post_hot, s.Release(model)))
        return found

    def _background(self, coro: Coroutine[Any, Any, None], model: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=f"llmi-{model}")
        self._busy.add(task)
        task.add_done_callback(self._busy.discard)
        return task

    # -- child tasks: each reports back with one event ----------------------------------------

    def _engine(self, entry: ModelEntry, placement: str) -> str:
        return resolve_engine(
            entry.engine, entry.type, placement, gpu=self.budget.gpu, vllm_available=self.vllm_launcher is not None
        )

    async def _start(self, spawn: s.Spawn) -> None:
        model, attempt = spawn.model, spawn.attempt
        entry = self.world.slots[model].entry
        engine = self._engine(entry, spawn.placement)
        if engine not in ("vllm", "transformers"):
            self.post(s.StartFailed(model, attempt, engine))  # the reason it cannot run here
            return
        launcher = self.vllm_launcher if engine == "vllm" and self.vllm_launcher is not None else self.launcher
        spec = RuntimeSpec(
            model, entry.path, str(entry.type), spawn.placement, spawn.footprint, entry.memory_bytes, self._child_env()
        )
        starting = asyncio.ensure_future(launcher.start(spec))
        try:
            # Shielded: a stop that comes mid-spawn must still find (and stop) the process.
            handle = await asyncio.shield(starting)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                self._handles[model] = (attempt, await starting, launcher)
            raise
        except Exception as exc:
            self.post(s.StartFailed(model, attempt, _describe(exc)))
            return
        self._handles[model] = (attempt, handle, launcher)
        try:
            seconds = await launcher.wait_ready(handle, self.settings.load_timeout_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # StartFailed, OSError, or a bug: never stuck in STARTING
            with contextlib.suppress(Exception):
                await handle.stop(STOP_GRACE_S)
            if self._handles.get(model, (None,))[0] == attempt:
                del self._handles[model]
            self.post(s.StartFailed(model, attempt, _describe(exc)))
            return
        self.post(s.Started(model, attempt, handle.url, seconds))
        self._watchers[model] = asyncio.create_task(self._watch(model, attempt, handle))

    async def _watch(self, model: str, attempt: int, handle: Handle) -> None:
        """Notice a runtime that exits; the decision whether that was a crash is step's."""
        if handle.exited is None:
            return
        # Shielded: cancelling this watcher (a stop) must not cancel the handle's own exit future,
        # which the stop itself waits on.
        code = await asyncio.shield(handle.exited)
        self.post(s.Exited(model, attempt, code, handle.reason()))

    async def _stop(self, model: str, attempt: int, grace_s: float = STOP_GRACE_S) -> None:
        for task in (self._starting.pop(model, None), self._ops.pop(model, None)):
            if task is not None and not task.done():
                task.cancel()
                await asyncio.wait({task})
        watcher = self._watchers.pop(model, None)
        if watcher is not None:
            watcher.cancel()
        known = self._handles.get(model)
        settled = False
        try:
            if known is not None and known[0] == attempt:
                del self._handles[model]
                if grace_s <= 0 and self._freed_as_it_exits(model):
                    # Its room is free now: the kernel frees a killed process's memory as it exits,
                    # while the runtime that waits for the room forks and starts (tens of ms before
                    # it allocates a weight). Waiting for the exit would add it to the switch
                    # (25 ms for a tiny model, 120 ms for a 135M-parameter one on 2 cores).
                    known[1].kill()
                    self.post(s.Stopped(model, attempt))
                    settled = True
                await known[1].stop(grace_s)
        except Exception:
            log.exception("stopping %s", model)
        finally:
            if not settled:
                self.post(s.Stopped(model, attempt))  # every path out of stopping settles

    def _freed_as_it_exits(self, model: str) -> bool:
        """A CPU runtime's memory is the process's own; a GPU's is freed by the driver, in its time."""
        slot = self.world.slots.get(model)
        return slot is not None and slot.placement == "cpu"

    async def _park(self, model: str, attempt: int) -> None:
        known = self._handles.get(model)
        try:
            if known is None:
                raise RuntimeError("no runtime")
            residue = await known[2].park(known[1])
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("parking %s failed (%s); stopping it instead", model, _describe(exc))
            self.post(s.Exited(model, attempt, -1, f"parking failed: {_describe(exc)}"))
            return
        self.post(s.Parked(model, attempt, residue))

    async def _wake(self, model: str, attempt: int) -> None:
        known = self._handles.get(model)
        try:
            if known is None:
                raise RuntimeError("no runtime")
            await known[2].wake(known[1])
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.post(s.Exited(model, attempt, -1, f"waking failed: {_describe(exc)}"))
            return
        self.post(s.Woken(model, attempt))

    async def _measure(self, model: str, attempt: int) -> None:
        known = self._handles.get(model)
        if known is None or known[0] != attempt:
            return
        size = await known[2].measure(known[1])
        if size is None:
            return
        self.post(s.Measured(model, attempt, size))
        slot = self.world.slots.get(model)
        if self._store_path is None or slot is None or not slot.placement:
            return
        self._store = self._store.with_(
            slot.entry.path,
            slot.placement,
            self.budget.device,
            size,
            time.time(),
            known_fingerprint=slot.entry.weights_fingerprint or None,
        )
        async with self._saving:  # one writer at a time; each writes the newest store
            try:
                await asyncio.to_thread(measured.save, self._store, self._store_path)
            except OSError as exc:
                log.warning("could not remember measured memory in %s: %s", self._store_path, exc)

    # -- helpers ------------------------------------------------------------------------------

    def _publish(self) -> None:
        """Set the gauges that changed (two events a request: setting every gauge of every model
        each time was a tenth of the router's CPU per request; finding a labelled series is kept
        out of the hot path too)."""
        m = self.metrics
        queued: dict[str, int] = {}
        for waiter in self.world.waiters:
            queued[waiter.model] = queued.get(waiter.model, 0) + 1
        for name, slot in self.world.slots.items():
            shown = self._published.get(name)
            waiting = queued.get(name, 0)
            if shown is not None and shown[0] is slot and shown[1] == waiting:
                continue
            self._published[name] = (slot, waiting)
            series = self._series.get(name)
            if series is None:
                series = self._series[name] = _Series(
                    m.queue.labels(name), m.memory_estimated.labels(name), m.in_flight.labels(name)
                )
                # Read when scraped: it changes twice a request, and setting a gauge takes a lock.
                series.in_flight.set_function(functools.partial(self._in_flight, name))
            if shown is None or shown[1] != waiting:
                series.queue.set(waiting)
            before = shown[0] if shown is not None else None
            if before is None or before.entry.memory_bytes != slot.entry.memory_bytes:
                series.estimated.set(slot.entry.memory_bytes)
            if slot.measured is not None and (before is None or before.measured != slot.measured):
                m.memory_measured.labels(name).set(slot.measured)
            if before is None or before.state is not slot.state:
                for state in s.State:
                    m.state.labels(name, state.value).set(1 if slot.state is state else 0)
        for name in [n for n in self._published if n not in self.world.slots]:
            del self._published[name]
            self._series.pop(name, None)

    def _in_flight(self, name: str) -> float:
        slot = self.world.slots.get(name)
        return float(slot.in_flight) if slot is not None else 0.0

    def _note(self, note: s.Note) -> None:
        self._log(note)
        slot = self.world.slots.get(note.model)
        self.events.publish(
            ModelEvent(
                kind=note.kind,
                model=note.model,
                time=time.time(),
                state=s.PUBLIC_STATE[slot.state] if slot is not None else None,
                detail=note.detail,
                seconds=note.seconds,
                memory_estimated_bytes=slot.entry.memory_bytes if slot is not None else None,
                memory_measured_bytes=slot.measured if slot is not None else None,
                placement=slot.placement if slot is not None else None,
            )
        )

    def _log(self, note: s.Note) -> None:
        m, name = self.metrics, note.model
        match note.kind:
            case "found":
                slot = self.world.slots.get(name)
                size = slot.entry.memory_bytes / 2**30 if slot else 0.0
                log.info("found %s (~%.2f GiB) at %s", name, size, note.detail)
            case "ready":
                if note.seconds is not None:
                    m.loads.labels(name, "ok").inc()
                    m.load_seconds.labels(name).observe(note.seconds)
                    log.info("ready: %s in %.2fs (%s)", name, note.seconds, note.detail)
                else:
                    log.info("ready: %s (%s)", name, note.detail)
            case "failed":
                m.loads.labels(name, "failed").inc()
                log.error("loading %s failed: %s", name, note.detail)
            case "evicting":
                m.evictions.labels(name).inc()
                log.info("evicting %s (least recently used) %s", name, note.detail)
            case "crashed":
                m.crashes.labels(name).inc()
                log.error("%s: %s", name, note.detail)
            case "stopped":
                log.info("unloaded %s", name)
            case _:
                log.info("%s: %s %s", name, note.kind, note.detail)

    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.settings.cuda_visible_devices is not None:
            env["CUDA_VISIBLE_DEVICES"] = self.settings.cuda_visible_devices
        return env


def _kind(where: planner.Placement | planner.Refusal) -> str:
    """Where the planner would put a model; one it refuses is named as on CPU."""
    return where.kind if isinstance(where, planner.Placement) else "cpu"


def _refusal(refuse: s.Refuse) -> LlmiError:
    match refuse.kind:
        case "not_found":
            return ModelNotFound(refuse.model)
        case "queue_full":
            return TooManyRequests(refuse.message, retry_after=refuse.retry_after)
        case "failed":
            return Unavailable(refuse.message, retry_after=refuse.retry_after, code="model_failed")
        case "too_large":
            return ModelTooLarge(refuse.model, refuse.message.split(": ", 1)[-1])
        case "no_room":
            return Unavailable(refuse.message, retry_after=refuse.retry_after, code="no_room")
        case _:
            return Unavailable(refuse.message, retry_after=refuse.retry_after)


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _mtime(path: Path) -> int:
    """OpenAI's ``created``: when the model folder last changed."""
    try:
        return int(path.stat().st_mtime)
    except OSError:
        return 0


def _wall(monotonic_time: float, clock: Callable[[], float]) -> float:
    return round(time.time() - (clock() - monotonic_time), 3)


class _Inline:
    """Where a want applied inline gets its answer (``hold_now``): no future, no event loop."""

    __slots__ = ("lease",)

    def __init__(self) -> None:
        self.lease: OnceLease | None = None

    def done(self) -> bool:
        return False  # answered once, then popped

    def set_result(self, lease: OnceLease) -> None:
        self.lease = lease

    def set_exception(self, error: BaseException) -> None:
        pass  # refused: the caller goes the long way, where the app answers it


@dataclass(frozen=True)
class _Series:
    """A model's gauges that change with its requests, found once."""

    queue: Any
    estimated: Any
    in_flight: Any
