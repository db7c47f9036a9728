"""The embedded control plane's decisions: a pure ``step(world, event, now, config)``.

Why pure: every race the supervisor ever had came from several tasks reading and changing slot
state. Here one function takes the whole state (frozen) and one event and returns the next state
and the effects to carry out (spawn, stop, park, wake, answer a waiter). The supervisor's one
owner task applies it; its child tasks do the I/O and report back as events. So every path out
of a transient state is a row of ``TRANSITIONS``, and a test can walk every (state, event) pair.

Scheduling rules, applied after every event:
- A request for a ready model is granted at once while the model has fewer than
  ``max_concurrent`` requests in flight; the others queue (at most ``max_queue`` per model, then
  429 with Retry-After).
- Models are made ready longest queue first (most requests served per load), except that a
  request that has waited ``fairness_s`` puts its model first. Room comes from the planner:
  idle models (no request in flight or queued) go first, least recently used first.
  A loaded model that still has work queued is kept until its queue is empty, unless another
  model's request has waited ``fairness_s``: then it drains (no new requests, in-flight ones
  finish) and makes room. That bounds waiting while saving swaps (llama-swap's reordering).
- A victim is parked (weights to host memory, GPU only) instead of stopped when host memory
  allows and what it keeps on the GPU (its context) still leaves enough room.
- Loads are started only when the memory they need is free now, never while a victim is
  still stopping, so planned memory never exceeds the budget.
- A load that is not ready by ``load_timeout_s`` is stopped and its room released; a runtime
  that crashes restarts with exponential backoff and ends FAILED after ``max_failures`` quick
  crashes; a good load resets the count.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import fields

from llmi import planner
from llmi_router.embedded.slots import (
    GOING,
    HOLDING,
    TRANSITIONS,
    Cancel,
    CatalogChanged,
    Close,
    Config,
    Effect,
    Event,
    Exited,
    Grant,
    Measure,
    Measured,
    Note,
    NoteKind,
    Park,
    Parked,
    Pin,
    RefusalKind,
    Refuse,
    Release,
    Remeasure,
    Slot,
    Spawn,
    Started,
    StartFailed,
    State,
    Stop,
    Stopped,
    Tick,
    Unload,
    Waiter,
    Wake,
    Want,
    Woken,
    World,
)

# -- the step ----------------------------------------------------------------------------------


_SLOT_FIELDS = frozenset(f.name for f in fields(Slot))


def _with(slot: Slot, changes: dict[str, object]) -> Slot:
    """``dataclasses.replace`` for a Slot without running its generated ``__init__`` (a Slot
    checks nothing there): ``replace`` was the largest part of a step, two steps a request."""
    unknown = changes.keys() - _SLOT_FIELDS
    if unknown:
        raise TypeError(f"Slot has no field {sorted(unknown)}")
    new = object.__new__(Slot)
    new.__dict__.update(slot.__dict__)
    new.__dict__.update(changes)
    return new


class _Builder:
    """Accumulates one step's changes; ``move`` is the only way a state changes."""

    def __init__(self, world: World, now: float, config: Config) -> None:
        self.slots = dict(world.slots)
        self.waiters = list(world.waiters)
        self.closing = world.closing
        self.close_deadline = world.close_deadline
        self.now = now
        self.config = config
        self.effects: list[Effect] = []

    def queued(self, model: str) -> int:
        """Requests waiting for ``model`` (without building a World on the hot path)."""
        return sum(1 for w in self.waiters if w.model == model)

    def world(self) -> World:
        return World(self.slots, tuple(self.waiters), self.closing, self.close_deadline)

    def move(self, name: str, new: State, **changes: object) -> Slot:
        slot = self.slots[name]
        if new is not slot.state and new not in TRANSITIONS[slot.state]:
            raise AssertionError(f"{name}: illegal transition {slot.state} -> {new}")
        slot = _with(slot, {"state": new, "since": self.now if new is not slot.state else slot.since, **changes})
        self.slots[name] = slot
        return slot

    def set(self, name: str, **changes: object) -> Slot:
        slot = _with(self.slots[name], changes)
        self.slots[name] = slot
        return slot

    def refuse(self, waiter: Waiter, kind: RefusalKind, message: str, retry_after: float = 1.0) -> None:
        self.waiters.remove(waiter)
        self.effects.append(Refuse(waiter.id, waiter.model, kind, message, retry_after))

    def refuse_all(self, model: str, kind: RefusalKind, message: str, retry_after: float = 1.0) -> None:
        for waiter in [w for w in self.waiters if w.model == model]:
            self.refuse(waiter, kind, message, retry_after)

    def note(self, kind: NoteKind, model: str, detail: str = "", seconds: float | None = None) -> None:
        self.effects.append(Note(kind, model, detail, seconds))


def step(world: World, event: Event, now: float, config: Config) -> tuple[World, list[Effect]]:
    """The next world and what to do, for one event. Never raises for a well-formed event."""
    if isinstance(event, Want | Release):
        hot = request_step(world, event, now, config)
        if hot is not None:
            return hot
    return _full_step(world, event, now, config)


def _full_step(world: World, event: Event, now: float, config: Config) -> tuple[World, list[Effect]]:
    b = _Builder(world, now, config)
    _apply(b, event)
    _schedule(b)
    return b.world(), b.effects


def request_step(world: World, event: Want | Release, now: float, config: Config) -> tuple[World, list[Effect]] | None:
    """A request's own event on a serving model while nothing waits: what the full step gives,
    without its scans (two events a request), or None where only the full step can say.
    Scheduling would find nothing to do: no waiter to grant or to make room for, no drain this
    changes. Only deadlines are not checked here; the owner's timer brings those
    (``next_wakeup``), and the only one these events bring is a release's ``idle_deadline``."""
    if world.waiters or world.closing:
        return None
    slot = world.slots.get(event.model)
    if slot is None or slot.state is not State.READY:
        return None
    effects: list[Effect]
    if isinstance(event, Want):
        if slot.removed or slot.in_flight >= config.max_concurrent:
            return None
        assert slot.url is not None
        new = _with(slot, {"in_flight": slot.in_flight + 1, "last_used": now})
        effects = [Grant(event.waiter, event.model, slot.url)]
    else:
        new = _with(slot, {"in_flight": max(0, slot.in_flight - 1), "last_used": now, "answered": slot.answered + 1})
        effects = [Measure(event.model, slot.attempt)] if slot.answered == 0 else []
    slots = dict(world.slots)
    slots[event.model] = new
    after = object.__new__(World)  # what World(...) makes, without a frozen __init__ (as ``_with``)
    after.__dict__.update(slots=slots, waiters=(), closing=False, close_deadline=world.close_deadline)
    return after, effects


def _apply(b: _Builder, event: Event) -> None:
    match event:
        case Want(waiter=wid, model=name):
            _want(b, wid, name)
        case Cancel(waiter=wid):
            b.waiters = [w for w in b.waiters if w.id != wid]
        case Release(model=name):
            if (slot := b.slots.get(name)) is not None:
                b.set(name, in_flight=max(0, slot.in_flight - 1), last_used=b.now, answered=slot.answered + 1)
                if slot.answered == 0 and slot.state is State.READY:
                    # Measured again after its first answer: serving touches pages loading did not
                    # (lazily mapped weights, the tokenizer's and the allocator's first buffers).
                    b.effects.append(Measure(name, slot.attempt))
        case Started():
            _started(b, event)
        case StartFailed():
            _start_failed(b, event)
        case Exited():
            _exited(b, event)
        case Stopped():
            _stopped(b, event)
        case Parked():
            _parked(b, event)
        case Woken(model=name, attempt=attempt):
            slot = b.slots.get(name)
            if slot is not None and slot.attempt == attempt and slot.state is State.WAKING:
                b.move(name, State.READY, last_used=b.now)
                b.note("ready", name, "woken")
        case Measured(model=name, attempt=attempt, bytes=size):
            slot = b.slots.get(name)
            if slot is not None and slot.attempt == attempt and slot.state is State.READY and size > 0:
                # From now on the planner counts what the runtime really holds.
                counted = size if slot.placement != "cpu" or not b.config.budget.gpu else 0
                if slot.entry.memory_override:
                    counted = slot.footprint  # the folder's llmi.yaml says what to plan with
                b.set(name, measured=size, measured_placement=slot.placement, footprint=counted)
        case Tick():
            pass
        case Remeasure():
            for name, slot in b.slots.items():
                if slot.state is State.READY and slot.measured is not None:
                    b.effects.append(Measure(name, slot.attempt))
        case CatalogChanged():
            _catalog(b, event)
        case Unload(model=name):
            _unload(b, name)
        case Pin(model=name, pinned=pinned):
            if name in b.slots:
                b.set(name, pinned=pinned)
                b.note("pinned", name, "pinned" if pinned else "unpinned")
        case Close():
            if not b.closing:
                b.closing = True
                b.close_deadline = b.now + b.config.drain_timeout_s
                for waiter in list(b.waiters):
                    b.refuse(waiter, "closing", "The server is shutting down.", 5.0)


def _want(b: _Builder, wid: int, name: str) -> None:
    slot = b.slots.get(name)
    waiter = Waiter(wid, name, b.now)
    b.waiters.append(waiter)
    if b.closing:
        b.refuse(waiter, "closing", "The server is shutting down.", 5.0)
    elif slot is None or slot.removed:
        b.refuse(waiter, "not_found", f"The model '{name}' does not exist.")
    elif slot.state is State.FAILED and b.now < slot.retry_at:
        b.refuse(waiter, "failed", f"Model '{name}' failed: {slot.error}", slot.retry_at - b.now)
    elif isinstance(where := _placement(b, slot), planner.Refusal):
        b.refuse(waiter, "too_large", f"Model '{name}' cannot be loaded: {where.reason}", 60.0)
    elif b.queued(name) > b.config.max_queue and not _grantable(b, slot):
        b.refuse(waiter, "queue_full", f"Too many requests are waiting for '{name}'.", 1.0)


def _unload(b: _Builder, name: str) -> None:
    slot = b.slots.get(name)
    if slot is None:
        return
    if slot.state is State.READY or (slot.state is State.DRAINING and slot.drain_for != "close"):
        b.move(name, State.DRAINING, drain_for="admin")
        b.note("unloading", name, "asked by an operator")
    elif slot.state in (State.STARTING, State.PARKED, State.WAKING):
        b.move(name, State.STOPPING)
        b.effects.append(Stop(name, slot.attempt))
        b.note("unloading", name, "asked by an operator")


def _started(b: _Builder, event: Started) -> None:
    slot = b.slots.get(event.model)
    if slot is None or slot.attempt != event.attempt or slot.state is not State.STARTING:
        return
    b.move(
        event.model,
        State.READY,
        url=event.url,
        last_used=b.now,
        failures=0,
        error=None,
        last_load_s=event.seconds,
        answered=0,
    )
    if not b.queued(event.model):
        # Measured now only when nobody waits: a read of the runtime's PSS costs it tens of ms of
        # CPU beside the first request, and the first answer brings a measure of its own.
        b.effects.append(Measure(event.model, event.attempt))
    b.note("ready", event.model, slot.placement or "", event.seconds)


def _start_failed(b: _Builder, event: StartFailed) -> None:
    slot = b.slots.get(event.model)
    if slot is None or slot.attempt != event.attempt or slot.state is not State.STARTING:
        return
    failures = slot.failures + 1
    retry = min(b.config.load_retry_s * 2 ** (failures - 1), 600.0)
    b.move(
        event.model, State.FAILED, footprint=0, url=None, failures=failures, error=event.error, retry_at=b.now + retry
    )
    b.refuse_all(event.model, "failed", f"Model '{event.model}' failed: {event.error}", retry)
    b.note("failed", event.model, event.error)


def _exited(b: _Builder, event: Exited) -> None:
    slot = b.slots.get(event.model)
    if (
        slot is None
        or slot.attempt != event.attempt
        or slot.state
        not in (
            State.READY,
            State.DRAINING,
            State.PARKING,
            State.PARKED,
            State.WAKING,
        )
    ):
        return  # stopped on purpose, or an earlier attempt
    lived = b.now - slot.since if slot.state is State.READY else 0.0
    crashes = 1 if lived > b.config.quick_crash_s else slot.crashes + 1
    error = f"runtime exited unexpectedly with code {event.code}: {event.reason}"
    gives_up = crashes >= b.config.max_failures
    b.move(
        event.model,
        State.STOPPING,
        url=None,
        crashes=crashes,
        error=error,
        fail_after_stop=gives_up,
        retry_at=b.now + (b.config.load_retry_s if gives_up else _crash_backoff(crashes)),
    )
    b.effects.append(Stop(event.model, slot.attempt))
    b.note("crashed", event.model, error)


def _stopped(b: _Builder, event: Stopped) -> None:
    slot = b.slots.get(event.model)
    if slot is None or slot.attempt != event.attempt or slot.state is not State.STOPPING:
        return
    new = State.FAILED if slot.fail_after_stop else State.STOPPED
    if new is State.FAILED:
        b.refuse_all(event.model, "failed", f"Model '{event.model}' failed: {slot.error}", slot.retry_at - b.now)
    b.move(event.model, new, footprint=0, host_bytes=0, url=None, fail_after_stop=False)
    b.note("stopped", event.model)
    if slot.removed:
        _forget(b, event.model)


def _parked(b: _Builder, event: Parked) -> None:
    slot = b.slots.get(event.model)
    if slot is None or slot.attempt != event.attempt or slot.state is not State.PARKING:
        return
    residue = event.residue_bytes if event.residue_bytes is not None else b.config.park_residue_bytes
    b.move(event.model, State.PARKED, footprint=min(residue, slot.footprint), host_bytes=_host_need(slot))
    b.note("parked", event.model, f"keeps {planner.gib(residue)} on the GPU")


def _catalog(b: _Builder, event: CatalogChanged) -> None:
    seen = set()
    for entry in event.entries:
        seen.add(entry.name)
        slot = b.slots.get(entry.name)
        remembered = event.measured.get(entry.name)
        if slot is None:
            b.slots[entry.name] = Slot(entry, measured=remembered)
            b.note("found", entry.name, str(entry.path))
            continue
        if slot.removed:
            b.set(entry.name, removed=False, removed_at=0.0)  # the folder came back (an NFS hiccup, an rsync)
            b.note("back", entry.name)
        if slot.entry != entry and slot.state in (State.STOPPED, State.FAILED):
            b.set(entry.name, entry=entry, failures=0, retry_at=0.0, error=None, measured=remembered)
        elif slot.measured is None and remembered is not None:
            b.set(entry.name, measured=remembered)
    for name, slot in list(b.slots.items()):
        if name in seen or slot.removed:
            continue
        b.note("gone", name)
        b.refuse_all(name, "not_found", f"The model '{name}' does not exist.")
        if slot.state in (State.STOPPED, State.FAILED):
            _forget(b, name)
        else:
            b.set(name, removed=True, removed_at=b.now)


# -- scheduling --------------------------------------------------------------------------------


def _schedule(b: _Builder) -> None:
    _deadlines(b)
    if b.closing:
        _close(b)
        return
    _reprieve(b)
    # Grant first: a model that just became ready serves its queue before anything may drain it.
    _grant(b)
    placeholders: list[planner.Loaded] = []
    for name in _wanted_in_order(b):
        _make_ready(b, name, placeholders)
    _finish_drains(b)


def _deadlines(b: _Builder) -> None:
    """Hung loads are stopped; idle, removed and (while closing) parked models are let go."""
    for name, slot in list(b.slots.items()):
        if slot.state is State.STARTING and b.now - slot.since >= b.config.load_timeout_s:
            error = f"runtime was not ready after {b.config.load_timeout_s:.0f}s"
            failures = slot.failures + 1
            b.move(
                name,
                State.STOPPING,
                error=error,
                failures=failures,
                fail_after_stop=True,
                retry_at=b.now + min(b.config.load_retry_s * 2 ** (failures - 1), 600.0),
            )
            b.effects.append(Stop(name, slot.attempt))
            b.refuse_all(name, "failed", f"Model '{name}' failed: {error}", b.config.load_retry_s)
            b.note("failed", name, error)
        elif slot.state is State.STARTING and b.now - max(slot.since, slot.progress_at) >= b.config.progress_s:
            elapsed = b.now - slot.since
            expected = f" of about {slot.last_load_s:.0f}s (the last load)" if slot.last_load_s else ""
            b.set(name, progress_at=b.now)
            b.note("progress", name, f"loading for {elapsed:.0f}s{expected}", elapsed)
        elif slot.state is State.READY and _idle_expired(b, slot):
            b.move(name, State.DRAINING, drain_for="removed" if slot.removed else "idle")
            b.note("idle", name, f"idle for {b.now - slot.last_used:.0f}s")
        elif slot.state is State.PARKED and _idle_expired(b, slot):
            b.move(name, State.STOPPING)
            b.effects.append(Stop(name, slot.attempt))


def _idle_expired(b: _Builder, slot: Slot) -> bool:
    if slot.in_flight or b.queued(slot.entry.name):
        return False
    if slot.removed:
        return b.now - slot.removed_at >= b.config.removed_grace_s
    if slot.is_pinned:
        return False
    timeout = slot.entry.idle_timeout_s if slot.entry.idle_timeout_s is not None else b.config.idle_timeout_s
    return b.now - slot.last_used >= timeout


def _close(b: _Builder) -> None:
    for name, slot in list(b.slots.items()):
        if slot.state in (State.READY, State.WAKING, State.PARKING):
            if slot.state is State.READY:
                b.move(name, State.DRAINING, drain_for="close")
            else:
                b.move(name, State.STOPPING)
                b.effects.append(Stop(name, slot.attempt))
        elif slot.state in (State.STARTING, State.PARKED):
            b.move(name, State.STOPPING)
            b.effects.append(Stop(name, slot.attempt))
    for name, slot in list(b.slots.items()):
        if slot.state is State.DRAINING and (slot.in_flight == 0 or b.now >= b.close_deadline):
            b.move(name, State.STOPPING)
            b.effects.append(Stop(name, slot.attempt))


def _reprieve(b: _Builder) -> None:
    """A draining model goes back to serving when its room is no longer needed: the requests it
    made room for left, or that model got room elsewhere; or, drained for idleness, it is wanted."""
    for name, slot in list(b.slots.items()):
        if slot.state is not State.DRAINING or slot.removed or slot.drain_for in (None, "removed", "close", "admin"):
            continue
        if slot.drain_for == "idle":
            needed = not b.queued(name)
        else:
            beneficiary = b.slots.get(slot.drain_for or "")
            needed = (
                beneficiary is not None and beneficiary.state not in HOLDING and bool(b.queued(beneficiary.entry.name))
            )
        if not needed:
            b.move(name, State.READY, drain_for=None)


# Drains that are not making room for another model: never parked, never reprieved for room.
NOT_FOR_ROOM = ("idle", "removed", "close", "admin")


def _forget(b: _Builder, name: str) -> None:
    b.refuse_all(name, "not_found", f"The model '{name}' does not exist.")
    del b.slots[name]


def _wanted_in_order(b: _Builder) -> list[str]:
    """Models with waiting requests, in the order they get room: any whose oldest request has
    waited ``fairness_s`` first (oldest first), then the longest queues, so each load serves as
    many requests as it can (fewer loads for the same work)."""
    oldest: dict[str, float] = {}
    count: dict[str, int] = {}
    for waiter in b.waiters:
        oldest.setdefault(waiter.model, waiter.since)
        count[waiter.model] = count.get(waiter.model, 0) + 1

    def key(name: str) -> tuple[bool, float, float]:
        overdue = b.now - oldest[name] >= b.config.fairness_s
        return (not overdue, oldest[name] if overdue else -count[name], oldest[name])

    return sorted(oldest, key=key)


def _make_ready(b: _Builder, name: str, placeholders: list[planner.Loaded]) -> None:
    slot = b.slots[name]
    if slot.state in (State.READY, State.STARTING, State.WAKING, State.DRAINING, State.STOPPING, State.PARKING):
        return  # serving, on its way, or on its way out (wanted again once it is stopped)
    if slot.state is State.FAILED and b.now < slot.retry_at:
        b.refuse_all(name, "failed", f"Model '{name}' failed: {slot.error}", slot.retry_at - b.now)
        return
    if slot.state is State.STOPPED and b.now < slot.retry_at:
        return  # crash backoff; a tick comes at retry_at
    where = _placement(b, slot)
    if isinstance(where, planner.Refusal):
        b.refuse_all(name, "too_large", f"Model '{name}' cannot be loaded: {where.reason}", 60.0)
        return
    budget = b.config.effective()
    overdue = b.now - min(w.since for w in b.waiters if w.model == name) >= b.config.fairness_s
    others = [(n, s) for n, s in b.slots.items() if n != name and s.state in HOLDING]
    loaded = [_as_loaded(b, n, s, overdue) for n, s in others if s.state not in GOING] + placeholders
    decision = planner.plan(budget, loaded, name, slot.entry.type, where.footprint_bytes)
    if isinstance(decision, planner.Refuse):
        b.refuse_all(name, "no_room", f"Model '{name}' cannot be loaded: {decision.reason}", 30.0)
        return
    if isinstance(decision, planner.Wait):
        return
    if isinstance(decision, planner.Ready):  # pragma: no cover - the model itself is not in ``loaded``
        return
    held_now = sum(s.footprint for n, s in others)
    if decision.evict or held_now + where.footprint_bytes > budget.total_bytes:
        # Room is being made: later models in this pass plan as if this one were loaded.
        placeholders.append(planner.Loaded(name, slot.entry.type, where.footprint_bytes, b.now, loading=True))
        _evict(b, decision.evict, name)
        return  # plan again when the victims have stopped
    attempt = slot.attempt + 1
    if slot.state is State.PARKED:
        b.move(name, State.WAKING, footprint=where.footprint_bytes, host_bytes=0)
        b.effects.append(Wake(name, slot.attempt))
        b.note("waking", name)
        return
    b.move(name, State.STARTING, attempt=attempt, placement=where.kind, footprint=where.footprint_bytes, error=None)
    b.effects.append(Spawn(name, attempt, where.kind, where.footprint_bytes))
    b.note("loading", name, where.kind)


def _evict(b: _Builder, victims: Iterable[str], for_model: str) -> None:
    for victim in victims:
        slot = b.slots[victim]
        if slot.state is State.PARKED:
            b.move(victim, State.STOPPING)
            b.effects.append(Stop(victim, slot.attempt))
        else:
            b.move(victim, State.DRAINING, drain_for=for_model)
        b.note("evicting", victim, f"to make room for {for_model}")


def _finish_drains(b: _Builder) -> None:
    """Drained victims stop, or park when host memory holds them and the GPU room still suffices."""
    host_used = sum(s.host_bytes for s in b.slots.values() if s.state is State.PARKED)
    for name, slot in list(b.slots.items()):
        if slot.state is not State.DRAINING or slot.in_flight:
            continue
        if _may_park(b, slot, host_used):
            host_used += _host_need(slot)
            b.move(name, State.PARKING)
            b.effects.append(Park(name, slot.attempt))
            b.note("parking", name)
        else:
            b.move(name, State.STOPPING)
            awaited = slot.drain_for not in (None, "idle", "removed", "close", "admin")
            b.effects.append(Stop(name, slot.attempt, quick=awaited))


def _may_park(b: _Builder, slot: Slot, host_used: int) -> bool:
    if (
        not b.config.host_budget_bytes
        or slot.placement == "cpu"
        or slot.drain_for in ("idle", "removed", "close", "admin")
    ):
        return False
    if host_used + _host_need(slot) > b.config.host_budget_bytes:
        return False
    residue = b.config.park_residue_bytes
    if residue >= slot.footprint:
        return False  # parking would free nothing
    beneficiary = b.slots.get(slot.drain_for or "")
    if beneficiary is None:
        return False
    # Parking frees footprint - residue; the model it makes room for must still fit.
    need = _placement(b, beneficiary)
    if isinstance(need, planner.Refusal):
        return False
    held_after = sum(
        (residue if n == slot.entry.name else s.footprint)
        for n, s in b.slots.items()
        if s.state in HOLDING and n != beneficiary.entry.name
    )
    return held_after + need.footprint_bytes <= b.config.effective().total_bytes


def _grant(b: _Builder) -> None:
    for waiter in list(b.waiters):
        slot = b.slots.get(waiter.model)
        if slot is None or not _grantable(b, slot):
            continue
        assert slot.url is not None
        b.waiters.remove(waiter)
        b.set(waiter.model, in_flight=slot.in_flight + 1, last_used=b.now)
        b.effects.append(Grant(waiter.id, waiter.model, slot.url))


def _grantable(b: _Builder, slot: Slot) -> bool:
    return slot.state is State.READY and not slot.removed and slot.in_flight < b.config.max_concurrent


# -- helpers -----------------------------------------------------------------------------------


def _placement(b: _Builder, slot: Slot) -> planner.Placement | planner.Refusal:
    """Where the estimate puts the model; its footprint is the measured figure once known."""
    budget = b.config.effective()
    where = planner.placement(slot.entry.memory_bytes, budget, slot.entry.placement)
    if slot.measured is None or slot.entry.memory_override:
        return where
    if isinstance(where, planner.Refusal):
        return planner.placement(slot.measured, budget, slot.entry.placement)  # the estimate erred high
    if where.footprint_bytes == 0 or slot.measured_placement not in (None, where.kind):
        return where  # CPU placement on a GPU machine holds none of its budget
    return planner.Placement(where.kind, slot.measured)


def _as_loaded(b: _Builder, name: str, slot: Slot, overdue: bool) -> planner.Loaded:
    # Work queued for a loaded model keeps it (fewer swaps) until another request is overdue.
    busy = 0 if overdue else slot.in_flight + b.queued(name) + int(_lingers(b.config, slot, b.now))
    return planner.Loaded(
        name=name,
        type=slot.entry.type,
        footprint_bytes=slot.footprint,
        last_used=slot.last_used,
        pinned=slot.is_pinned,
        in_flight=busy,
        loading=slot.state in (State.STARTING, State.WAKING, State.PARKING),
        parked=slot.state is State.PARKED,
    )


def _lingers(config: Config, slot: Slot, now: float) -> bool:
    """Whether an idle ready model still keeps its room: it answered several requests this time
    it was loaded, the last of them less than ``linger_s`` ago. Evicted at once, it was often
    wanted again a few milliseconds later by the clients it had just answered (a storm of 24
    clients over 6 models: 33 loads simulated without lingering, 21 with 5-20 ms)."""
    return (
        slot.state is State.READY
        and not slot.in_flight
        and slot.answered >= 2
        and now - slot.last_used < config.linger_s
    )


def _host_need(slot: Slot) -> int:
    return slot.entry.estimate.weights_bytes or slot.entry.memory_bytes


def _crash_backoff(crashes: int) -> float:
    """No wait after a first crash; then 2, 4, 8 ... seconds, at most a minute."""
    return 0.0 if crashes <= 1 else min(2.0 ** (crashes - 1), 60.0)


def next_wakeup(world: World, now: float, config: Config) -> float | None:
    """The next instant after ``now`` at which ``step(world, Tick(), ...)`` would change something."""
    times: list[float] = []
    wanted = {w.model for w in world.waiters}
    for name, slot in world.slots.items():
        if slot.state is State.STARTING:
            times.append(slot.since + config.load_timeout_s)
            times.append(max(slot.since, slot.progress_at) + config.progress_s)
        elif slot.state in (State.READY, State.PARKED) and slot.removed:
            times.append(slot.removed_at + config.removed_grace_s)
        elif slot.state in (State.READY, State.PARKED) and not slot.is_pinned and not slot.in_flight:
            times.append(_idle_at(slot, config))
            if world.waiters and _lingers(config, slot, now):
                times.append(slot.last_used + config.linger_s)  # its room is given away then
        elif slot.state in (State.STOPPED, State.FAILED) and name in wanted:
            times.append(slot.retry_at)
    for waiter in world.waiters:
        times.append(waiter.since + config.fairness_s)
    if world.closing:
        times.append(world.close_deadline)
    future = [t for t in times if t > now]
    return min(future) if future else None


def idle_deadline(slot: Slot, config: Config) -> float | None:
    """When an idle, unpinned ready model is stopped for idleness (None: not idle, or never):
    the one deadline a request's release can bring (``request_step``)."""
    if slot.state not in (State.READY, State.PARKED) or slot.removed or slot.is_pinned or slot.in_flight:
        return None
    at = _idle_at(slot, config)
    return at if math.isfinite(at) else None


def _idle_at(slot: Slot, config: Config) -> float:
    timeout = slot.entry.idle_timeout_s if slot.entry.idle_timeout_s is not None else config.idle_timeout_s
    return slot.last_used + timeout


_ids = itertools.count(1)


def next_waiter_id() -> int:
    return next(_ids)
