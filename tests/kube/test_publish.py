"""What a router publishes about each model, and when (pure, with a fake clock)."""

from __future__ import annotations

import asyncio
from typing import Any

from llmi.localmodel import ANNOTATION_LAST_REQUEST, report_key
from llmi_router.kube.publish import Publisher, Sent, Timing, Wanted, due, patch_for

T = Timing(report_s=10.0, heartbeat_s=30.0, touch_s=30.0)


def test_a_first_request_is_reported_at_once_then_changes_are_throttled() -> None:
    assert due(Wanted(in_flight=1), Sent(), 100.0, T) == (True, None)
    sent = Sent(in_flight=1, at=100.0)
    assert due(Wanted(in_flight=0), sent, 101.0, T) == (False, 110.0)  # back to idle: at most one per 10 s
    assert due(Wanted(in_flight=0), sent, 110.0, T) == (True, None)
    assert due(Wanted(in_flight=2), sent, 105.0, T) == (False, 110.0)  # a count change, same rule


def test_a_draining_model_is_reported_at_once() -> None:
    sent = Sent(in_flight=2, at=100.0)
    assert due(Wanted(in_flight=1, draining=True), sent, 101.0, T) == (True, None)
    assert due(Wanted(in_flight=2, draining=True), sent, 101.0, T) == (False, 130.0)  # unchanged: heartbeat only


def test_busy_reports_are_refreshed_and_idle_ones_are_not() -> None:
    assert due(Wanted(in_flight=1), Sent(in_flight=1, at=100.0), 129.0, T) == (False, 130.0)
    assert due(Wanted(in_flight=1), Sent(in_flight=1, at=100.0), 130.0, T) == (True, None)
    assert due(Wanted(in_flight=0), Sent(in_flight=None, at=100.0), 10_000.0, T) == (False, None)


def test_last_request_time_is_throttled_and_rides_along() -> None:
    sent = Sent(in_flight=None, at=0.0, last_request="1970-01-01T00:01:40Z", touched_at=100.0)
    assert due(Wanted(last_request=101.0), sent, 105.0, T) == (False, 130.0)
    assert due(Wanted(last_request=101.0), sent, 130.0, T) == (True, None)
    assert due(Wanted(last_request=100.4), sent, 130.0, T) == (False, None)  # same second: nothing new
    assert patch_for("r1", Wanted(in_flight=0, last_request=101.0), 130.0) == {
        "metadata": {"annotations": {report_key("r1"): None, ANNOTATION_LAST_REQUEST: "1970-01-01T00:01:41Z"}}
    }


async def test_a_restarted_router_clears_its_old_reports_at_once() -> None:
    sent: list[tuple[str, dict[str, Any]]] = []
    done = asyncio.Event()

    async def send(model: str, body: dict[str, Any]) -> None:
        sent.append((model, body))
        done.set()

    publisher = Publisher("r1", send, lambda _: Wanted(), T, clock=lambda: 1000.0)
    publisher.start({"a": 3})
    await asyncio.wait_for(done.wait(), 10)
    await publisher.close(["a"])
    assert sent == [("a", {"metadata": {"annotations": {report_key("r1"): None}}})]


async def test_close_ends_the_publisher_when_a_poke_lands_with_it() -> None:
    """A request ending just before the router closes: the poke wakes the publisher in the step that
    close() cancels it. On Python 3.11 ``asyncio.wait_for`` returned the event's result there instead
    of raising, and the publisher went back to waiting for ever: the router's close() hung."""
    reported = asyncio.Event()
    sent: list[dict[str, Any]] = []

    async def send(model: str, body: dict[str, Any]) -> None:
        sent.append(body)  # never suspends, so the publisher is parked again before the test resumes
        reported.set()

    busy = {"a": 1}
    publisher = Publisher("r1", send, lambda m: Wanted(busy.get(m, 0)), Timing(0.0, 600.0, 600.0), clock=lambda: 1.0)
    publisher.start({})
    publisher.poke("a")
    await reported.wait()  # reported; now waiting for a poke or the heartbeat due in 600 s
    busy["a"] = 0
    publisher.poke("a")
    closing = asyncio.create_task(publisher.close(["a"]))
    done, _ = await asyncio.wait({closing}, timeout=30)  # a guard against a hang, not a measurement
    assert closing in done, "close() did not return"
    assert sent[-1] == {"metadata": {"annotations": {report_key("r1"): None}}}
