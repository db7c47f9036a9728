"""One thread owns the model.

Models are not safe to call from several threads, and on one device concurrent calls do not
run faster than queued ones. So every piece of model work runs on this thread, first come
first served; chat generations advance one step per turn in round robin, so a long answer
never starves a short request or a second stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")

_END = object()


class Pass:
    """The type of ``PASS``."""

    def __repr__(self) -> str:
        return "PASS"


PASS = Pass()
"""Yielded by a stream to end its turn without an item: its consumer is handed nothing. A chat
generation yields it once it has joined its engine's batch, so that every stream activated in
one round joins before the next batched step, and they share one prefill; the weight packer
(``engines/packed_linear``) yields it after each layer."""


@dataclass
class _Call:
    fn: Callable[[], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]


@dataclass
class _Stream(Generic[T]):
    gen: Iterator[T]
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Any]
    cancelled: threading.Event = field(default_factory=threading.Event)


class WorkerClosed(RuntimeError):
    """Submitted after close()."""


class ModelWorker:
    """Runs submitted calls and steps submitted generators on a single thread."""

    def __init__(self, max_streams: int = 64, name: str = "model-worker") -> None:
        self._max_streams = max_streams
        self._calls: deque[_Call] = deque()
        self._waiting: deque[_Stream[Any]] = deque()
        self._active: list[_Stream[Any]] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    # -- API for the event loop ---------------------------------------------------------

    async def run(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the worker thread and return its result (or raise its error)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._cond:
            if self._closed:
                raise WorkerClosed("the model worker is shut down")
            self._calls.append(_Call(fn, loop, future))
            self._cond.notify()
        return await future

    async def stream(self, gen: Iterator[T | Pass]) -> AsyncIterator[T]:
        """Step ``gen`` on the worker thread, one item per turn (``PASS`` yields the turn with
        none); stop it if the consumer leaves."""
        loop = asyncio.get_running_loop()
        handle: _Stream[T] = _Stream(gen, loop, asyncio.Queue())
        with self._cond:
            if self._closed:
                raise WorkerClosed("the model worker is shut down")
            self._waiting.append(handle)
            self._cond.notify()
        try:
            while True:
                item = await handle.queue.get()
                if item is _END:
                    return
                if isinstance(item, _Failure):
                    raise item.error
                yield item
        finally:
            handle.cancelled.set()
            with self._cond:
                self._cond.notify()

    def load(self) -> dict[str, int]:
        """Queue lengths, for metrics."""
        with self._cond:
            return {
                "calls_waiting": len(self._calls),
                "streams_waiting": len(self._waiting),
                "streams_active": len(self._active),
            }

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=30)

    # -- the worker thread --------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not (self._closed or self._calls or self._waiting or self._active):
                    self._cond.wait()
                if self._closed:
                    break
                call = self._calls.popleft() if self._calls else None
                while self._waiting and len(self._active) < self._max_streams:
                    self._active.append(self._waiting.popleft())
                streams = list(self._active)
            if call is not None:
                self._run_call(call)
            for stream in streams:
                if not self._step(stream):
                    with self._cond:
                        self._active.remove(stream)
        self._fail_all()

    def _run_call(self, call: _Call) -> None:
        if call.future.cancelled():
            return
        try:
            result = call.fn()
        except BaseException as exc:  # delivered to the caller, who decides
            call.loop.call_soon_threadsafe(_settle, call.future, None, exc)
        else:
            call.loop.call_soon_threadsafe(_settle, call.future, result, None)

    def _step(self, stream: _Stream[Any]) -> bool:
        """Advance one item; False when the stream is finished."""
        if stream.cancelled.is_set():
            _close_quietly(stream.gen)
            return False
        try:
            item = next(stream.gen)
            if item is PASS:
                return True
        except StopIteration:
            stream.loop.call_soon_threadsafe(stream.queue.put_nowait, _END)
            return False
        except BaseException as exc:
            stream.loop.call_soon_threadsafe(stream.queue.put_nowait, _Failure(exc))
            return False
        stream.loop.call_soon_threadsafe(stream.queue.put_nowait, item)
        return True

    def _fail_all(self) -> None:
        with self._cond:
            calls, streams = list(self._calls), [*self._waiting, *self._active]
            self._calls.clear()
            self._waiting.clear()
            self._active.clear()
        for call in calls:
            call.loop.call_soon_threadsafe(_settle, call.future, None, WorkerClosed("shut down"))
        for stream in streams:
            _close_quietly(stream.gen)
            stream.loop.call_soon_threadsafe(stream.queue.put_nowait, _Failure(WorkerClosed("shut down")))


@dataclass
class _Failure:
    error: BaseException


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _close_quietly(gen: Iterator[Any]) -> None:
    close = getattr(gen, "close", None)
    if close is not None:
        with contextlib.suppress(Exception):
            close()
