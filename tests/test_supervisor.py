"""The supervisor with an in-memory launcher: races, failures and faults, no processes."""

from __future__ import annotations

import asyncio

import pytest

from llmi.catalog.scan import Catalog
from llmi.errors import ModelNotFound, ModelTooLarge, NotReadyInTime, TooManyRequests, Unavailable
from llmi_router.embedded import step as step_module
from llmi_router.embedded.supervisor import STOP_GRACE_S
from tests.supervisor_fakes import GIB, entry, make, state_is, states, use


async def test_lru_eviction_happens_before_the_next_load() -> None:
    sup, launcher, clock = await make(entry("a"), entry("b"), entry("c"))
    for name in "abc":
        clock.now += 1
        await use(sup, name)
    assert launcher.started == ["a", "b", "c"]
    assert launcher.handles["a"].stopped
    assert not launcher.handles["b"].stopped
    assert sup.snapshot()["planned_bytes"] <= sup.budget.total_bytes
    assert states(sup) == {"a": "stopped", "b": "ready", "c": "ready"}


async def test_a_victim_whose_room_is_awaited_is_killed_at_once_others_stop_gracefully() -> None:
    sup, launcher, clock = await make(entry("a"), entry("b"), entry("c"))
    for name in "abc":
        clock.now += 1
        await use(sup, name)
    # "a" made room for "c": drained, nothing in flight, a request waiting on its room.
    assert launcher.handles["a"].grace_s == 0
    await sup.unload("b")  # an operator's unload is no hurry: a graceful exit
    await sup.settled()
    assert launcher.handles["b"].grace_s == STOP_GRACE_S


async def test_a_killed_cpu_victims_room_is_free_before_its_exit_is_seen() -> None:
    sup, launcher, clock = await make(entry("a"), entry("b"), budget_gib=1.5)  # holds one
    await use(sup, "a")
    launcher.handles["a"].stop_gate = asyncio.Event()  # its exit is not seen yet
    clock.now += 1
    lease = await asyncio.wait_for(sup.acquire("b", 30), 10)
    assert launcher.handles["a"].killed  # SIGKILL went out before its room was given away
    assert states(sup) == {"a": "stopped", "b": "ready"}
    lease.release()
    launcher.handles["a"].stop_gate.set()
    await sup.settled()
    assert launcher.handles["a"].stopped


async def test_a_model_still_stopping_is_not_followed_by_a_second_eviction() -> None:
    # On a GPU the driver frees a killed runtime's memory in its own time: its exit is waited for.
    sup, launcher, clock = await make(entry("a"), entry("b"), entry("c"), gpu=True)
    for name in "ab":
        clock.now += 1
        await use(sup, name)
    launcher.handles["a"].stop_gate = asyncio.Event()
    waiting = [asyncio.create_task(sup.acquire("c", 30)) for _ in range(2)]
    await state_is(sup, "a", "stopping")
    # A release makes the owner plan again while "a" is still stopping. (Were "b" evicted too,
    # this lease could never be had: the guard turns that hang into a failure.)
    lease = await asyncio.wait_for(sup.acquire("b", 30), 10)
    lease.release()
    await sup.wait_until(lambda w: w.slots["b"].in_flight == 0, 10)
    assert states(sup) == {"a": "stopping", "b": "ready", "c": "stopped"}
    launcher.handles["a"].stop_gate.set()
    for lease in await asyncio.gather(*waiting):
        lease.release()
    await sup.settled()
    assert states(sup) == {"a": "stopped", "b": "ready", "c": "ready"}
    assert not launcher.handles["b"].stopped


async def test_concurrent_requests_join_one_load() -> None:
    sup, launcher, _ = await make(entry("a"))
    launcher.gates["a"] = asyncio.Event()
    waiters = [asyncio.create_task(sup.acquire("a", 30)) for _ in range(5)]
    await asyncio.wait_for(launcher.began["a"].wait(), 10)
    await sup.wait_until(lambda w: w.queued("a") == 5, 10)
    assert launcher.started == ["a"]
    launcher.gates["a"].set()
    leases = await asyncio.gather(*waiters)
    assert {lease.url for lease in leases} == {"http://fake/a/0"}
    for lease in leases:
        lease.release()
        lease.release()  # idempotent
    await sup.settled()
    assert sup.slots["a"].in_flight == 0


async def test_busy_model_is_not_evicted_until_it_drains() -> None:
    sup, launcher, clock = await make(entry("a", 2), entry("b", 2))
    busy = await sup.acquire("a", 30)
    clock.now += 1
    wanting_b = asyncio.create_task(sup.acquire("b", 30))
    await sup.settled()
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
    await sup.wait_until(lambda w: w.queued("a") == 2, 10)
    with pytest.raises(TooManyRequests) as info:
        await sup.acquire("a", 30)
    assert info.value.status == 429
    assert info.value.retry_after >= 1
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
    assert states(sup)["bad"] == "failed"
    assert (await use(sup, "good")).startswith("http://fake/good/")
    # No retry before the backoff ends; after it, a retry is attempted.
    with pytest.raises(Unavailable):
        await sup.acquire("bad", 30)
    assert launcher.started.count("bad") == 1
    clock.now += 3600
    del launcher.fail["bad"]
    assert (await use(sup, "bad")).startswith("http://fake/bad/")
    assert launcher.started.count("bad") == 2


async def test_crash_is_noticed_and_the_next_request_restarts() -> None:
    sup, launcher, _ = await make(entry("a"))
    first = await use(sup, "a")
    launcher.handles["a"].crash()
    await state_is(sup, "a", "stopped")
    assert "goodbye" in (sup.slots["a"].error or "")
    second = await use(sup, "a")
    assert first != second


async def test_repeated_crashes_end_failed() -> None:
    sup, launcher, clock = await make(entry("a"))
    for _ in range(5):
        clock.now += 120  # past any backoff
        await sup.reap_idle()  # let the owner look at the clock
        await use(sup, "a")
        launcher.handles["a"].crash()
        await sup.wait_until(lambda w: w.slots["a"].state.value in ("stopped", "failed"), 10)
    assert states(sup)["a"] == "failed"


async def test_idle_models_unload_and_pinned_ones_stay() -> None:
    sup, _launcher, clock = await make(entry("a"), entry("p", pinned=True), idle_timeout_s=60)
    await use(sup, "a")
    await use(sup, "p")
    clock.now += 30
    await sup.reap_idle()
    assert states(sup) == {"a": "ready", "p": "ready"}
    clock.now += 31
    await sup.reap_idle()
    assert states(sup) == {"a": "stopped", "p": "ready"}


async def test_idle_reaping_never_takes_a_model_with_a_request() -> None:
    sup, _, clock = await make(entry("a"), idle_timeout_s=1)
    lease = await sup.acquire("a", 30)
    clock.now += 100
    await sup.reap_idle()
    assert states(sup)["a"] == "ready"
    lease.release()


async def test_removed_model_404s_and_unloads() -> None:
    sup, launcher, clock = await make(entry("a"), entry("b"))
    await use(sup, "a")
    await sup.update_catalog(Catalog((entry("b"),), ()))
    with pytest.raises(ModelNotFound):
        await sup.acquire("a", 30)
    await sup.reap_idle()
    assert states(sup)["a"] == "ready"  # kept a while, in case the folder comes back
    clock.now += 31
    await sup.reap_idle()
    assert "a" not in states(sup)
    assert launcher.handles["a"].stopped


async def test_shutdown_during_start_stops_everything() -> None:
    sup, launcher, _ = await make(entry("a"), entry("b"))
    await use(sup, "b")
    launcher.gates["a"] = asyncio.Event()
    waiting = asyncio.create_task(sup.acquire("a", 30))
    await state_is(sup, "a", "starting")
    await sup.close()
    with pytest.raises(Unavailable) as info:
        await waiting
    assert "shutting down" in info.value.message
    assert all(h.stopped for h in launcher.handles.values())
    assert set(states(sup).values()) == {"stopped"}


async def test_model_too_big_is_refused_with_a_reason() -> None:
    sup, launcher, _ = await make(entry("huge", 10))
    with pytest.raises(ModelTooLarge) as info:
        await sup.acquire("huge", 30)
    assert (info.value.status, info.value.code) == (400, "model_too_large")  # permanent: clients do not retry
    assert "budget" in info.value.message
    assert launcher.started == []


# -- the faults of the old supervisor, one regression test each ------------------------------


async def test_quick_crashes_back_off_before_restarting() -> None:
    sup, launcher, clock = await make(entry("a"))
    await use(sup, "a")
    launcher.handles["a"].crash()  # first crash: restart at once
    await state_is(sup, "a", "stopped")
    await use(sup, "a")
    assert launcher.started == ["a", "a"]
    launcher.handles["a"].crash()  # second quick crash: wait 2 s first
    await state_is(sup, "a", "stopped")
    waiting = asyncio.create_task(sup.acquire("a", 30))
    await sup.settled()
    assert launcher.started == ["a", "a"]
    assert not waiting.done()
    clock.now += 2
    await sup.reap_idle()
    (await waiting).release()
    assert launcher.started == ["a", "a", "a"]


async def test_an_unexpected_exception_in_start_never_leaves_the_slot_starting() -> None:
    sup, launcher, _ = await make(entry("a"), entry("b"))
    launcher.explode["a"] = RuntimeError("boom")
    with pytest.raises(Unavailable) as info:
        await sup.acquire("a", 30)
    assert info.value.code == "model_failed"
    assert "boom" in info.value.message
    assert states(sup)["a"] == "failed"
    assert sup.snapshot()["planned_bytes"] == 0  # its room is released
    await use(sup, "b")


async def test_a_folder_that_comes_back_keeps_serving() -> None:
    sup, launcher, _ = await make(entry("a"), entry("b"))
    url = await use(sup, "a")
    await sup.update_catalog(Catalog((entry("b"),), ()))  # one scan misses it (NFS hiccup)
    assert sup.model_type("a") is None
    await sup.update_catalog(Catalog((entry("a"), entry("b")), ()))
    assert sup.model_type("a") == "embedding"
    assert await use(sup, "a") == url  # the same runtime, not a reload
    assert launcher.started == ["a"]


async def test_a_hung_load_is_stopped_at_its_deadline_and_its_room_released() -> None:
    sup, launcher, clock = await make(entry("a", 2), entry("b", 2), load_timeout_s=60)
    launcher.gates["a"] = asyncio.Event()  # never opened: the load hangs
    waiting = asyncio.create_task(sup.acquire("a", 300))
    await state_is(sup, "a", "starting")
    clock.now += 61
    await sup.reap_idle()
    with pytest.raises(Unavailable) as info:
        await waiting
    assert "not ready after 60s" in info.value.message
    assert launcher.handles["a"].stopped
    assert states(sup)["a"] == "failed"
    await use(sup, "b")  # the room is free again


async def test_failures_reset_after_a_good_load() -> None:
    sup, launcher, clock = await make(entry("a"), load_retry_s=30)
    launcher.fail["a"] = "flaky disk"
    with pytest.raises(Unavailable):
        await sup.acquire("a", 30)
    assert sup.slots["a"].failures == 1
    clock.now += 31
    del launcher.fail["a"]
    await use(sup, "a")
    assert sup.slots["a"].failures == 0
    launcher.handles["a"].crash()
    await state_is(sup, "a", "stopped")
    launcher.fail["a"] = "flaky again"
    with pytest.raises(Unavailable) as info:
        await sup.acquire("a", 30)
    assert info.value.retry_after == pytest.approx(30)  # the first failure since the good load


async def test_a_release_wakes_no_waiter_of_another_model(monkeypatch: pytest.MonkeyPatch) -> None:
    sup, launcher, _ = await make(entry("a"), entry("b"))
    await use(sup, "b")
    launcher.gates["a"] = asyncio.Event()
    waiters = [asyncio.create_task(sup.acquire("a", 30)) for _ in range(50)]
    await sup.wait_until(lambda w: w.queued("a") == 50, 10)
    calls = []
    original = step_module.planner.plan
    monkeypatch.setattr(step_module.planner, "plan", lambda *a, **k: calls.append(a[2]) or original(*a, **k))
    lease = await sup.acquire("b", 30)
    lease.release()
    await sup.wait_until(lambda w: w.slots["b"].in_flight == 0, 10)
    assert not any(w.done() for w in waiters)
    assert len(calls) == 0  # "a" is loading: nobody plans for it again, let alone 50 times
    launcher.gates["a"].set()
    for lease in await asyncio.gather(*waiters):
        lease.release()


async def test_a_per_model_concurrency_bound_queues_then_429s() -> None:
    sup, _, _ = await make(entry("a"), max_concurrent_per_model=2, max_queue_per_model=1)
    held = [await sup.acquire("a", 30) for _ in range(2)]
    third = asyncio.create_task(sup.acquire("a", 30))
    await sup.wait_until(lambda w: w.queued("a") == 1, 10)
    with pytest.raises(TooManyRequests) as info:
        await sup.acquire("a", 30)
    assert info.value.retry_after >= 1
    held[0].release()
    lease = await third
    assert sup.slots["a"].in_flight == 2
    for one in (lease, held[1]):
        one.release()


async def test_hold_now_grants_a_ready_model_at_once_and_never_waits_loads_or_queues() -> None:
    sup, launcher, _ = await make(entry("a"), entry("b"), max_concurrent_per_model=1)
    assert sup.hold_now("a") is None, "a cold model: the caller goes the long way"
    assert launcher.started == [], "and no load was started for it"
    await use(sup, "a")
    lease = sup.hold_now("a")
    assert lease is not None
    assert sup.slots["a"].in_flight == 1
    assert lease.socket == launcher.handles["a"].socket, "the front relays over the runtime's Unix socket"
    assert sup.hold_now("a") is None, "at its concurrency bound"
    await sup.settled()
    assert sup.world.waiters == (), "the want that would have queued was withdrawn"
    lease.release()
    lease.release()
    assert sup.slots["a"].in_flight == 0, "released exactly once"
    assert sup.hold_now("nobody") is None


async def test_shutdown_stops_runtimes_with_requests_past_the_drain_timeout() -> None:
    sup, launcher, clock = await make(entry("a"), drain_timeout_s=5)
    lease = await sup.acquire("a", 30)  # never released: a request that outlives the drain
    closing = asyncio.create_task(sup.close())
    await state_is(sup, "a", "draining")
    assert not launcher.handles["a"].stopped
    clock.now += 6
    sup.post(step_module.Tick())
    await closing
    assert launcher.handles["a"].stopped
    lease.release()  # late, harmless


# -- fewer swaps, and requests that leave ----------------------------------------------------


async def test_queued_work_for_a_loaded_model_is_served_before_it_is_swapped_out() -> None:
    sup, launcher, clock = await make(entry("a", 2), entry("b", 2), max_concurrent_per_model=1)
    first = await sup.acquire("a", 30)
    more_a = [asyncio.create_task(sup.acquire("a", 30)) for _ in range(3)]
    await sup.wait_until(lambda w: w.queued("a") == 3, 10)
    clock.now += 1
    wants_b = asyncio.create_task(sup.acquire("b", 30))  # arrives after a's queue
    await sup.wait_until(lambda w: w.queued("b") == 1, 10)
    first.release()
    for task in more_a:
        (await task).release()  # each is granted in turn, "a" is never stopped in between
    (await wants_b).release()
    assert launcher.started == ["a", "b"]


async def test_a_model_that_served_several_requests_keeps_its_room_a_moment_when_idle() -> None:
    sup, launcher, clock = await make(entry("a", 2), entry("b", 2), swap_linger_ms=20)
    for _ in range(2):
        await use(sup, "a")  # two answers: its clients may be coming back
    wants_b = asyncio.create_task(sup.acquire("b", 30))
    await sup.wait_until(lambda w: w.queued("b") == 1, 10)
    assert states(sup) == {"a": "ready", "b": "stopped"}  # lingering
    again = await asyncio.wait_for(sup.acquire("a", 30), 10)  # and a returning client finds it
    again.release()
    clock.now += 0.021
    await sup.reap_idle()  # the linger is over: a tick gives its room away
    (await asyncio.wait_for(wants_b, 10)).release()
    assert launcher.started == ["a", "b"]


async def test_a_model_that_served_one_request_makes_room_at_once() -> None:
    sup, launcher, _ = await make(entry("a", 2), entry("b", 2), swap_linger_ms=20)
    await use(sup, "a")
    await use(sup, "b")  # no tick needed: "a" answered once, nobody is coming back to it
    assert launcher.started == ["a", "b"]


async def test_a_request_waiting_past_the_fairness_bound_makes_the_busy_model_drain() -> None:
    sup, launcher, clock = await make(entry("a", 2), entry("b", 2), swap_fairness_s=5)
    busy = await sup.acquire("a", 30)
    wants_b = asyncio.create_task(sup.acquire("b", 30))
    await sup.wait_until(lambda w: w.queued("b") == 1, 10)
    assert states(sup)["a"] == "ready"
    clock.now += 6
    await sup.reap_idle()
    assert states(sup)["a"] == "draining"  # no new requests for "a" now
    later_a = asyncio.create_task(sup.acquire("a", 30))
    await sup.wait_until(lambda w: w.queued("a") == 1, 10)
    busy.release()
    (await wants_b).release()
    assert launcher.started == ["a", "b"]
    (await later_a).release()  # "a" comes back after "b"


async def test_a_request_that_leaves_the_queue_triggers_no_load_and_no_eviction() -> None:
    sup, launcher, _ = await make(entry("a", 2), entry("b", 2))
    busy = await sup.acquire("a", 30)
    wants_b = asyncio.create_task(sup.acquire("b", 30))
    await sup.wait_until(lambda w: w.queued("b") == 1, 10)
    wants_b.cancel()
    with pytest.raises(asyncio.CancelledError):
        await wants_b
    await sup.wait_until(lambda w: w.queued("b") == 0, 10)
    busy.release()
    await sup.settled()
    assert launcher.started == ["a"]
    assert states(sup) == {"a": "ready", "b": "stopped"}


async def test_a_victim_is_reprieved_when_the_request_it_drained_for_leaves() -> None:
    sup, launcher, clock = await make(entry("a", 2), entry("b", 2), swap_fairness_s=5)
    busy = await sup.acquire("a", 30)
    wants_b = asyncio.create_task(sup.acquire("b", 30))
    await sup.wait_until(lambda w: w.queued("b") == 1, 10)
    clock.now += 6
    await sup.reap_idle()
    assert states(sup)["a"] == "draining"
    wants_b.cancel()
    await sup.wait_until(lambda w: w.slots["a"].state.value == "ready", 10)
    (await sup.acquire("a", 30)).release()
    busy.release()
    await sup.settled()
    assert launcher.started == ["a"]


async def test_a_deadline_while_waiting_is_503_and_leaves_the_queue() -> None:
    sup, launcher, _ = await make(entry("a", 2), entry("b", 2))
    busy = await sup.acquire("a", 30)
    with pytest.raises(NotReadyInTime):
        await sup.acquire("b", 0.01)
    await sup.wait_until(lambda w: w.queued("b") == 0, 10)
    busy.release()
    await sup.settled()
    assert launcher.started == ["a"]


# -- measured memory and parking (two budgets, a fake device that records moves) ---------------


async def test_measured_memory_replaces_the_estimate_in_the_plan() -> None:
    sup, launcher, _ = await make(entry("a", 1), entry("b", 1), budget_gib=2.5)
    launcher.measured["a"] = 2 * GIB  # the runtime really holds more than estimated
    await use(sup, "a")
    assert sup.slots["a"].measured == 2 * GIB
    assert sup.snapshot()["planned_bytes"] == 2 * GIB
    await use(sup, "b")  # 2 + 1 > 2.5: "a" must go, though the estimates (1 + 1) would fit
    assert states(sup) == {"a": "stopped", "b": "ready"}
    card = next(c for c in sup.describe() if c.id == "a")
    assert (card.memory_estimated_bytes, card.memory_measured_bytes) == (GIB, 2 * GIB)


async def test_a_load_a_request_waits_for_is_measured_at_its_first_answer_only() -> None:
    """Not at readiness: the runtime's PSS read would run beside that first request."""
    sup, launcher, _ = await make(entry("a", 1), budget_gib=4)
    launcher.measured["a"] = GIB
    lease = await sup.acquire("a", 30)
    await sup.settled()
    assert sup.slots["a"].measured is None, "not measured while its first request runs"
    lease.release()
    await sup.settled()
    assert sup.slots["a"].measured == GIB
    assert sup.snapshot()["planned_bytes"] == GIB
    launcher.measured["a"] = 2 * GIB
    await use(sup, "a")  # later answers are not measured again
    assert sup.slots["a"].measured == GIB


async def test_ready_runtimes_are_measured_again_when_the_launcher_says_their_shares_shifted() -> None:
    """A spare runtime that has warmed up copied pages the runtimes shared with it: their PSS grew."""
    sup, launcher, _ = await make(entry("a", 1), entry("b", 1), budget_gib=4)
    launcher.measured.update(a=GIB, b=GIB)
    await use(sup, "a")
    await use(sup, "b")
    await sup.unload("b")
    await sup.settled()
    launcher.measured.update(a=GIB + GIB // 8, b=2 * GIB)
    assert launcher.shifted is not None, "the supervisor gave the launcher its hook"
    launcher.shifted()
    await sup.settled()
    assert sup.slots["a"].measured == GIB + GIB // 8
    assert sup.snapshot()["planned_bytes"] == GIB + GIB // 8
    assert sup.slots["b"].measured == GIB, "a runtime that is gone is not measured"


async def test_the_launchers_own_memory_is_counted_in_a_host_budget() -> None:
    sup, launcher, _ = await make(entry("a", 1), entry("b", 1), budget_gib=2.5)
    launcher.reserved = GIB  # a pre-imported parent process
    await use(sup, "a")
    await use(sup, "b")  # 1 (reserved) + 1 + 1 > 2.5
    assert states(sup) == {"a": "stopped", "b": "ready"}


async def test_on_a_gpu_an_evicted_model_is_parked_and_woken_back() -> None:
    sup, launcher, clock = await make(entry("a", 2), entry("b", 2.2), budget_gib=4.1, gpu=True, host_gib=8)
    await use(sup, "a")
    clock.now += 1
    await use(sup, "b")
    assert launcher.parked == ["a"]
    assert states(sup) == {"a": "parked", "b": "ready"}
    # What the parked process keeps on the GPU is counted.
    assert sup.snapshot()["planned_bytes"] == int(2.2 * GIB) + launcher.residue
    clock.now += 1
    assert (await use(sup, "a")).startswith("http://fake/a/0")  # the same process, woken
    assert launcher.woken == ["a"]
    assert launcher.parked == ["a", "b"]
    assert launcher.started == ["a", "b"]


async def test_parking_falls_back_to_stopping_when_host_memory_is_short() -> None:
    sup, launcher, clock = await make(entry("a", 2), entry("b", 2.2), budget_gib=4.1, gpu=True, host_gib=1)
    await use(sup, "a")
    clock.now += 1
    await use(sup, "b")
    assert launcher.parked == []
    assert states(sup) == {"a": "stopped", "b": "ready"}


async def test_parking_is_skipped_when_the_residue_would_leave_too_little_room() -> None:
    sup, launcher, clock = await make(entry("a", 2), entry("b", 2.2), budget_gib=2.3, gpu=True, host_gib=8)
    await use(sup, "a")
    clock.now += 1
    await use(sup, "b")  # 0.25 residue + 2.2 > 2.3: stop, do not park
    assert launcher.parked == []
    assert states(sup) == {"a": "stopped", "b": "ready"}


async def test_without_a_gpu_nothing_is_parked() -> None:
    sup, launcher, clock = await make(entry("a", 2), entry("b", 2), budget_gib=2.5, host_gib=8)
    await use(sup, "a")
    clock.now += 1
    await use(sup, "b")
    assert launcher.parked == []
    assert states(sup)["a"] == "stopped"


# -- operations --------------------------------------------------------------------------------


async def test_an_operator_unload_waits_for_in_flight_requests_then_stops() -> None:
    sup, launcher, _ = await make(entry("a"))
    lease = await sup.acquire("a", 30)
    card = await sup.unload("a")
    assert card.state == "unloading"
    assert not launcher.handles["a"].stopped
    lease.release()
    await sup.settled()
    assert launcher.handles["a"].stopped
    assert states(sup)["a"] == "stopped"
    with pytest.raises(ModelNotFound):
        await sup.unload("nobody")


async def test_load_and_pin_keep_a_model_through_eviction_and_idle() -> None:
    sup, _, clock = await make(entry("a", 2), entry("b", 2), idle_timeout_s=60)
    card = await sup.load("a", 30)
    assert card.state == "ready"
    assert (await sup.pin("a", True)).pinned
    clock.now += 120
    await sup.reap_idle()
    with pytest.raises(Unavailable) as info:
        await sup.acquire("b", 30)  # a pinned "a" leaves no room for "b"
    assert info.value.code == "no_room"
    assert states(sup)["a"] == "ready"
    await sup.pin("a", False)
    await use(sup, "b")
    assert states(sup) == {"a": "stopped", "b": "ready"}
    kinds = [e.kind for e in sup.events.recent() if e.model == "a"]
    assert kinds[:3] == ["found", "loading", "ready"]
    assert "pinned" in kinds
    assert kinds[-2:] == ["idle", "stopped"]  # unpinned after its idle timeout: it goes at once


async def test_a_long_load_reports_progress_against_the_last_load_time() -> None:
    sup, launcher, clock = await make(entry("a"))
    launcher.load_seconds = 30.0
    await use(sup, "a")
    await sup.unload("a")
    await sup.settled()
    launcher.gates["a"] = asyncio.Event()
    waiting = asyncio.create_task(sup.acquire("a", 300))
    await state_is(sup, "a", "starting")
    clock.now += 6  # past the 5 s progress interval
    sup.post(step_module.Tick())
    await sup.wait_until(lambda _: any(e.kind == "progress" for e in sup.events.recent()), 10)
    progress = [e for e in sup.events.recent() if e.kind == "progress"]
    assert [e.detail for e in progress] == ["loading for 6s of about 30s (the last load)"]
    card = sup.card("a")
    assert (card.state, card.loading_s, card.last_load_s) == ("loading", 6.0, 30.0)
    launcher.gates["a"].set()
    (await waiting).release()
