"""ProgressTracker: the Serve deployment (one replica per app) that owns live task progress.

Every progress change of every task goes through it. It keeps a bounded event log per task
with a monotonic ``seq``, wakes WebSocket handlers that wait in ``events_after`` (no
sleeping loops), and mirrors in-stage progress to SQL: on every stage change and at a
bounded rate inside a stage. It writes no status and no result: the TaskRunner owns the
lifecycle (``storage.lifecycle``) and calls ``finished`` after it wrote the terminal row,
so a client that sees ``completed`` can read the result at once. The database is the
durable copy: after a restart the actor rebuilds a task's state from its row on first use.

It also carries cancel signals to the runner replica that holds a task: that runner holds
a ``wait_cancelled`` call per running task, answered the moment ``request_cancel`` comes.

``build_app`` binds it once in the app's graph and hands its handle to the Ingress and the
TaskRunner; a redeploy with new settings replaces it, and deleting the app removes it.
``ProgressTracker`` itself is a plain class (unit tests run it as an object);
``TrackerDeployment`` is its Serve deployment, which reads the database and Redis settings
in the replica, as the Ingress and the TaskRunner do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from typing import Any

from ray import serve

from common import metrics
from common.errors import is_replica_failure
from common.logs import configure_service_logging
from common.retry import Retry, call_with_retry
from common.schemas import (
    TaskError,
    TaskProgressStage,
    TaskSnapshot,
    TaskStatus,
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
        self._unmirrored: dict[str, repository.ProgressMirror] = {}  # next mirror batch
        self._mirror_writer: asyncio.Task[None] | None = None
        self._weights = dict(STAGE_WEIGHTS)  # learned from completed tasks on this cluster
        self._cancels: dict[str, asyncio.Future[bool]] = {}  # cancel signals, per running task
        self._published_before: dict[str, int] = {}  # seqs an earlier incarnation put in Redis
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

    async def finished(self, task_id: str, status: str, error: TaskError | None = None) -> None:
        """Publish the terminal event of a task whose runner has written its row.

        The runner writes the outcome (``storage.lifecycle``) first, so a client that sees
        ``completed`` can read the result at once; the result itself never passes through
        here. Anything still waiting for the task's cancellation is let go.
        """
        self._release_cancel(task_id, False)
        state = await self._state(task_id)
        if state is None or state.status.terminal:
            return
        if state.finish(TaskStatus(status), error) is not None:
            await self._notify(state)
        if durations := state.stage_durations():
            self._weights = learn_weights(self._weights, durations)

    async def request_cancel(self, task_id: str) -> None:
        """Signal the runner that holds ``task_id`` to stop it (``wait_cancelled``).

        The runner that took the user's cancel sends this after flagging the row, so a
        signal lost with this process is found in the database by the next watch."""
        future = self._cancel_future(task_id)
        if not future.done():
            future.set_result(True)

    async def wait_cancelled(self, task_id: str, timeout_s: float) -> bool:
        """Held by the runner of a running task: True as soon as its cancellation is
        requested; False when the task finished, was forgotten, or ``timeout_s`` passed."""
        state = self._states.get(task_id)
        if state is not None and state.status.terminal:
            return False
        future = self._cancel_future(task_id)
        with contextlib.suppress(TimeoutError):
            return await asyncio.wait_for(asyncio.shield(future), timeout_s)
        return False

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
        """Write the queued progress mirror, then stop the Redis publisher (the replica's
        shutdown; tests with a plain object)."""
        await self.flush_mirror()
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
        in_stream = 0
        if self._bus is not None and not state.status.terminal:
            # The database mirror of seq lags (≤1 write/s inside a stage); Redis holds every
            # event a previous incarnation published. Continue after those, so clients that
            # saw them never get a reused seq.
            in_stream = await self._bus.last_seq(task_id)
            state.seq = max(state.seq, in_stream)
        state.replay_current()  # the rebuilt state is the event under its seq
        if task_id in self._states:  # another call rebuilt it meanwhile
            return self._states[task_id]
        if in_stream >= state.seq > 0:
            # The stream already has an event under that seq (the earlier incarnation's):
            # the replay is for this log's watchers, not a new event to publish.
            self._published_before[task_id] = in_stream
        self._states[task_id] = state
        return state

    def _cancel_future(self, task_id: str) -> asyncio.Future[bool]:
        future = self._cancels.get(task_id)
        if future is None:
            future = self._cancels[task_id] = asyncio.get_running_loop().create_future()
        return future

    def _release_cancel(self, task_id: str, cancelled: bool) -> None:
        """Answer every ``wait_cancelled`` of the task with ``cancelled`` and drop its signal."""
        future = self._cancels.pop(task_id, None)
        if future is not None and not future.done():
            future.set_result(cancelled)

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
        if state is None:
            return None
        return state.events_after(max(after_seq, self._published_before.get(task_id, 0)))

    async def _mirror(self, state: TaskProgressState) -> None:
        """Queue the task's progress for the database: on a stage change, and at most once
        per ``mirror_interval_s`` inside a stage. One writer sends what is queued in one
        transaction; whatever arrives while it writes goes in its next batch, so a quiet
        tracker writes at once and a busy one (thousands of tasks) in a few large commits."""
        now = time.monotonic()
        last_at, last_stage = self._mirrored.get(state.task_id, (-float("inf"), None))
        if state.stage == last_stage and now - last_at < self._mirror_interval:
            return
        self._mirrored[state.task_id] = (now, state.stage)
        self._unmirrored[state.task_id] = repository.ProgressMirror(
            state.task_id, state.stage, state.percentage, state.seq, state.message
        )
        if self._mirror_writer is None or self._mirror_writer.done():
            self._mirror_writer = asyncio.create_task(self._write_mirrors())

    async def _write_mirrors(self) -> None:
        while self._unmirrored:
            batch, self._unmirrored = list(self._unmirrored.values()), {}
            try:
                await asyncio.to_thread(repository.update_progress_many, self._db, batch)
            except Exception:
                logger.exception("progress mirror write of %d tasks failed", len(batch))

    async def flush_mirror(self) -> None:
        """Wait until every queued progress mirror write has been sent (tests, shutdown)."""
        while self._mirror_writer is not None and not self._mirror_writer.done():
            await asyncio.wait({self._mirror_writer})

    async def forget(self, task_id: str) -> None:
        """Drop a deleted task's live state; waiters wake and find it gone."""
        self._drop(task_id)
        cond = self._changed.get(task_id)
        if cond is not None:
            async with cond:
                cond.notify_all()

    def _drop(self, task_id: str) -> None:
        self._states.pop(task_id, None)
        self._unmirrored.pop(task_id, None)
        self._changed.pop(task_id, None)
        self._mirrored.pop(task_id, None)
        self._published_before.pop(task_id, None)
        self._release_cancel(task_id, False)

    def _evict_finished(self) -> None:
        horizon = time.monotonic() - self._retain
        for task_id in [
            t
            for t, s in self._states.items()
            if s.finished_at is not None and s.finished_at < horizon
        ]:
            self._drop(task_id)


@serve.deployment(
    name="ProgressTracker",
    num_replicas=1,  # the one owner of live progress: never more than one replica
    # WebSocket handlers long-poll ``events_after`` (up to 25 s each): many at once.
    max_ongoing_requests=10_000,
    ray_actor_options={"num_cpus": 0},
    # Its live state is lost with it, so a replica slow under a burst (1000 cancels on a
    # 2-core box) is given time to answer instead of being replaced for it. A dead one is
    # found by the next check (a call to a dead actor fails at once): every 2 s, not
    # Serve's 10, since every progress stream stalls until it is replaced.
    health_check_period_s=2,
    health_check_timeout_s=120,
)
class TrackerDeployment(ProgressTracker):
    """A killed replica is seen by the controller within 2 s and replaced (a few seconds);
    callers' handles route to the new one, and ``TrackerHandle`` resends what it dropped."""

    def __init__(
        self, *, app_name: str, mirror_interval_s: float, retain_terminal_s: float
    ) -> None:
        settings = Settings()
        super().__init__(
            settings.resolved_database_url(),
            mirror_interval_s=mirror_interval_s,
            retain_terminal_s=retain_terminal_s,
            events_bus=EventsBusConfig.from_settings(settings, app_name),
        )

    async def effective_settings(self) -> dict[str, Any]:
        """What this replica runs with (operators and the redeploy test read it)."""
        return {
            "database_url": self._db.url,
            "mirror_interval_s": self._mirror_interval,
            "retain_terminal_s": self._retain,
            "redis": self._bus is not None,
        }

    async def __del__(self) -> None:
        """Graceful shutdown (redeploy, app deleted): stop the Redis publisher."""
        await self.close()


class TrackerHandle:
    """The tracker deployment's handle as its callers use it: ``await h.method.remote(...)``.

    A call whose replica died under it (SIGKILL, node lost) is sent again once Serve has
    replaced the replica, backing off, for up to ``retry_for_s``; the new replica rebuilds
    the task's state from its row, as after any restart. Errors raised inside the tracker
    are never retried.
    """

    def __init__(self, handle: Any, *, retry_for_s: float = 30.0, backoff_s: float = 0.25):
        self._handle = handle
        self._retry_for = retry_for_s
        self._backoff = backoff_s

    def __getattr__(self, method: str) -> _TrackerMethod:
        if method.startswith("_"):
            raise AttributeError(method)
        return _TrackerMethod(self, method)

    async def _call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        def retrying(retry: int, exc: Exception, delay: float) -> None:
            logger.warning(
                "progress tracker replica gone during %s (%s); sending it again",
                method,
                type(exc).__name__,
            )

        return await call_with_retry(
            lambda: getattr(self._handle, method).remote(*args, **kwargs),
            Retry(
                is_replica_failure,
                within_s=self._retry_for,
                first_delay_s=self._backoff,
                max_delay_s=2.0,
            ),
            on_retry=retrying,
        )


class _TrackerMethod:
    def __init__(self, owner: TrackerHandle, method: str) -> None:
        self._owner, self._method = owner, method

    def remote(self, *args: Any, **kwargs: Any) -> Awaitable[Any]:
        return self._owner._call(self._method, args, kwargs)
