"""TaskRunner: takes accepted tasks from the durable queue (the tasks table) and runs them.

Work lives here, not in the ingress, so a redeploy or crash of an ingress replica never
strands a task. A runner claims a task under a lease it keeps renewing; if the runner dies,
the lease runs out and any runner (a restarted replica included) claims the task again.
After ``max_attempts`` interrupted runs the task is failed with a clear error instead.
The ingress wakes the runner with ``notify()`` when it accepts a task; a slow periodic
scan is only the safety net.

**The runner owns the task lifecycle.** Every status transition (claim, renew, release,
finish, cancel: ``storage.lifecycle``) is made here and nowhere else, because the runner is
the only component that holds a lease on a task, so the only one that knows whether a
transition is still valid (a run that lost its lease must not end a task another runner
took over) and the only one that can stop a run before writing ``cancelled``. The ingress
only creates rows and forwards a user's cancel (``cancel()``); the ProgressTracker keeps
live progress and publishes the terminal event once the row is written.

**Cancellation is pushed, not polled.** ``cancel()`` reaches one replica (any of them). It
flags the row (a queued task ends ``cancelled`` at once), stops the run at once if this
replica holds it, and otherwise signals the tracker, where the replica that holds the task
waits in one long-held ``wait_cancelled`` call per running task: that call returns, the
runner cancels the run's asyncio task, and the cancellation travels down the model call
(Serve cancels the request in the replica). The signal survives a tracker restart: the
held call then fails, and the runner reads the row's flag once before it waits again. A run
that has not stopped ``CANCEL_GRACE_SECONDS`` later is recorded cancelled and abandoned, so
a cancel always ends the task and frees its slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar

from ray import serve
from ray.exceptions import RayError
from ray.serve.exceptions import RayServeException
from sqlalchemy.exc import SQLAlchemyError

from common import metrics
from common.config import RunnerConfig
from common.errors import TaskInterruptedError
from common.logs import bind, configure_service_logging
from common.retry import Retry, call_with_retry, instances_of
from common.schemas import TaskError, TaskParams, TaskStatus, TaskType, Timings, Transcript
from common.settings import Settings
from deployments.audio import RayDecoder, require_shared_blob_store
from deployments.clients import (
    AlignClient,
    AsrClient,
    DiarizeClient,
    OutcomeWriteError,
    ProgressClient,
)
from deployments.pipeline import TaskInput, TaskOutcome, TaskPipeline
from deployments.progress import TrackerHandle
from storage import api_keys, lifecycle, repository
from storage.blobs import blob_store_from
from storage.db import Database, migrate

logger = logging.getLogger(__name__)

CANCEL_GRACE_SECONDS = 10.0
"""Time a cancelled run gets to stop by itself before the runner records it cancelled."""
CANCEL_WAIT_SECONDS = 60.0
"""Longest one held ``wait_cancelled`` call lasts before it is sent again (bounded, so a
tracker that hangs instead of dying cannot hold a cancel back for ever)."""
WATCH_PAUSE_SECONDS = 1.0
"""Pause between two cancel watches of one running task."""
PUBLISH_ATTEMPTS = 5
PUBLISH_BACKOFF_SECONDS = 1.0
"""A terminal event the tracker did not take is sent again after 1, 2, 4, 8 s."""
TRACKER_ERRORS: tuple[type[Exception], ...] = (RayError, RayServeException)
"""What a call to the tracker raises when the tracker is away (restarting, unreachable)."""
_WATCH_ERRORS: tuple[type[Exception], ...] = (SQLAlchemyError, *TRACKER_ERRORS)


class TaskOutcomes:
    """The runner's ``OutcomeSink``: writes a task's terminal transition, then has the
    tracker publish it, so a client that sees the terminal event can read the row at once.

    The result goes to the database once, from here; the tracker gets status and error only.
    """

    def __init__(self, db: Database, progress: ProgressClient, worker_id: str | None) -> None:
        self._db = db
        self._progress = progress
        self._worker_id = worker_id
        self.finishing: set[str] = set()
        """Tasks whose outcome is being recorded: their rows may already be final while the
        run still holds its slot, so a lease renewal that misses them has lost nothing. The
        runner drops each id when the run ends."""
        self._recordings: set[asyncio.Task[bool]] = set()

    async def finish(
        self,
        task_id: str,
        status: TaskStatus,
        *,
        result: Transcript | None = None,
        error: TaskError | None = None,
        timings: Timings | None = None,
    ) -> bool:
        """Write the outcome, then publish it. Once begun, this runs to its end even if the
        caller is cancelled meanwhile (a second cancel, the abandon after the grace, a
        shutdown): a row written final whose terminal event was cut off would leave the
        tracker showing the task running for ever."""
        self.finishing.add(task_id)
        recording = asyncio.create_task(
            self._record(task_id, status, result=result, error=error, timings=timings)
        )
        self._recordings.add(recording)
        recording.add_done_callback(self._recorded)
        return await asyncio.shield(recording)

    def _recorded(self, recording: asyncio.Task[bool]) -> None:
        self._recordings.discard(recording)
        if not recording.cancelled() and (exc := recording.exception()) is not None:
            # seen by the caller too, unless the caller was cancelled while it waited
            logger.debug("recording an outcome failed: %r", exc)

    async def _record(
        self,
        task_id: str,
        status: TaskStatus,
        *,
        result: Transcript | None,
        error: TaskError | None,
        timings: Timings | None,
    ) -> bool:
        seq = await self._terminal_seq(task_id)
        try:
            written = await asyncio.to_thread(
                lifecycle.finish,
                self._db,
                task_id=task_id,
                status=status,
                result=result,
                error=error,
                timings=timings,
                seq=seq,
                worker_id=self._worker_id,
            )
            if not written:
                # Already final (an earlier attempt of this write got through, or it was
                # abandoned as cancelled) or no longer ours: publish what the row says.
                row = await asyncio.to_thread(repository.get_task, self._db, task_id=task_id)
        except SQLAlchemyError as exc:
            raise OutcomeWriteError(task_id) from exc
        if not written:
            public = row.to_public() if row is not None else None
            if public is None or not public.status.terminal:
                logger.warning(
                    "task %s is no longer held by this runner; its outcome was dropped",
                    task_id,
                    extra={"task_id": task_id},
                )
                return False
            status, error = public.status, public.error
        await self.publish(task_id, status, error)
        return written

    async def _terminal_seq(self, task_id: str) -> int | None:
        """The seq the tracker will give the terminal event, stored with the row so a
        tracker rebuilt from it replays that event under the same number."""
        try:
            snap = await self._progress.snapshot(task_id)
        except TRACKER_ERRORS:
            logger.warning("tracker away; terminal seq not known", exc_info=True)
            return None
        return snap.seq + 1 if snap is not None else None

    async def publish(self, task_id: str, status: TaskStatus, error: TaskError | None) -> None:
        """The terminal event of a task whose row is final (never raises for the tracker).

        Sent again a few times when the tracker is away: a replica being replaced may
        already have rebuilt the task from its row while it was still running, and would
        show it running until this event arrives."""

        def retrying(attempt: int, exc: Exception, delay: float) -> None:
            logger.warning(
                "tracker away; task %s is %s in the database only (attempt %d of %d)",
                task_id,
                status.value,
                attempt,
                PUBLISH_ATTEMPTS,
                extra={"task_id": task_id},
                exc_info=exc,
            )

        try:
            await call_with_retry(
                lambda: self._progress.finished(task_id, status, error),
                Retry(
                    instances_of(*TRACKER_ERRORS),
                    attempts=PUBLISH_ATTEMPTS,
                    first_delay_s=PUBLISH_BACKOFF_SECONDS,
                ),
                on_retry=retrying,
            )
        except TRACKER_ERRORS:
            logger.error(
                "task %s is %s, but the tracker did not take its terminal event",
                task_id,
                status.value,
                extra={"task_id": task_id},
                exc_info=True,
            )


class ServeReplicaCount:
    """Running replicas of this app's model deployment for a pipeline stage, from Serve's
    status (the pipeline asks only when a stage has waited a while)."""

    DEPLOYMENTS: ClassVar[dict[str, str]] = {
        "transcription": "AsrDeployment",
        "word timing": "AsrDeployment",
        "alignment": "AlignmentDeployment",
        "diarization": "DiarizationDeployment",
    }

    MAX_AGE_S = 1.0

    def __init__(self, app_name: str) -> None:
        self._app_name = app_name
        self._lock = asyncio.Lock()
        self._status: Any = None
        self._read_at = -math.inf

    async def __call__(self, stage: str) -> int | None:
        name = self.DEPLOYMENTS.get(stage)
        if name is None:
            return None
        # One status read at a time, shared for a second: a burst of waiting stages must
        # not fill the default thread pool the database calls (lease renewals) need.
        async with self._lock:
            now = time.monotonic()
            if now - self._read_at > self.MAX_AGE_S:
                self._status = await asyncio.to_thread(serve.status)
                self._read_at = time.monotonic()
            status = self._status
        app = status.applications.get(self._app_name)
        deployment = app.deployments.get(name) if app is not None else None
        if deployment is None:
            return None
        running = (n for state, n in deployment.replica_states.items() if state == "RUNNING")
        return int(sum(running))


@serve.deployment(name="TaskRunner", max_ongoing_requests=1000)
class TaskRunner:
    async def __init__(  # type: ignore[misc]  # Serve runs async constructors
        self,
        asr: Any,
        alignment: Any,
        diarization: Any,
        *,
        tracker: Any,
        config: RunnerConfig,
        default_language: str | None = None,
        model_languages: dict[str, str | None] | None = None,
        align_languages: frozenset[str] | None = None,
    ) -> None:
        settings = Settings()
        configure_service_logging(settings.log_level)
        url = settings.resolved_database_url()
        db = Database(url)
        # before anything else: several nodes on a node-local store would lose uploads
        require_shared_blob_store(blob_store_from(settings, db))
        await asyncio.to_thread(migrate, url)
        worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        progress = ProgressClient(TrackerHandle(tracker))
        self._setup(db, config, progress, worker_id, settings)
        self._pipeline = TaskPipeline(
            asr=AsrClient(asr),
            align=AlignClient(alignment, languages=align_languages),
            diarize=DiarizeClient(diarization),
            progress=self._progress,
            outcomes=self._outcomes,
            decode=RayDecoder(num_cpus=config.decode_num_cpus),
            default_language=default_language,
            model_languages=model_languages,
            record_duration=self._record_duration,
            stage_retries=config.stage_retries,
            stage_retry_backoff_s=config.stage_retry_backoff_seconds,
            cancelled_by_user=self._stopping.__contains__,
            running_replicas=ServeReplicaCount(serve.get_replica_context().app_name),
            diarize_alongside=config.diarize_alongside_asr,
        )
        self._claim_loop = asyncio.create_task(self._claim_forever())
        self._lease_loop = asyncio.create_task(self._renew_forever())
        logger.info("task runner %s started", self._worker_id)

    def _setup(
        self,
        db: Database,
        config: RunnerConfig,
        progress: ProgressClient,
        worker_id: str,
        settings: Settings,
    ) -> None:
        """The state every method uses (apart from the pipeline and the loops), so tests
        can build a runner without Serve."""
        self._allow_networks = settings.url_fetch_allow_networks
        signing = settings.callback_signing_secret
        self._signing_secret = signing.get_secret_value() if signing else None
        self._db = db
        self._config = config
        self._worker_id = worker_id
        self._progress = progress
        self._outcomes = TaskOutcomes(db, progress, worker_id)
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._stopping: dict[str, float] = {}  # cancelled by the user: since when (loop time)
        self._background: set[asyncio.Task[None]] = set()  # callbacks, cancel watches, timers
        self._wake = asyncio.Event()

    async def _record_duration(self, task_id: str, duration: float) -> None:
        await asyncio.to_thread(
            repository.set_audio_duration, self._db, task_id=task_id, duration=duration
        )

    async def notify(self) -> None:
        self._wake.set()

    async def cancel(self, task_id: str) -> TaskStatus | None:
        """A user's cancel (``POST /task/{id}/cancel``, or a delete), on whichever replica
        the handle picked. Returns the task's status afterwards; ``None``: unknown task.

        A run held here is stopped first, from memory, so a database hiccup can neither
        hold the cancel back nor make it look like a runner stop."""
        held = task_id in self._inflight
        if held:
            self._stop_for_user(task_id)
        try:
            outcome = await asyncio.to_thread(lifecycle.cancel, self._db, task_id=task_id)
        except SQLAlchemyError:
            if not held:
                raise
            logger.warning(
                "flagging the cancel of task %s failed; its run is stopped anyway",
                task_id,
                extra={"task_id": task_id},
                exc_info=True,
            )
            return TaskStatus.processing
        if outcome is None:
            return None
        if outcome.ended_now:  # it was queued: no run to stop, and no runner will see it
            row = await asyncio.to_thread(repository.get_task, self._db, task_id=task_id)
            if row is not None:
                metrics.record_finished(row.task_type, TaskStatus.cancelled.value)
            await self._outcomes.publish(task_id, TaskStatus.cancelled, None)
            self._spawn(self._send_callback(task_id))
        elif outcome.status is TaskStatus.processing and not held:
            try:  # the replica holding it waits for this; if it is lost, the flag stays
                await self._progress.request_cancel(task_id)
            except TRACKER_ERRORS:
                logger.warning(
                    "tracker away: task %s stops when its runner next reads the flag",
                    task_id,
                    extra={"task_id": task_id},
                    exc_info=True,
                )
        return outcome.status

    async def __del__(self) -> None:
        """Graceful shutdown (redeploy, scale-down): hand claimed tasks back to the queue now
        instead of letting them wait for their leases to run out."""
        for loop in (self._claim_loop, self._lease_loop, *self._background):
            loop.cancel()
        for task_id, running in list(self._inflight.items()):
            running.cancel()
            released = await asyncio.to_thread(
                lifecycle.release, self._db, task_id=task_id, worker_id=self._worker_id
            )
            logger.info("released task %s: %s", task_id, released, extra={"task_id": task_id})

    def check_health(self) -> None:
        for loop in (self._claim_loop, self._lease_loop):
            if loop.done():
                raise RuntimeError(
                    f"runner loop stopped: {'cancelled' if loop.cancelled() else loop.exception()}"
                )

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # ------------------------------------------------------------------ loops

    async def _claim_forever(self) -> None:
        loop = asyncio.get_running_loop()
        measured = -float("inf")
        while True:
            self._wake.clear()
            try:
                await self._claim_once()
            except SQLAlchemyError:
                logger.exception("claiming tasks failed; retrying")
            if loop.time() - measured >= self._config.poll_interval_seconds:
                measured = loop.time()
                await self._measure_queue()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._config.poll_interval_seconds)

    async def _claim_once(self) -> None:
        free = self._config.max_concurrent_tasks - len(self._inflight)
        if free <= 0:
            return
        rows = await asyncio.to_thread(
            lifecycle.claim,
            self._db,
            worker_id=self._worker_id,
            limit=free,
            lease_seconds=self._config.lease_seconds,
        )
        for row in rows:
            if row.id in self._inflight:  # our own run whose lease expired: it still runs
                continue
            self._start(row)
        metrics.record_in_flight(len(self._inflight))

    def _start(self, row: Any) -> None:
        """Run a claimed task, and watch for its cancellation while it runs."""
        run = asyncio.create_task(self._run(row))
        self._inflight[row.id] = run
        watch = self._spawn(self._watch_cancel(row.id))
        run.add_done_callback(lambda _: watch.cancel())

    async def _measure_queue(self) -> None:
        """Queue depth, oldest queued age and this replica's tasks in flight, as metrics."""
        metrics.record_in_flight(len(self._inflight))
        try:
            depth, oldest = await asyncio.to_thread(repository.queue_stats, self._db)
        except SQLAlchemyError:
            logger.debug("queue stats failed", exc_info=True)
            return
        age = (datetime.now(UTC) - oldest).total_seconds() if oldest is not None else 0.0
        metrics.record_queue(depth, age)

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self._config.lease_seconds / 3)
            if not self._inflight:
                continue
            try:
                await self._renew_once()
            except SQLAlchemyError:
                logger.exception("renewing leases failed")

    async def _renew_once(self) -> None:
        """Extend the leases of the runs held here; stop a run whose lease another runner
        has taken over."""
        sent = list(self._inflight)
        held = await asyncio.to_thread(
            lifecycle.renew,
            self._db,
            worker_id=self._worker_id,
            task_ids=sent,
            lease_seconds=self._config.lease_seconds,
        )
        # Only tasks asked about, still running and not finishing: one claimed during the
        # renewal was not in the request, and one whose outcome is being recorded has a
        # final row (no lease to renew) while it publishes the terminal event.
        for task_id in (set(sent) - held) & set(self._inflight) - self._outcomes.finishing:
            logger.warning(
                "lost the lease on task %s; stopping it", task_id, extra={"task_id": task_id}
            )
            self._inflight[task_id].cancel()

    # ------------------------------------------------------------------ cancellation

    async def _watch_cancel(self, task_id: str) -> None:
        """While ``task_id`` runs here: one held ``wait_cancelled`` call on the tracker,
        answered the moment another replica takes the user's cancel. Before each (re)start
        of the wait the row's flag is read once, so a cancel whose signal was lost with a
        tracker restart (or sent before this run began) still arrives."""
        failures = 0
        while task_id in self._inflight:
            try:
                if await asyncio.to_thread(
                    lifecycle.cancel_requested, self._db, task_id=task_id
                ) or await self._progress.wait_cancelled(task_id, CANCEL_WAIT_SECONDS):
                    logger.info("cancelling task %s", task_id, extra={"task_id": task_id})
                    self._stop_for_user(task_id)
                    return
                failures = 0
                # Not cancelled: the wait timed out, or the tracker already sees the task
                # ended (its run is finishing). Never spin on an answer that came at once.
                await asyncio.sleep(WATCH_PAUSE_SECONDS)
            except _WATCH_ERRORS as exc:
                failures += 1
                delay = min(0.25 * 2**failures, 5.0)
                logger.warning(
                    "watching task %s for a cancel failed (%s); again in %.1fs",
                    task_id,
                    type(exc).__name__,
                    delay,
                    extra={"task_id": task_id},
                )
                await asyncio.sleep(delay)

    def _stop_for_user(self, task_id: str) -> None:
        """Cancel the run's asyncio task now (the pipeline records it ``cancelled``), and
        abandon it ``CANCEL_GRACE_SECONDS`` later if it has not stopped by then."""
        running = self._inflight.get(task_id)
        if running is None or running.done() or task_id in self._stopping:
            return
        self._stopping[task_id] = asyncio.get_running_loop().time()
        running.cancel()
        self._spawn(self._abandon_unless_stopped(task_id, running))

    async def _abandon_unless_stopped(self, task_id: str, running: asyncio.Task[None]) -> None:
        await asyncio.wait({running}, timeout=CANCEL_GRACE_SECONDS)
        if not running.done():
            await self._abandon(task_id, running)

    async def _abandon(self, task_id: str, running: asyncio.Task[None]) -> None:
        logger.warning(
            "task %s did not stop after its cancellation; recording it cancelled",
            task_id,
            extra={"task_id": task_id},
        )
        if self._inflight.get(task_id) is running:
            del self._inflight[task_id]
        self._stopping.pop(task_id, None)
        running.cancel()
        try:
            if await self._outcomes.finish(task_id, TaskStatus.cancelled):
                row = await asyncio.to_thread(repository.get_task, self._db, task_id=task_id)
                if row is not None:
                    metrics.record_finished(row.task_type, TaskStatus.cancelled.value)
        except (OutcomeWriteError, SQLAlchemyError):
            logger.exception("recording cancellation of %s failed", task_id)
        self._outcomes.finishing.discard(task_id)
        self._wake.set()
        await self._send_callback(task_id)

    # ------------------------------------------------------------------ one task

    async def _run(self, row: Any) -> None:
        task_id = row.id
        request_id = (row.inputs or {}).get("request_id")
        bind(task_id=task_id, request_id=request_id)  # this run's log lines carry both
        if request_id:
            _serve_request_context(request_id)
        try:
            if row.attempts > self._config.max_attempts:
                err = TaskInterruptedError(
                    "Processing was interrupted repeatedly and the task was not completed. "
                    "Please submit it again.",
                    f"runner lost the task {row.attempts - 1} times "
                    f"(max_attempts={self._config.max_attempts})",
                )
                await self._outcomes.finish(
                    task_id, TaskStatus.failed, error=TaskError.from_exception(err)
                )
                metrics.record_finished(row.task_type, "failed", error_code=err.code)
                return
            queued = (
                (datetime.now(UTC) - row.created_at).total_seconds() if row.attempts == 1 else None
            )
            outcome = await self._pipeline.run(
                TaskInput(
                    task_id=task_id,
                    audio_key=row.audio_key,
                    params=TaskParams.model_validate(row.params),
                    task_type=TaskType(row.task_type),
                    inputs=row.inputs,
                    attempt=row.attempts,
                    queued_seconds=round(queued, 3) if queued is not None else None,
                )
            )
            logger.info("task %s %s", task_id, outcome.status.value, extra={"task_id": task_id})
            _record_outcome(row.task_type, outcome)
        except asyncio.CancelledError:
            logger.warning("task %s stopped", task_id, extra={"task_id": task_id})
        except Exception:  # the top of a task: whatever it was, log it with its traceback
            # Even recording the failure failed (the pipeline retries outcome writes): the
            # lease runs out and the task is claimed again, not left `processing` forever.
            logger.exception("task %s could not be finished", task_id, extra={"task_id": task_id})
        finally:
            mine = self._inflight.get(task_id) is asyncio.current_task()
            if mine:  # not abandoned after a cancel (the abandoning side has done all this)
                del self._inflight[task_id]
                self._stopping.pop(task_id, None)
                self._outcomes.finishing.discard(task_id)
            metrics.record_in_flight(len(self._inflight))
            self._wake.set()
            if mine:
                await self._send_callback(task_id)  # after freeing the slot; never raises

    async def _send_callback(self, task_id: str) -> None:
        """POST the final task to its ``callback_url``, if it ended and has one.

        Runs after every run of a task; a task that did not reach a final state here (lease
        lost, shutdown) is skipped. A failed delivery is logged and never touches the task.
        """
        from deployments.callbacks import CallbackPolicy, deliver_callback

        try:
            row = await asyncio.to_thread(repository.get_task, self._db, task_id=task_id)
            task = row.to_public() if row is not None else None
            if task is None or not task.status.terminal or not task.params.callback_url:
                return
            secret = self._signing_secret
            if row is not None and row.owner_key_id is not None:
                secret = await asyncio.to_thread(
                    api_keys.callback_secret_for, self._db, key_id=row.owner_key_id
                )
            await deliver_callback(
                task.params.callback_url,
                task,
                policy=CallbackPolicy.from_config(self._config),
                allow_networks=self._allow_networks,
                signing_secret=secret,
            )
        except Exception:
            logger.exception("callback of task %s failed", task_id, extra={"task_id": task_id})


def _record_outcome(task_type: str, outcome: TaskOutcome) -> None:
    timings = outcome.timings
    stages = (
        {
            "queued": timings.queued,
            "decode": timings.decode,
            "transcribing": timings.transcribing,
            "aligning": timings.aligning,
            "diarizing": timings.diarizing,
            "total": timings.total,
        }
        if timings is not None
        else None
    )
    metrics.record_finished(
        task_type,
        outcome.status.value,
        error_code=outcome.error.error_code if outcome.error else None,
        audio_seconds=outcome.duration_s,
        stage_seconds=stages,
    )


def _serve_request_context(request_id: str) -> None:
    """Make this run's deployment calls carry the request id that created the task, so
    Serve's own log lines in the model replicas show it too (Serve passes the caller's
    request id on through handle calls). Task-local: each run is its own asyncio task."""
    try:
        from ray.serve.context import _set_request_context

        _set_request_context(request_id=request_id)
    except Exception:  # a private Serve API: never let it stop a task
        logger.debug("could not set Serve's request context", exc_info=True)
