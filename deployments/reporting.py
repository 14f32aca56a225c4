"""Turn whisperx/pyannote ``progress_callback`` percentages into ProgressTracker calls.

Engines take a plain ``Callable[[float], None]``; deployments build one of these so the
engines never import Ray. Calls are fire-and-forget and rate-limited, so a callback firing
per VAD chunk cannot flood the actor.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from common.schemas import TaskProgressStage

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[float], None]


class StageReporter:
    """Reports one stage's local percentage (0–100) of one task to the tracker actor."""

    def __init__(
        self,
        tracker: Any,
        task_id: str,
        stage: TaskProgressStage,
        *,
        min_interval_s: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._tracker = tracker
        self._task_id = task_id
        self._stage = stage
        self._min_interval = min_interval_s
        self._clock = clock
        self._last_sent = -float("inf")
        self._last_pct = -1.0
        self._lock = threading.Lock()

    def __call__(self, percentage: float) -> None:
        pct = max(0.0, min(100.0, float(percentage)))
        with self._lock:
            now = self._clock()
            if pct <= self._last_pct:
                return
            if pct < 100.0 and now - self._last_sent < self._min_interval:
                return
            self._last_sent, self._last_pct = now, pct
        try:
            self._tracker.report.remote(self._task_id, self._stage.value, pct)
        except Exception:  # progress must never break inference
            logger.warning(
                "progress report failed", extra={"task_id": self._task_id}, exc_info=True
            )


def stage_reporter(
    app_name: str | None, task_id: str | None, stage: TaskProgressStage
) -> ProgressCallback | None:
    """A reporter for ``task_id``'s ``stage``, or ``None`` outside a task (single-stage calls)."""
    if not app_name or not task_id:
        return None
    tracker = _tracker(app_name)
    if tracker is None:
        logger.warning("progress tracker not found", extra={"task_id": task_id})
        return None
    return StageReporter(tracker, task_id, stage)


def _tracker(app_name: str) -> Any | None:
    """This replica's app's ProgressTracker deployment (a handle Serve keeps routed to its
    live replica). ``app_name`` only says a task is being reported."""
    from ray import serve
    from ray.serve.exceptions import RayServeException

    try:
        app = serve.get_replica_context().app_name
        return serve.get_deployment_handle("ProgressTracker", app)
    except RayServeException:
        return None


T = TypeVar("T")


class RequestStopped(Exception):
    """Raised inside a model's worker thread once the request awaiting it was cancelled."""


async def run_stoppable(
    work: Callable[[ProgressCallback], T], progress: ProgressCallback | None
) -> T:
    """Run ``work(callback)`` in a worker thread; stop it at its next progress callback if the
    request is cancelled.

    Serve cancels a replica's request when its caller cancels (the runner does, when the
    user cancels a task). A thread cannot be interrupted, so the callback whisperx and
    pyannote call between chunks is the safe point: it raises there, the model call unwinds
    and frees the replica's lock instead of finishing work nobody will read.
    """
    stop = threading.Event()

    def guarded(percentage: float) -> None:
        if stop.is_set():
            raise RequestStopped("request cancelled")
        if progress is not None:
            progress(percentage)

    running = asyncio.ensure_future(asyncio.to_thread(work, guarded))
    try:
        return await asyncio.shield(running)
    except asyncio.CancelledError:
        stop.set()
        raise
