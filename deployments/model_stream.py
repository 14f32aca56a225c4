"""How a model deployment answers its caller: progress items, then the result, as a stream.

A model method (``transcribe``, ``align``, ``diarize``, ...) runs its engine in a worker
thread and is an async generator: Serve streams what it yields back to the caller
(``handle.options(stream=True).method.remote(...)``). It yields :class:`ModelProgress`
items, rate-limited and never going backwards, and last the result. The model knows
nothing of tasks or of the tracker: whoever called it decides what progress means.

Closing the stream stops the work. Serve cancels the replica's request when its caller
cancels or stops reading; a thread cannot be interrupted, so the progress callback the
engines call between chunks is the safe point: it raises :class:`RequestStopped` there,
and the model call unwinds and frees the replica instead of finishing work nobody reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel

from common.errors import ProcessingError

ProgressCallback = Callable[[float], None]
"""What engines call with their 0-100 percentage (from their worker thread)."""
ProgressFn = Callable[[float], Awaitable[None]]
"""What a caller of a model client passes to hear the stage's 0-100 percentage."""

T = TypeVar("T")
MIN_INTERVAL_S = 0.2
"""Fewest seconds between two progress items (the last one, 100, is always sent)."""


class ModelProgress(BaseModel):
    """One progress item of a model stream: the call's own 0-100 percentage."""

    percentage: float


class RequestStopped(Exception):
    """Raised inside a model's worker thread once the stream's caller went away."""


class ProgressThrottle:
    """Passes a percentage on only when it moved forward and ``min_interval_s`` has passed
    since the last one passed (100 always passes), so a per-chunk callback cannot flood
    the caller. Thread-safe: engines call it from their worker thread."""

    def __init__(
        self, min_interval_s: float = MIN_INTERVAL_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._min_interval, self._clock = min_interval_s, clock
        self._last_sent, self._last_pct = -float("inf"), -1.0
        self._lock = threading.Lock()

    def __call__(self, percentage: float) -> float | None:
        pct = max(0.0, min(100.0, float(percentage)))
        with self._lock:
            now = self._clock()
            if pct <= self._last_pct:
                return None
            if pct < 100.0 and now - self._last_sent < self._min_interval:
                return None
            self._last_sent, self._last_pct = now, pct
            return pct


async def stream_stoppable(
    work: Callable[[ProgressCallback], T], *, throttle: ProgressThrottle | None = None
) -> AsyncGenerator[ModelProgress | T, None]:
    """Run ``work(callback)`` in a worker thread; yield its progress, then its result.

    When the generator is closed or cancelled before the end (the caller went away), the
    worker stops at its next progress callback. ``work``'s exception is raised as is.
    """
    loop = asyncio.get_running_loop()
    throttle = throttle or ProgressThrottle()
    stop = threading.Event()
    items: asyncio.Queue[float] = asyncio.Queue()

    def callback(percentage: float) -> None:
        if stop.is_set():
            raise RequestStopped("the caller closed the stream")
        passed = throttle(percentage)
        if passed is not None:
            loop.call_soon_threadsafe(items.put_nowait, passed)

    running = asyncio.ensure_future(asyncio.to_thread(work, callback))
    running.add_done_callback(_retrieve)  # a stopped worker's RequestStopped is expected
    try:
        while not running.done():
            waiting = asyncio.ensure_future(items.get())
            try:
                await asyncio.wait({running, waiting}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiting.cancel()
            if waiting.done() and not waiting.cancelled():
                yield ModelProgress(percentage=waiting.result())
        while not items.empty():  # what the worker reported just before it returned
            yield ModelProgress(percentage=items.get_nowait())
        yield running.result()
    finally:
        stop.set()


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class ModelStream(Protocol):
    """What ``handle.options(stream=True).method.remote(...)`` returns, as used here."""

    def __aiter__(self) -> AsyncIterator[Any]: ...
    def cancel(self) -> None: ...


async def collect(stream: ModelStream, kind: type[T], progress: ProgressFn | None = None) -> T:
    """The stream's result (of type ``kind``), awaiting ``progress`` for each progress item.

    Leaving early (the awaiting coroutine cancelled, ``progress`` raising) cancels the
    stream, which stops the model's work.
    """
    result: T | None = None
    try:
        async for item in stream:
            if isinstance(item, ModelProgress):
                if progress is not None:
                    await progress(item.percentage)
            elif isinstance(item, kind):
                result = item
            else:
                raise TypeError(f"unexpected item {type(item).__name__} in a model stream")
    except BaseException:
        with contextlib.suppress(Exception):
            stream.cancel()
        raise
    if result is None:
        raise ProcessingError(
            "A model stage ended without a result.",
            f"the model stream ended without a {kind.__name__}",
        )
    return result
