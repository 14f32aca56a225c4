"""ProgressTracker: the named, detached Ray actor that owns live task progress.

Every progress change of every task goes through it. It keeps a bounded event log per task
with a monotonic ``seq``, wakes WebSocket handlers that wait in ``events_after`` (no
sleeping loops), and mirrors progress to SQL: on every stage change, at a bounded rate
inside a stage, and the terminal state before the terminal event is published, so a
client that sees ``completed`` can read the result at once. The database is the durable
copy: after a restart the actor rebuilds a task's state from its row on first use.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import ray

from common import metrics
from common.logs import configure_service_logging
from common.schemas import (
    TaskError,
    TaskProgressStage,
    TaskSnapshot,
    TaskStatus,
    Timings,
    Transcript,
)
from common.settings import Settings
from deployments.events_bus import EventsBusConfig
from deployments.events_publisher import EventPublisher
from deployments.progress_state import (
    STAGE_WEIGHTS,
    Event,
    TaskProgressState,
    learn_weights,
    state_from_row,
)
from storage import repository
from storage.db import Database

logger = logging.getLogger(__name__)

TRACKER_NAMESPACE = "whisperx_serve"


def tracker_name(app_name: str) -> str:
    return f"{app_name}-progress"


class ProgressTracker:
    def __init__(
        self,
        database_url: str,
        *,
        mirror_interval_s: float = 1.0,
        retain_terminal_s: float = 900.0,
        events_bus: EventsBusConfig | None = None,
    ) -> None:
        configure_service_logging(Settings().log_level)  # a no-op outside a Ray worker
        self._db = Database(database_url)
        self._mirror_interval = mirror_interval_s
        self._retain = retain_terminal_s
        self._states: dict[str, TaskProgressState] = {}
        self._changed: dict[str, asyncio.Condition] = {}
        self._mirrored: dict[str, tuple[float, TaskProgressStage]] = {}
        self._weights = dict(STAGE_WEIGHTS)  # learned from completed tasks on this cluster
        # Copies every logged event to Redis in the background (never blocks progress).
        self._bus = EventPublisher(events_bus, self._logged) if events_bus else None

    # ---------------------------------------------------------------- writers

    async def start(self, task_id: str, stages: list[str], attempt: int = 1) -> None:
        self._evict_finished()
        state = await self._state(task_id)
        if state is not None:
            event = state.start([TaskProgressStage(s) for s in stages], attempt, self._weights)
            await self._publish(state, event)

    async def enter_stage(self, task_id: str, stage: str, message: str = "") -> None:
        state = await self._state(task_id)
        if state is not None:
            await self._publish(state, state.enter_stage(TaskProgressStage(stage), message))

    async def note(self, task_id: str, message: str) -> None:
        """A new message for the current stage (a stage retried), at the same percentage."""
        state = await self._state(task_id)
        if state is not None:
            await self._publish(state, state.note(message))

    async def report(self, task_id: str, stage: str, percentage: float, message: str = "") -> None:
        # Loaded from the row if this incarnation has not seen the task yet: a restart
        # must not freeze a running stage's progress until the runner's next call.
        state = await self._state(task_id)
        if state is not None:
            await self._publish(state, state.report(TaskProgressStage(stage), percentage, message))

    async def finish(
        self,
        task_id: str,
        status: str,
        *,
        result: Transcript | None = None,
        error: TaskError | None = None,
        timings: Timings | None = None,
    ) -> bool:
        """Persist the terminal state, then publish the terminal event.

        Returns False if the task was already terminal.
        """
        state = await self._state(task_id)
        if state is None or state.status.terminal:
            return False
        final = TaskStatus(status)
        seq = state.seq + 1
        if final is TaskStatus.completed:
            assert result is not None, "a completed task needs a result"
            written = await asyncio.to_thread(
                repository.complete_task,
                self._db,
                task_id=task_id,
                result=result,
                timings=timings or Timings(),
                seq=seq,
            )
        elif final is TaskStatus.cancelled:
            written = await asyncio.to_thread(
                repository.cancel_task, self._db, task_id=task_id, timings=timings, seq=seq
            )
        else:
            err = error or TaskError(error_code="internal", user_message="The task failed.")
            written = await asyncio.to_thread(
                repository.fail_task, self._db, task_id=task_id, error=err, timings=timings, seq=seq
            )
        if not written:
            logger.warning(
                "task %s was already terminal in the database", task_id, extra={"task_id": task_id}
            )
        if state.finish(final, error) is not None:
            await self._notify(state)
        if durations := state.stage_durations():
            self._weights = learn_weights(self._weights, durations)
        return written

    async def cancel(self, task_id: str) -> TaskStatus | None:
        """Cancel a task: a queued one ends now; a running one is flagged in the database and
        its runner stops it at the next safe point, then finishes it as ``cancelled``.

        Returns the task's status afterwards, or ``None`` for an unknown task.
        """
        status = await asyncio.to_thread(repository.request_cancel, self._db, task_id=task_id)
        if status is TaskStatus.cancelled:
            state = await self._state(task_id)
            if state is not None and state.finish(TaskStatus.cancelled) is not None:
                await self._notify(state)
        return status

    async def stage_weights(self) -> dict[str, float]:
        """Current learned share of each stage (for operators and tests)."""
        return {stage.value: round(w, 4) for stage, w in self._weights.items()}

    # ---------------------------------------------------------------- readers

    async def snapshot(self, task_id: str) -> TaskSnapshot | None:
        state = await self._state(task_id)
        return state.snapshot() if state is not None else None

    async def events_after(
        self, task_id: str, after_seq: int, timeout_s: float = 25.0
    ) -> list[Event] | None:
        """Events with seq > ``after_seq``; waits up to ``timeout_s`` for the next one.

        ``None`` means the task does not exist. An empty list means nothing new in time
        (or the task is terminal and the caller has seen everything).
        """
        state = await self._state(task_id)
        if state is None:
            return None
        if after_seq > state.seq and not state.status.terminal:
            # A client saw events up to ``after_seq`` from an earlier incarnation of this
            # actor (rebuilt from a lagging database mirror): number the next event after
            # them, so the client neither skips it as already seen nor finds a gap.
            logger.info(
                "task %s continues at seq %d (was %d) after a tracker restart",
                task_id,
                after_seq,
                state.seq,
                extra={"task_id": task_id},
            )
            state.seq = after_seq
        cond = self._condition(task_id)

        def ready() -> bool:
            return state.seq > after_seq or state.status.terminal

        async with cond:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(cond.wait_for(ready), timeout_s)
        return state.events_after(after_seq)

    async def ping(self) -> bool:
        return True

    async def redis_state(self) -> str:
        """The Redis publisher: ``ok``, ``not configured`` or ``unavailable: <error>``."""
        return await self._bus.state() if self._bus is not None else "not configured"

    async def close(self) -> None:
        """Stop the Redis publisher (tests that run the tracker as a plain object)."""
        if self._bus is not None:
            await self._bus.aclose()

    # ---------------------------------------------------------------- internals

    async def _state(self, task_id: str) -> TaskProgressState | None:
        state = self._states.get(task_id)
        if state is not None:
            return state
        row = await asyncio.to_thread(repository.get_task, self._db, task_id=task_id)
        if row is None:
            return None
        state = state_from_row(row, self._weights)
        if self._bus is not None and not state.status.terminal:
            # The database mirror of seq lags (≤1 write/s inside a stage); Redis holds every
            # event a previous incarnation published. Continue after those, so clients that
            # saw them never get a reused seq.
            state.seq = max(state.seq, await self._bus.last_seq(task_id))
        return self._states.setdefault(task_id, state)

    def _condition(self, task_id: str) -> asyncio.Condition:
        return self._changed.setdefault(task_id, asyncio.Condition())

    async def _publish(self, state: TaskProgressState, event: Event | None) -> None:
        if event is None:
            return
        await self._notify(state)
        await self._mirror(state)

    async def _notify(self, state: TaskProgressState) -> None:
        if state.events:
            metrics.record_event_published(state.events[-1].type)
        cond = self._condition(state.task_id)
        async with cond:
            cond.notify_all()
        if self._bus is not None:
            self._bus.offer(state.task_id)

    def _logged(self, task_id: str, after_seq: int) -> list[Event] | None:
        """The publisher's view of a task's log (None once the task was evicted)."""
        state = self._states.get(task_id)
        return state.events_after(after_seq) if state is not None else None

    async def _mirror(self, state: TaskProgressState) -> None:
        now = time.monotonic()
        last_at, last_stage = self._mirrored.get(state.task_id, (-float("inf"), None))
        if state.stage == last_stage and now - last_at < self._mirror_interval:
            return
        self._mirrored[state.task_id] = (now, state.stage)
        try:
            await asyncio.to_thread(
                repository.update_progress,
                self._db,
                task_id=state.task_id,
                stage=state.stage,
                percentage=state.percentage,
                seq=state.seq,
                message=state.message,
            )
        except Exception:
            logger.exception("progress mirror write failed", extra={"task_id": state.task_id})

    async def forget(self, task_id: str) -> None:
        """Drop a deleted task's live state; waiters wake and find it gone."""
        self._drop(task_id)
        cond = self._changed.get(task_id)
        if cond is not None:
            async with cond:
                cond.notify_all()

    def _drop(self, task_id: str) -> None:
        self._states.pop(task_id, None)
        self._changed.pop(task_id, None)
        self._mirrored.pop(task_id, None)

    def _evict_finished(self) -> None:
        horizon = time.monotonic() - self._retain
        for task_id in [
            t
            for t, s in self._states.items()
            if s.finished_at is not None and s.finished_at < horizon
        ]:
            self._drop(task_id)


def get_or_create_tracker(
    app_name: str,
    database_url: str,
    *,
    mirror_interval_s: float = 1.0,
    settings: Settings | None = None,
) -> Any:
    """The app's tracker actor: detached (outlives any replica) and restarted on failure.

    Whoever creates it first fixes its arguments, so every caller passes the same ones;
    ``settings`` says whether (and where) it publishes events to Redis.
    """
    events_bus = EventsBusConfig.from_settings(settings, app_name) if settings else None
    actor_cls = ray.remote(ProgressTracker)
    return actor_cls.options(
        name=tracker_name(app_name),
        namespace=TRACKER_NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        max_restarts=-1,
        max_task_retries=3,
        max_concurrency=10_000,
        num_cpus=0,
    ).remote(database_url, mirror_interval_s=mirror_interval_s, events_bus=events_bus)
