"""The pure transition function: every (state, event) pair, then random histories."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmi import planner
from llmi_router.embedded import slots as s
from llmi_router.embedded import step as step_module
from llmi_router.embedded.step import idle_deadline, next_wakeup, step
from tests.supervisor_fakes import GIB, entry

NOW = 1000.0
CPU = planner.Budget(int(2.5 * GIB), gpu=False, offload_enabled=False, offload_threshold_bytes=4 * GIB,
                     cache_size_per_type=8)  # fmt: skip
GPU = replace(CPU, gpu=True)
CONFIGS = {
    "cpu": s.Config(CPU, fairness_s=5, load_timeout_s=60, idle_timeout_s=600, removed_grace_s=30),
    "cpu-linger": s.Config(CPU, fairness_s=5, load_timeout_s=60, idle_timeout_s=600, removed_grace_s=30, linger_s=0.02),
    "gpu-parking": s.Config(GPU, host_budget_bytes=8 * GIB, park_residue_bytes=GIB // 4, fairness_s=5),
}
EFFECT_STATE = {s.Stop: s.State.STOPPING, s.Park: s.State.PARKING, s.Wake: s.State.WAKING}
URL_STATES = {s.State.READY, s.State.DRAINING, s.State.PARKING, s.State.PARKED, s.State.WAKING}


def world_with(
    state: s.State,
    *,
    in_flight: int = 0,
    waiting: bool = False,
    removed: bool = False,
    late: bool = False,
    gpu: bool = False,
) -> s.World:
    """Model "m" in ``state`` (attempt 1); "o": ready, idle, holding 1 GiB; "w": stopped, the model
    a draining "m" makes room for. ``waiting``: one request each for "m" and "w". ``late``: m's
    backoff is over, and a stop it is in ends FAILED."""
    m = s.Slot(
        entry("m"),
        state=state,
        attempt=1,
        url="http://m" if state in URL_STATES else None,
        placement=("gpu" if gpu else "cpu") if state in s.HOLDING else None,
        footprint=(GIB // 4 if state is s.State.PARKED else GIB) if state in s.HOLDING else 0,
        host_bytes=GIB if state is s.State.PARKED else 0,
        in_flight=in_flight if state in URL_STATES else 0,
        last_used=NOW - 1,
        since=NOW - 1,
        drain_for="w" if state is s.State.DRAINING else None,
        retry_at=NOW + (-1 if late else 10) if state is s.State.FAILED else 0.0,
        fail_after_stop=late and state is s.State.STOPPING,
        error="broken" if state is s.State.FAILED else None,
        removed=removed,
        removed_at=NOW - 1 if removed else 0.0,
    )
    o = s.Slot(entry("o"), state=s.State.READY, attempt=1, url="http://o", placement="cpu", footprint=GIB,
               last_used=NOW - 5, since=NOW - 5)  # fmt: skip
    w = s.Slot(entry("w", 1.2))
    waiters = (s.Waiter(7, "m", NOW - 1), s.Waiter(6, "w", NOW - 2)) if waiting else ()
    return s.World({"m": m, "o": o, "w": w}, waiters)


def events_for(attempt: int) -> list[s.Event]:
    return [
        s.Want(8, "m"),
        s.Want(9, "nobody"),
        s.Cancel(7),
        s.Release("m"),
        s.Started("m", attempt, "http://m2", 0.5),
        s.StartFailed("m", attempt, "no weights"),
        s.Exited("m", attempt, -9, "killed"),
        s.Stopped("m", attempt),
        s.Parked("m", attempt, GIB // 4),
        s.Woken("m", attempt),
        s.Measured("m", attempt, 2 * GIB),
        s.Tick(),
        s.Remeasure(),
        s.CatalogChanged((entry("m"), entry("o"), entry("w", 1.2))),
        s.CatalogChanged((entry("o"), entry("w", 1.2))),
        s.Close(),
        s.Unload("m"),
        s.Pin("m", True),
    ]


VARIANTS = [
    {"in_flight": i, "waiting": w, "removed": r, "late": late}
    for i, w, r, late in itertools.product((0, 1), (False, True), (False, True), (False, True))
]
CASES = [
    (config, state, variant, event)
    for config in CONFIGS
    for state in s.State
    for variant in VARIANTS
    for event in events_for(1) + events_for(0)
]


def check_step(world: s.World, event: s.Event, config: s.Config, now: float = NOW) -> tuple[s.World, list[s.Effect]]:
    """Apply ``step`` and check what must hold for every step."""
    after, effects = step(world, event, now, config)  # an illegal transition raises here
    answered = [e.waiter for e in effects if isinstance(e, s.Grant | s.Refuse)]
    assert len(answered) == len(set(answered)), "a waiter answered twice"
    before_ids = {w.id for w in world.waiters} | ({event.waiter} if isinstance(event, s.Want) else set())
    cancelled = {event.waiter} if isinstance(event, s.Cancel) else set()
    after_ids = {w.id for w in after.waiters}
    assert after_ids.isdisjoint(answered), "a waiter answered and still queued"
    assert before_ids - cancelled == after_ids | set(answered), "a waiter was lost"
    for effect in effects:
        slot = after.slots.get(getattr(effect, "model", ""))
        match effect:
            case s.Spawn():
                assert slot is not None
                assert (slot.state, slot.attempt) == (s.State.STARTING, effect.attempt)
            case s.Stop() | s.Park() | s.Wake():
                assert slot is not None
                assert slot.state is EFFECT_STATE[type(effect)]
            case s.Grant():
                # Granted when ready; the same step may then drain it for an overdue request (its
                # queue was served first): the lease still reaches a live runtime.
                assert slot is not None
                assert slot.state in (s.State.READY, s.State.DRAINING)
                assert slot.url == effect.url
    if any(isinstance(e, s.Spawn | s.Wake) for e in effects):
        assert after.planned_bytes() <= config.effective().total_bytes, "a load over the budget"
    assert all(x.in_flight >= 0 for x in after.slots.values())
    assert after.closing or not any(isinstance(e, s.Refuse) and e.kind == "closing" for e in effects)
    return after, effects


@pytest.mark.parametrize(("config", "state", "variant", "event"), CASES)
def test_every_state_and_event(config: str, state: s.State, variant: dict[str, Any], event: s.Event) -> None:
    world = world_with(state, **variant, gpu=config == "gpu-parking")
    after, effects = check_step(world, event, CONFIGS[config])
    if getattr(event, "attempt", 1) == 0:  # an outcome of an earlier attempt is as if nothing happened
        assert (after, effects) == step(world, s.Tick(), NOW, CONFIGS[config])


@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("state", list(s.State))
@pytest.mark.parametrize("variant", [v for v in VARIANTS if not v["waiting"]])
@pytest.mark.parametrize("event", [s.Want(8, "m"), s.Release("m"), s.Want(8, "o"), s.Release("o")])
def test_a_request_event_takes_the_short_way_only_where_it_ends_the_same(
    config: str, state: s.State, variant: dict[str, Any], event: s.Event
) -> None:
    """The short way skips only the deadlines, which the owner's timer brings; so wherever no
    deadline is due, it is exactly the full step, and it is taken for a ready model."""
    world = world_with(state, **variant, gpu=config == "gpu-parking")
    full = step_module._full_step(world, event, NOW, CONFIGS[config])
    short = step_module.request_step(world, event, NOW, CONFIGS[config])  # type: ignore[arg-type]
    slot = world.slots[event.model]  # type: ignore[attr-defined]
    if slot.state is s.State.READY and not (isinstance(event, s.Want) and slot.removed):
        assert short is not None
    if short is not None and step(world, s.Tick(), NOW, CONFIGS[config]) == (world, []):
        assert short == full


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("state", list(s.State))
@pytest.mark.parametrize("variant", [v for v in VARIANTS if not v["waiting"]])
@pytest.mark.parametrize("event", [s.Want(8, "m"), s.Release("m"), s.Want(8, "o"), s.Release("o")])
def test_the_short_way_brings_no_deadline_sooner_than_a_releases_idle_one(
    config: str, state: s.State, variant: dict[str, Any], event: s.Want | s.Release
) -> None:
    """The owner, asleep until the deadline it had, is woken by a short-way event only for
    ``idle_deadline``: so nothing the short way brings is due sooner than both."""
    world = world_with(state, **variant, gpu=config == "gpu-parking")
    short = step_module.request_step(world, event, NOW, CONFIGS[config])
    if short is None:
        return
    after = short[0]
    brought = idle_deadline(after.slots[event.model], CONFIGS[config]) if isinstance(event, s.Release) else None
    due = [t for t in (next_wakeup(world, NOW, CONFIGS[config]), brought) if t is not None and math.isfinite(t)]
    woken = next_wakeup(after, NOW, CONFIGS[config])
    if woken is not None and math.isfinite(woken):
        assert due
        assert woken >= min(due)


def test_the_last_release_of_a_busy_world_brings_the_idle_timeout() -> None:
    world = world_with(s.State.READY, in_flight=1)
    world = replace(world, slots={**world.slots, "o": replace(world.slots["o"], in_flight=1)})
    config = CONFIGS["cpu"]
    assert next_wakeup(world, NOW, config) is None  # both busy: no timer
    short = step_module.request_step(world, s.Release("m"), NOW, config)
    assert short is not None
    after = short[0]
    assert idle_deadline(after.slots["m"], config) == NOW + config.idle_timeout_s == next_wakeup(after, NOW, config)
    assert idle_deadline(after.slots["o"], config) is None  # still busy


@pytest.mark.parametrize("waiting", [True, False])
def test_a_ready_runtime_is_measured_at_once_only_when_no_request_waits_for_it(waiting: bool) -> None:
    """A waiting request is granted in the same step, and the PSS read would run beside it; its
    release brings the measure instead."""
    world, effects = step(world_with(s.State.STARTING, waiting=waiting), s.Started("m", 1, "http://m", 0.1), NOW,
                          CONFIGS["cpu"])  # fmt: skip
    assert world.slots["m"].state is s.State.READY
    assert any(isinstance(e, s.Grant) and e.model == "m" for e in effects) is waiting
    assert any(isinstance(e, s.Measure) for e in effects) is not waiting


def test_every_edge_of_the_table_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    """No dead edge: each (from, to) of TRANSITIONS happens for some (state, event) case above."""
    taken: set[tuple[s.State, s.State]] = set()
    original = step_module._Builder.move

    def move(self: step_module._Builder, name: str, new: s.State, **changes: object) -> s.Slot:
        taken.add((self.slots[name].state, new))
        return original(self, name, new, **changes)

    monkeypatch.setattr(step_module._Builder, "move", move)
    for config, state, variant, event in CASES:
        step(world_with(state, **variant, gpu=config == "gpu-parking"), event, NOW, CONFIGS[config])
    table = {(a, b) for a, targets in s.TRANSITIONS.items() for b in targets}
    assert table - taken == set(), "edges no event takes"
    assert {(a, b) for a, b in taken if a is not b} <= table


# -- random histories ----------------------------------------------------------------------------

MODELS = ("a", "b", "c", "d")
SIZES = {"a": 1.0, "b": 1.2, "c": 0.5, "d": 2.0}


class Env:
    """Plays launchers and clients: delivers outcomes of effects in the order hypothesis picks."""

    def __init__(self, config: s.Config) -> None:
        self.config = config
        self.world = s.World()
        self.now = NOW
        self.pending: list[s.Event] = []
        self.leases: list[str] = []
        self.open: set[int] = set()
        self.ids = itertools.count(1)
        self.feed(s.CatalogChanged(tuple(entry(m, SIZES[m]) for m in MODELS)))

    def feed(self, event: s.Event) -> None:
        self.world, effects = check_step(self.world, event, self.config, self.now)
        for effect in effects:
            match effect:
                case s.Spawn(model=m, attempt=a):
                    self.pending.append(s.Started(m, a, f"http://{m}/{a}", 0.1))
                case s.Stop(model=m, attempt=a):
                    self.pending.append(s.Stopped(m, a))
                case s.Park(model=m, attempt=a):
                    self.pending.append(s.Parked(m, a, GIB // 8))
                case s.Wake(model=m, attempt=a):
                    self.pending.append(s.Woken(m, a))
                case s.Grant(waiter=w, model=m):
                    self.open.discard(w)
                    self.leases.append(m)
                case s.Refuse(waiter=w):
                    self.open.discard(w)


actions = st.lists(
    st.one_of(
        st.tuples(st.just("want"), st.sampled_from(MODELS)),
        st.tuples(st.just("deliver"), st.integers(0, 5)),
        st.tuples(st.just("fail"), st.integers(0, 5)),
        st.tuples(st.just("release"), st.integers(0, 5)),
        st.tuples(st.just("cancel"), st.integers(0, 5)),
        st.tuples(st.just("crash"), st.sampled_from(MODELS)),
        st.tuples(st.just("time"), st.sampled_from((0.5, 3.0, 7.0, 61.0))),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None, database=None)
@given(actions, st.sampled_from(sorted(CONFIGS)))
def test_random_histories_keep_the_budget_and_answer_every_request(history: list, config_name: str) -> None:
    env = Env(replace(CONFIGS[config_name], max_concurrent=2, max_queue=4))
    for kind, arg in history:
        match kind:
            case "want":
                wid = next(env.ids)
                env.open.add(wid)
                env.feed(s.Want(wid, arg))
            case "deliver" if env.pending:
                env.feed(env.pending.pop(arg % len(env.pending)))
            case "fail" if env.pending:
                outcome = env.pending.pop(arg % len(env.pending))
                if isinstance(outcome, s.Started):
                    env.feed(s.StartFailed(outcome.model, outcome.attempt, "boom"))
                else:
                    env.feed(outcome)
            case "release" if env.leases:
                env.feed(s.Release(env.leases.pop(arg % len(env.leases))))
            case "cancel" if env.open:
                wid = sorted(env.open)[arg % len(env.open)]
                env.open.discard(wid)
                env.feed(s.Cancel(wid))
            case "crash":
                slot = env.world.slots[arg]
                if slot.state in (s.State.READY, s.State.DRAINING):
                    env.feed(s.Exited(arg, slot.attempt, -9, "killed"))
            case "time":
                env.now += arg
                env.feed(s.Tick())
    # Settle: every outcome delivered, every lease released, time moves on until nothing waits.
    for _ in range(500):
        if env.pending:
            env.feed(env.pending.pop(0))
        elif env.leases:
            env.feed(s.Release(env.leases.pop()))
        elif env.world.waiters:
            wake = next_wakeup(env.world, env.now, env.config)
            env.now = wake if wake is not None else env.now + 1
            env.feed(s.Tick())
        else:
            break
    assert not env.world.waiters, "a request was never answered"
    assert not env.open
    assert all(x.state in (s.State.STOPPED, s.State.READY, s.State.FAILED, s.State.PARKED)
               for x in env.world.slots.values())  # fmt: skip
