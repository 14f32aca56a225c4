"""TaskRunner: takes accepted tasks from the durable queue (the tasks table) and runs them.

Work lives here, not in the ingress, so a redeploy or crash of an ingress replica never
strands a task. A runner claims a task under a lease it keeps renewing; if the runner dies,
the lease runs out and any runner (a restarted replica included) claims the task again.
After ``max_attempts`` interrupted runs the task is failed with a clear error instead.
The ingress wakes the runner with ``notify()`` when it accepts a task; a slow periodic
scan is only the safety net.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ray import serve

from common import metrics
from common.config import RunnerConfig
from common.errors import TaskInterruptedError
from common.logs import bind, configure_service_logging
from common.schemas import TaskError, TaskParams, TaskStatus, TaskType
from common.settings import Settings
from deployments.audio import decode_audio
from deployments.clients import AlignClient, AsrClient, DiarizeClient, ProgressClient
from deployments.pipeline import TaskInput, TaskOutcome, TaskPipeline
from deployments.progress import TrackerHandle
from storage import api_keys, repository
from storage.db import Database, migrate

logger = logging.getLogger(__name__)

CANCEL_GRACE_POLLS = 5
"""Polls a cancelled run gets to stop by itself before the runner records it cancelled."""


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
    ) -> None:
        settings = Settings()
        configure_service_logging(settings.log_level)
        url = settings.resolved_database_url()
        await asyncio.to_thread(migrate, url)
        self._db = Database(url)
        self._config = config
        self._allow_networks = settings.url_fetch_allow_networks
        signing = settings.callback_signing_secret
        self._signing_secret = signing.get_secret_value() if signing else None
        self._worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._progress = ProgressClient(TrackerHandle(tracker))
        self._pipeline = TaskPipeline(
            asr=AsrClient(asr),
            align=AlignClient(alignment),
            diarize=DiarizeClient(diarization),
            progress=self._progress,
            decode=decode_audio,
            default_language=default_language,
            model_languages=model_languages,
            record_duration=self._record_duration,
            cancel_requested=self._cancel_requested,
            stage_retries=config.stage_retries,
            stage_retry_backoff_s=config.stage_retry_backoff_seconds,
            cancelled_by_user=lambda task_id: task_id in self._stopping,
        )
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._stopping: dict[str, float] = {}  # cancelled on request: since when (loop time)
        self._callbacks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._claim_loop = asyncio.create_task(self._claim_forever())
        self._lease_loop = asyncio.create_task(self._renew_forever())
        self._cancel_loop = asyncio.create_task(self._watch_cancellations())
        logger.info("task runner %s started", self._worker_id)

    async def _record_duration(self, task_id: str, duration: float) -> None:
        await asyncio.to_thread(
            repository.set_audio_duration, self._db, task_id=task_id, duration=duration
        )

    async def _cancel_requested(self, task_id: str) -> bool:
        return task_id in await asyncio.to_thread(
            repository.cancel_requested, self._db, task_ids=[task_id]
        )

    async def task_ended(self, task_id: str) -> None:
        """A task ended outside any runner (cancelled while queued): send its callback."""
        ended = asyncio.create_task(self._send_callback(task_id))
        self._callbacks.add(ended)
        ended.add_done_callback(self._callbacks.discard)

    async def notify(self) -> None:
        self._wake.set()

    async def inflight(self) -> list[str]:
        return sorted(self._inflight)

    async def __del__(self) -> None:
        """Graceful shutdown (redeploy, scale-down): hand claimed tasks back to the queue now
        instead of letting them wait for their leases to run out."""
        for loop in (self._claim_loop, self._lease_loop, self._cancel_loop):
            loop.cancel()
        for task_id, running in list(self._inflight.items()):
            running.cancel()
            released = await asyncio.to_thread(
                repository.release_task, self._db, task_id=task_id, worker_id=self._worker_id
            )
            logger.info("released task %s: %s", task_id, released, extra={"task_id": task_id})

    def check_health(self) -> None:
        for loop in (self._claim_loop, self._lease_loop, self._cancel_loop):
            if loop.done():
                raise RuntimeError(
                    f"runner loop stopped: {'cancelled' if loop.cancelled() else loop.exception()}"
                )

    # ------------------------------------------------------------------ loops

    async def _claim_forever(self) -> None:
        loop = asyncio.get_running_loop()
        measured = -float("inf")
        while True:
            self._wake.clear()
            try:
                await self._claim_once()
            except Exception:
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
            repository.claim_tasks,
            self._db,
            worker_id=self._worker_id,
            limit=free,
            lease_seconds=self._config.lease_seconds,
        )
        for row in rows:
            if row.id in self._inflight:  # our own run whose lease expired: it still runs
                continue
            self._inflight[row.id] = asyncio.create_task(self._run(row))
        metrics.record_in_flight(len(self._inflight))

    async def _measure_queue(self) -> None:
        """Queue depth, oldest queued age and this replica's tasks in flight, as metrics."""
        metrics.record_in_flight(len(self._inflight))
        try:
            depth, oldest = await asyncio.to_thread(repository.queue_stats, self._db)
        except Exception:
            logger.debug("queue stats failed", exc_info=True)
            return
        age = (datetime.now(UTC) - oldest).total_seconds() if oldest is not None else 0.0
        metrics.record_queue(depth, age)

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self._config.lease_seconds / 3)
            if not self._inflight:
                continue
            sent = list(self._inflight)
            try:
                held = await asyncio.to_thread(
                    repository.renew_leases,
                    self._db,
                    worker_id=self._worker_id,
                    task_ids=sent,
                    lease_seconds=self._config.lease_seconds,
                )
            except Exception:
                logger.exception("renewing leases failed")
                continue
            # Only tasks asked about and still running: one claimed during the renewal was
            # not in the request, and one that ended meanwhile is no longer held by design.
            for task_id in (set(sent) - held) & set(self._inflight):
                logger.warning(
                    "lost the lease on task %s; stopping it", task_id, extra={"task_id": task_id}
                )
                self._inflight[task_id].cancel()

    async def _watch_cancellations(self) -> None:
        """Stop running tasks whose cancellation was requested (``POST /task/{id}/cancel``).

        Cancelling the pipeline's coroutine cancels the deployment call it awaits; Serve
        passes that on to the replica, whose model stops at its next progress callback.
        The pipeline then records the task as cancelled. A run that has not stopped
        ``CANCEL_GRACE_POLLS`` polls later is finished as cancelled here and abandoned, so a
        cancellation always ends the task and frees its slot.
        """
        loop = asyncio.get_running_loop()
        grace = CANCEL_GRACE_POLLS * self._config.poll_interval_seconds
        while True:
            await asyncio.sleep(self._config.poll_interval_seconds)
            running = [t for t, task in self._inflight.items() if not task.done()]
            if not running:
                continue
            try:
                wanted = await asyncio.to_thread(
                    repository.cancel_requested, self._db, task_ids=running
                )
            except Exception:
                logger.exception("checking cancellations failed")
                continue
            now = loop.time()
            for task_id in wanted:
                first = self._stopping.setdefault(task_id, now)
                if first == now:
                    logger.info("cancelling task %s", task_id, extra={"task_id": task_id})
                    self._inflight[task_id].cancel()
                elif now - first > grace:
                    await self._abandon(task_id)

    async def _abandon(self, task_id: str) -> None:
        logger.warning(
            "task %s did not stop after its cancellation; recording it cancelled",
            task_id,
            extra={"task_id": task_id},
        )
        running = self._inflight.pop(task_id, None)
        self._stopping.pop(task_id, None)
        if running is not None:
            running.cancel()
        try:
            if await self._progress.finish(task_id, TaskStatus.cancelled):
                row = await asyncio.to_thread(repository.get_task, self._db, task_id=task_id)
                if row is not None:
                    metrics.record_finished(row.task_type, TaskStatus.cancelled.value)
        except Exception:
            logger.exception("recording cancellation of %s failed", task_id)
        self._wake.set()

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
                await self._progress.finish(
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
                    audio_path=Path(row.audio_path) if row.audio_path else None,
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
        except Exception:
            # Even recording the failure failed (the pipeline retries outcome writes): the
            # lease runs out and the task is claimed again, not left `processing` forever.
            logger.exception("task %s could not be finished", task_id, extra={"task_id": task_id})
        finally:
            self._inflight.pop(task_id, None)
            self._stopping.pop(task_id, None)
            metrics.record_in_flight(len(self._inflight))
            self._wake.set()
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
        error_code=outcome.error.code if outcome.error else None,
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
