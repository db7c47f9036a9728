"""What this router tells the operator about each model: requests in flight, and the last request.

Why on the LocalModel, one annotation per router replica (``inflight.llmi.dev/<router id>``): the
operator must know, before it stops a model to make room, whether any router still has requests
there. Several router replicas each own their own key (no counter shared by writers, no
read-modify-write); a router that dies stops refreshing its report and the operator ignores it
once stale; a router that restarts with the same id overwrites its old report at once. Reports
are removed when the count drops to zero, so an idle cluster carries none.

``due`` is the pure decision (tested with a fake clock); ``Publisher`` is the one task that owns the
published state and sends the patches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from llmi.localmodel import ANNOTATION_LAST_REQUEST, encode_report, format_time, report_key

log = logging.getLogger("llmi.router.kube")


@dataclass(frozen=True)
class Timing:
    """``report_s``: at most one in-flight report per model per this many seconds, unless the model
    drains (then at once); ``heartbeat_s``: a busy report is refreshed this often, so that the
    operator can tell a live router from a dead one; ``touch_s``: last-request time throttle."""

    report_s: float = 5.0
    heartbeat_s: float = 20.0
    touch_s: float = 30.0


@dataclass(frozen=True)
class Wanted:
    """What is true now for one model, as the control plane knows it."""

    in_flight: int = 0
    last_request: float | None = None  # epoch seconds of the last finished request
    draining: bool = False


@dataclass(frozen=True)
class Sent:
    """What the API server was last told for one model (``in_flight`` None: nothing, or removed)."""

    in_flight: int | None = None
    at: float = float("-inf")
    last_request: str | None = None
    touched_at: float = float("-inf")


def due(wanted: Wanted, sent: Sent, now: float, timing: Timing) -> tuple[bool, float | None]:
    """Whether to send a patch now, else when to look again (None: nothing pending)."""
    target = wanted.in_flight or None
    wake: list[float] = []
    if target != sent.in_flight:
        if wanted.draining or sent.at + timing.report_s <= now:
            return True, None
        wake.append(sent.at + timing.report_s)
    elif target is not None:
        if sent.at + timing.heartbeat_s <= now:
            return True, None
        wake.append(sent.at + timing.heartbeat_s)
    stamp = format_time(wanted.last_request) if wanted.last_request is not None else None
    if stamp is not None and stamp != sent.last_request:
        if sent.touched_at + timing.touch_s <= now:
            return True, None
        wake.append(sent.touched_at + timing.touch_s)
    return False, min(wake) if wake else None


def patch_for(router: str, wanted: Wanted, now: float) -> dict[str, Any]:
    annotations: dict[str, Any] = {
        report_key(router): encode_report(wanted.in_flight, now) if wanted.in_flight else None
    }
    if wanted.last_request is not None:
        annotations[ANNOTATION_LAST_REQUEST] = format_time(wanted.last_request)
    return {"metadata": {"annotations": annotations}}


Send = Callable[[str, dict[str, Any]], Awaitable[Any]]


@dataclass
class Publisher:
    """Sends each model's report and last-request time when ``due`` says so; one task, woken by ``poke``."""

    router: str
    send: Send
    wanted: Callable[[str], Wanted]
    timing: Timing = field(default_factory=Timing)
    clock: Callable[[], float] = time.time
    sent: dict[str, Sent] = field(default_factory=dict)
    _dirty: set[str] = field(default_factory=set)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    def start(self, previous: dict[str, int]) -> None:
        """Begin; ``previous`` are this router id's reports found at startup (a restart): cleared
        at once, since the requests they counted ended with the old process."""
        for model, count in previous.items():
            self.sent[model] = Sent(in_flight=count, at=float("-inf"))
            self._dirty.add(model)
        self._task = asyncio.create_task(self._run())

    def poke(self, model: str) -> None:
        self._dirty.add(model)
        self._wake.set()

    async def _run(self) -> None:
        deadlines: dict[str, float] = {}
        while True:
            self._wake.clear()
            now = self.clock()
            for model in self._dirty | {m for m, t in deadlines.items() if t <= now}:
                deadlines.pop(model, None)
                wake = await self._one(model, now)
                if wake is not None:
                    deadlines[model] = wake
            self._dirty.clear()
            timeout = max(0.0, min(deadlines.values()) - self.clock()) if deadlines else None
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns the event's result
            # instead of raising when close() cancels us in the step a poke woke the event, and
            # this loop then waits forever (a router's close hung that way).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    async def _one(self, model: str, now: float) -> float | None:
        wanted, sent = self.wanted(model), self.sent.get(model, Sent())
        send, wake = due(wanted, sent, now, self.timing)
        if not send:
            return wake
        await self._send(model, wanted, now)
        return due(wanted, self.sent[model], now, self.timing)[1]

    async def _send(self, model: str, wanted: Wanted, now: float) -> None:
        sent = self.sent.get(model, Sent())
        stamp = format_time(wanted.last_request) if wanted.last_request is not None else sent.last_request
        touched = now if stamp != sent.last_request else sent.touched_at
        try:
            await self.send(model, patch_for(self.router, wanted, now))
        except Exception as exc:  # never the request's problem; the next change or heartbeat tries again
            log.warning("cannot publish the in-flight report of %s: %s", model, exc)
        self.sent[model] = replace(
            sent, in_flight=wanted.in_flight or None, at=now, last_request=stamp, touched_at=touched
        )

    async def close(self, models: list[str]) -> None:
        """Stop, then send what is still pending (a last request time, a report to remove)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        now = self.clock()
        pending = [m for m in models if self._pending(m)]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await asyncio.gather(*(self._send(m, self.wanted(m), now) for m in pending))

    def _pending(self, model: str) -> bool:
        wanted, sent = self.wanted(model), self.sent.get(model, Sent())
        stamp = format_time(wanted.last_request) if wanted.last_request is not None else None
        return (wanted.in_flight or None) != sent.in_flight or (stamp is not None and stamp != sent.last_request)
