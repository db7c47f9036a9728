"""Dynamic batching for encoders: concurrent requests to one model share forward passes.

Requests hand in prepared items (tokenized texts, processed images); one collector task per
kind merges what is waiting into one model call on the worker thread and hands each request
its own slice of the results. A batch closes when it holds one forward's worth of items (the
engine's batch size, at most ``max_items``) or when its first item has waited ``max_wait_s``.

Why a batch holds one forward and not everything waiting: a merged batch answers all its
requests at its end, so their clients all come back at once and the model idles while they do
(four clients of 32 texts: the model thread was busy 83% of the time). One forward per batch
answers the first request while the second computes. A full batch is handed to the worker while
the one before it still runs (two in flight), so the model thread never waits for the event
loop between them; a batch that is not full waits for the running one to finish, filling up.

Heavy input work runs on ``Preparer``'s own thread: off the event loop, off the model's
thread, and one thread so a fast tokenizer is never used from two threads at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from llmi_runtime.worker import ModelWorker

I = TypeVar("I")  # noqa: E741 - an item
O = TypeVar("O")  # noqa: E741 - its result
T = TypeVar("T")

Observe = Callable[[str, int, int], None]  # (kind, items, requests) of one batch
IN_FLIGHT = 2  # batches handed to the worker at once: one running, the next one ready


@dataclass(frozen=True)
class BatchPolicy:
    max_wait_s: float
    max_items: int


@dataclass(eq=False)
class _Waiting(Generic[I, O]):
    items: Sequence[I]
    future: asyncio.Future[list[O]]


class DynamicBatcher(Generic[I, O]):
    """Merges concurrent ``submit`` calls into calls of ``run`` (items in, one result per item out)."""

    def __init__(
        self,
        kind: str,
        worker: ModelWorker,
        run: Callable[[list[I]], list[O]],
        policy: BatchPolicy,
        observe: Observe | None = None,
        size: int | None = None,
    ) -> None:
        self.kind = kind
        self._worker = worker
        self._run = run
        self._policy = policy
        self._observe = observe
        self._limit = min(policy.max_items, size or policy.max_items)  # items that close a batch
        self._queue: list[_Waiting[I, O]] = []
        self._queued_items = 0
        self._first_at = 0.0
        self._wake = asyncio.Event()  # a batch filled up, or one in flight finished
        self._task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()

    async def submit(self, items: Sequence[I]) -> list[O]:
        """Results for ``items``, computed in a batch with whatever else is waiting."""
        if not items:
            return []
        loop = asyncio.get_running_loop()
        waiting: _Waiting[I, O] = _Waiting(items, loop.create_future())
        if not self._queue:
            self._first_at = loop.time()
        self._queue.append(waiting)
        self._queued_items += len(items)
        if self._queued_items >= self._limit:
            self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._collect(), name=f"batcher-{self.kind}")
        return await waiting.future

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            full = self._queued_items >= self._limit
            if len(self._running) >= IN_FLIGHT or (self._running and not full):
                await self._wake.wait()  # the next batch fills while the worker is busy
                self._wake.clear()
                continue
            remaining = self._first_at + self._policy.max_wait_s - loop.time()
            if not full and remaining > 0:  # the model is idle: wait a little for company
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), remaining)
                self._wake.clear()
                continue
            batch = self._take()
            if batch:
                task = asyncio.create_task(self._run_batch(batch), name=f"batch-{self.kind}")
                self._running.add(task)
                task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._wake.set()

    def _take(self) -> list[_Waiting[I, O]]:
        """Waiting requests in arrival order up to one batch's items (always at least one)."""
        batch: list[_Waiting[I, O]] = []
        count = 0
        while self._queue and (not batch or count + len(self._queue[0].items) <= self._limit):
            waiting = self._queue.pop(0)
            self._queued_items -= len(waiting.items)
            if not waiting.future.done():  # its caller may have left while it waited
                batch.append(waiting)
                count += len(waiting.items)
        if self._queue:
            self._first_at = asyncio.get_running_loop().time()
        return batch

    async def _run_batch(self, batch: list[_Waiting[I, O]]) -> None:
        items = [item for waiting in batch for item in waiting.items]
        try:
            results = await self._worker.run(lambda: self._run(items))
        except Exception as exc:
            for waiting in batch:
                if not waiting.future.done():
                    waiting.future.set_exception(exc)
            return
        if self._observe is not None:
            self._observe(self.kind, len(items), len(batch))
        start = 0
        for waiting in batch:
            end = start + len(waiting.items)
            if not waiting.future.done():
                waiting.future.set_result(results[start:end])
            start = end

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for task in list(self._running):
            task.cancel()


@dataclass
class Batching:
    """The encoder batchers of one runtime, made on first use (one per kind of model call)."""

    worker: ModelWorker
    policy: BatchPolicy
    observe: Observe | None = None
    _batchers: dict[str, DynamicBatcher[Any, Any]] = field(default_factory=dict)

    def batcher(self, kind: str, run: Callable[[list[I]], list[O]], size: int | None = None) -> DynamicBatcher[I, O]:
        """The batcher of ``kind``; ``size`` is the engine's forward batch, which closes a batch."""
        found = self._batchers.get(kind)
        if found is None:
            found = self._batchers[kind] = DynamicBatcher(kind, self.worker, run, self.policy, self.observe, size)
        return found

    def close(self) -> None:
        for batcher in self._batchers.values():
            batcher.close()


class Preparer:
    """One thread for tokenizing and image processing, apart from the model's thread."""

    def __init__(self) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="prepare")

    async def run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
