"""One task's path through the model deployments: decode → ASR → alignment → diarization.

Plain orchestration over typed clients (no Ray import), so it is unit-tested with fakes.
Word timestamps: wav2vec2 forced alignment when an aligner exists for the language;
otherwise Whisper's own cross-attention timings, and the transcript says which it is.

The pipeline writes no task state itself: it reports progress to a ``ProgressSink`` and
hands the outcome to an ``OutcomeSink`` (the TaskRunner, the one owner of the lifecycle).
A user's cancel arrives as asyncio cancellation of ``run``; the runner says whether a
cancellation was the user's (``cancelled_by_user``) or its own stop (lost lease, shutdown).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from common.errors import OutcomeNotRecordedError, as_service_error, is_replica_failure
from common.logs import current_request_id
from common.retry import Retry, call_with_retry, instances_of
from common.schemas import (
    AlignRequest,
    AsrRequest,
    DiarizeRequest,
    SpeakerTurn,
    TaskError,
    TaskParams,
    TaskProgressStage,
    TaskStatus,
    TaskType,
    Timings,
    Transcript,
    TranscriptWarning,
    WarningCode,
)
from deployments.audio import AudioRef, DecodedAudio
from deployments.clients import (
    Aligner,
    Diarizer,
    OutcomeSink,
    OutcomeWriteError,
    ProgressSink,
    Transcriber,
)
from deployments.model_stream import ProgressFn

logger = logging.getLogger(__name__)

Decoder = Callable[[str], Awaitable[DecodedAudio]]
"""Blob key → the decoded samples (by reference) and their duration."""
DurationSink = Callable[[str, float], Awaitable[None]]
CancelledByUser = Callable[[str], bool]
ReplicaCount = Callable[[str], Awaitable[int | None]]
"""Running replicas of a model deployment, by its stage's name (``"diarization"``);
``None``: not known."""
T = TypeVar("T")
_NO_ALIGNER = "No wav2vec2 aligner for '{language}': word times from Whisper"


class TaskCancelled(Exception):
    """Raised at a safe point (between stages) when the user's cancel is known but the
    asyncio cancellation that carries it was swallowed on the way (defence in depth)."""


class OutcomeWriteFailed(Exception):
    """Recording a task's outcome failed on every attempt (the cause is chained)."""


@dataclass
class TaskInput:
    task_id: str
    audio_key: str | None
    """The audio's key in the blob store; ``None`` for tasks given JSON only."""
    params: TaskParams
    task_type: TaskType = TaskType.speech_to_text
    inputs: dict[str, Any] | None = None
    attempt: int = 1
    queued_seconds: float | None = None


@dataclass
class TaskOutcome:
    status: TaskStatus
    duration_s: float | None
    error: TaskError | None = None
    timings: Timings | None = None


class TaskPipeline:
    def __init__(
        self,
        *,
        asr: Transcriber,
        align: Aligner,
        diarize: Diarizer,
        progress: ProgressSink,
        outcomes: OutcomeSink,
        decode: Decoder,
        default_language: str | None = None,
        model_languages: dict[str, str | None] | None = None,
        record_duration: DurationSink | None = None,
        stage_retries: int = 2,
        stage_retry_backoff_s: float = 1.0,
        record_attempts: int = 4,
        record_backoff_s: float = 0.5,
        cancelled_by_user: CancelledByUser | None = None,
        running_replicas: ReplicaCount | None = None,
        replica_check_after_s: float = 1.0,
        diarize_alongside: bool = True,
    ) -> None:
        self._asr, self._align, self._diarize = asr, align, diarize
        self._diarize_alongside = diarize_alongside
        self._running_replicas = running_replicas
        self._replica_check_after = replica_check_after_s
        self._progress = progress
        self._outcomes = outcomes
        self._decode = decode
        self._default_language = default_language
        self._model_languages = model_languages or {}
        self._record_duration = record_duration
        self._stage_retries = stage_retries
        self._retry_backoff = stage_retry_backoff_s
        self._record_attempts = max(1, record_attempts)
        self._record_backoff = record_backoff_s
        self._cancelled_by_user = cancelled_by_user

    async def run(self, task: TaskInput) -> TaskOutcome:
        timings = Timings(queued=task.queued_seconds)
        started = time.perf_counter()
        duration: float | None = None
        transcript: Transcript | None = None
        error: TaskError | None = None
        try:
            stages = task.params.stages(task.task_type)
            await self._progress.start(task.task_id, stages, task.attempt)
            audio: AudioRef = np.zeros(0, dtype=np.float32)
            if task.audio_key is not None:
                t0 = time.perf_counter()
                decoded = await self._decode(task.audio_key)
                audio = decoded.audio  # passed on as it is: every stage reads the same object
                timings.decode = round(time.perf_counter() - t0, 3)
                duration = round(decoded.duration_s, 3)
                if self._record_duration is not None:  # before the result is published
                    await self._record_duration(task.task_id, duration)
            transcript = await self._process(task, audio, timings)
            status = TaskStatus.completed
        except (asyncio.CancelledError, TaskCancelled) as exc:
            if isinstance(exc, asyncio.CancelledError) and not self._user_cancelled(task):
                raise  # the runner stopped the task (lost lease, shutdown): not the user's cancel
            logger.info("task cancelled", extra={"task_id": task.task_id})
            status = TaskStatus.cancelled
        except Exception as exc:  # every failure becomes a failed task with a clear error
            err = as_service_error(exc)
            if err.status_code >= 500:
                logger.error("task failed: %s", err, extra={"task_id": task.task_id}, exc_info=exc)
            else:
                logger.warning("task rejected: %s", err, extra={"task_id": task.task_id})
            error = TaskError.from_exception(err)
            status = TaskStatus.failed
        timings.total = round(time.perf_counter() - started, 3)
        return await self._record(task, status, duration, timings, transcript, error)

    async def _record(
        self,
        task: TaskInput,
        status: TaskStatus,
        duration: float | None,
        timings: Timings,
        result: Transcript | None,
        error: TaskError | None,
    ) -> TaskOutcome:
        """Record the outcome, retrying the write (not the task) when it fails. A write that
        keeps failing ends the task ``failed`` with ``outcome_not_recorded``; if even that
        cannot be written, the error goes to the runner and the task's lease runs out."""
        try:
            await self._finish(task, status, result=result, error=error, timings=timings)
            return TaskOutcome(status, duration, error, timings)
        except OutcomeWriteFailed as failed:
            cause = failed.__cause__ or failed
            if isinstance(cause, OutcomeWriteError) and cause.__cause__ is not None:
                cause = cause.__cause__  # what the sink met (the database's own error)
            err = OutcomeNotRecordedError(
                "The task finished but its outcome could not be saved. Please submit it again.",
                f"recording '{status.value}' failed {self._record_attempts} times: "
                f"{type(cause).__name__}: {cause}",
            )
            logger.error("%s", err, extra={"task_id": task.task_id}, exc_info=cause)
            error = TaskError.from_exception(err)
            await self._finish(task, TaskStatus.failed, error=error, timings=timings)
            return TaskOutcome(TaskStatus.failed, duration, error, timings)

    async def _finish(
        self,
        task: TaskInput,
        status: TaskStatus,
        *,
        result: Transcript | None = None,
        error: TaskError | None = None,
        timings: Timings | None = None,
    ) -> None:
        """``outcomes.finish`` with bounded retries; ``OutcomeWriteFailed`` after the last.
        A repeated write is harmless: an already finished task is left as it is."""

        def retrying(attempt: int, exc: Exception, delay: float) -> None:
            logger.warning(
                "recording task %s as %s failed (attempt %d of %d); retrying in %.1fs",
                task.task_id,
                status.value,
                attempt,
                self._record_attempts,
                delay,
                extra={"task_id": task.task_id},
                exc_info=exc,
            )

        try:
            await call_with_retry(
                lambda: self._outcomes.finish(
                    task.task_id, status, result=result, error=error, timings=timings
                ),
                Retry(
                    instances_of(OutcomeWriteError),  # the database did not take it
                    attempts=self._record_attempts,
                    first_delay_s=self._record_backoff,
                ),
                on_retry=retrying,
            )
        except OutcomeWriteError as exc:
            raise OutcomeWriteFailed(task.task_id) from exc

    def _user_cancelled(self, task: TaskInput) -> bool:
        """Whether a cancellation of the run came from the user's cancel: the runner says so
        from memory (no database read), so a database hiccup never turns a user's cancel
        into a runner stop, nor a runner stop into a cancel."""
        return self._cancelled_by_user is not None and self._cancelled_by_user(task.task_id)

    def _fixed_language(self, model: str | None) -> str | None:
        """The language a model always transcribes (``asr.language``, or English for an
        English-only model), known before ASR runs; None when it detects per file.

        ``model_languages`` covers the models a request may name besides the default: a
        multilingual one must not inherit English from an English-only default."""
        if model is not None and model in self._model_languages:
            return self._model_languages[model]
        return self._default_language

    async def _checkpoint(self, task: TaskInput) -> None:
        """A safe point between stages: stop if the user's cancel is known but its asyncio
        cancellation did not arrive (swallowed by a library). Memory only, no I/O."""
        if self._user_cancelled(task):
            raise TaskCancelled(task.task_id)

    async def _process(self, task: TaskInput, audio: AudioRef, timings: Timings) -> Transcript:
        await self._checkpoint(task)
        if task.task_type is TaskType.align:
            return await self._align_given(task, audio, timings)
        if task.task_type is TaskType.combine:
            return await self._combine(task)
        if task.task_type is TaskType.diarize:
            return await self._diarize_stage(task, audio, None, timings, enter=False)

        params = task.params
        if not params.diarize:
            return await self._transcribe_align(task, audio, timings)
        if not self._diarize_alongside:
            transcript = await self._transcribe_align(task, audio, timings)
            await self._checkpoint(task)
            return await self._diarize_stage(task, audio, transcript, timings, enter=True)
        return await self._diarize_alongside_asr(task, audio, timings)

    async def _diarize_alongside_asr(
        self, task: TaskInput, audio: AudioRef, timings: Timings
    ) -> Transcript:
        """Diarization needs no words until speakers are assigned: it runs on its own
        replica while ASR and alignment run, and the words are labelled when both are done.
        Progress stays in stage order: the diarizing stage is entered once the words are
        ready, and shows how far the diarization already is from its next report. Either
        side failing stops the other."""
        turns = asyncio.ensure_future(self._diarize_stage(task, audio, None, timings, enter=False))
        words = asyncio.ensure_future(self._transcribe_align(task, audio, timings))
        try:
            while not words.done():
                await asyncio.wait({words, turns}, return_when=asyncio.FIRST_COMPLETED)
                if turns.done():
                    turns.result()  # a diarization failure fails the task now, not after ASR
            transcript = words.result()
            await self._checkpoint(task)
            await self._progress.enter_stage(task.task_id, TaskProgressStage.diarizing)
            found = (await turns).speaker_turns or []
            return await self._call(
                task, "diarization", lambda: self._diarize.assign(transcript, found)
            )
        finally:
            pending = [f for f in (words, turns) if not f.done()]
            for f in pending:
                f.cancel()
            if pending:
                await asyncio.wait(pending)

    async def _transcribe_align(
        self, task: TaskInput, audio: AudioRef, timings: Timings
    ) -> Transcript:
        params, task_id = task.params, task.task_id
        language = params.asr.language or self._fixed_language(params.asr.model)
        can_align: bool | None = None
        if params.align and language:
            can_align = await self._call(task, "alignment", lambda: self._align.supports(language))

        t0 = time.perf_counter()
        asr_request = AsrRequest(
            request_id=current_request_id(),
            options=params.asr,
            word_timestamps=can_align is False,
        )
        transcribing = self._reporter(task, TaskProgressStage.transcribing)
        transcript = await self._call(
            task,
            "transcription",
            lambda: self._asr.transcribe(audio, asr_request, progress=transcribing),
        )
        timings.transcribing = round(time.perf_counter() - t0, 3)

        if params.align:
            await self._checkpoint(task)
            t0 = time.perf_counter()
            if can_align is None:
                detected = transcript.language or ""
                can_align = await self._call(
                    task, "alignment", lambda: self._align.supports(detected)
                )
            aligning = self._reporter(task, TaskProgressStage.aligning)
            if can_align:
                await self._progress.enter_stage(task_id, TaskProgressStage.aligning)
                align_request = AlignRequest(
                    request_id=current_request_id(),
                    transcript=transcript,
                    options=params.alignment,
                )
                transcript = await self._call(
                    task,
                    "alignment",
                    lambda: self._align.align(audio, align_request, progress=aligning),
                )
            else:
                message = _NO_ALIGNER.format(language=transcript.language)
                await self._progress.enter_stage(task_id, TaskProgressStage.aligning, message)
                if transcript.word_timestamps is None:
                    plain = transcript
                    transcript = await self._call(
                        task,
                        "word timing",
                        lambda: self._asr.add_word_timestamps(
                            audio,
                            plain,
                            params.asr,
                            request_id=current_request_id(),
                            progress=aligning,
                        ),
                    )
                transcript = _warn(transcript, "no_aligner", message)
            timings.aligning = round(time.perf_counter() - t0, 3)
        return transcript

    async def _diarize_stage(
        self,
        task: TaskInput,
        audio: AudioRef,
        transcript: Transcript | None,
        timings: Timings,
        *,
        enter: bool,
    ) -> Transcript:
        params = task.params
        t0 = time.perf_counter()
        if enter:
            await self._progress.enter_stage(task.task_id, TaskProgressStage.diarizing)
        request = DiarizeRequest(
            request_id=current_request_id(),
            transcript=transcript,
            num_speakers=params.num_speakers,
            min_speakers=params.min_speakers,
            max_speakers=params.max_speakers,
        )
        diarizing = self._reporter(task, TaskProgressStage.diarizing)
        result = await self._call(
            task,
            "diarization",
            lambda: self._diarize.diarize(audio, request, progress=diarizing),
        )
        timings.diarizing = round(time.perf_counter() - t0, 3)
        return result

    async def _align_given(self, task: TaskInput, audio: AudioRef, timings: Timings) -> Transcript:
        """``/service/align``: wav2vec2 alignment of a client's transcript, or Whisper's own
        word timings when no aligner serves its language (the result says which)."""
        transcript = _given_transcript(task)
        t0 = time.perf_counter()
        language = transcript.language or self._fixed_language(task.params.asr.model) or "en"
        transcript = transcript.model_copy(update={"language": language})
        aligning = self._reporter(task, TaskProgressStage.aligning)
        if await self._call(task, "alignment", lambda: self._align.supports(language)):
            request = AlignRequest(
                request_id=current_request_id(),
                transcript=transcript,
                options=task.params.alignment,
            )
            transcript = await self._call(
                task, "alignment", lambda: self._align.align(audio, request, progress=aligning)
            )
        else:
            given = transcript
            transcript = await self._call(
                task,
                "word timing",
                lambda: self._asr.add_word_timestamps(
                    audio,
                    given,
                    task.params.asr,
                    request_id=current_request_id(),
                    progress=aligning,
                ),
            )
            message = _NO_ALIGNER.format(language=language)
            transcript = _warn(transcript, "no_aligner", message)
        timings.aligning = round(time.perf_counter() - t0, 3)
        return transcript

    async def _combine(self, task: TaskInput) -> Transcript:
        """``/service/combine``: speaker labels from given diarization turns onto given words."""
        transcript = _given_transcript(task)
        turns = [
            SpeakerTurn.model_validate(t) for t in (task.inputs or {}).get("speaker_turns", [])
        ]
        return await self._call(
            task, "diarization", lambda: self._diarize.assign(transcript, turns)
        )

    def _reporter(self, task: TaskInput, stage: TaskProgressStage) -> ProgressFn:
        """The ``progress`` a model client calls with ``stage``'s own 0-100 percentage: sent
        to the tracker; a failed report is logged and never fails the stage."""

        async def report(percentage: float) -> None:
            try:
                await self._progress.report(task.task_id, stage, percentage)
            except Exception:
                logger.warning(
                    "progress report failed", extra={"task_id": task.task_id}, exc_info=True
                )

        return report

    async def _call(self, task: TaskInput, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """One model-deployment call, sent again (up to ``stage_retries`` times, after a
        doubling backoff while Serve replaces the replica) when the replica serving it died:
        Serve does not retry in-flight requests. Any other failure is raised at once, and
        the last replica failure becomes the task's ``processing_failed``."""

        async def attempt() -> T:
            await self._checkpoint(task)  # a retry never starts after the user's cancel
            return await call()

        async def retrying(retry: int, exc: Exception, delay: float) -> None:
            logger.warning(
                "%s replica stopped under task %s (%s); retry %d of %d in %.1fs",
                what,
                task.task_id,
                type(exc).__name__,
                retry,
                self._stage_retries,
                delay,
                extra={"task_id": task.task_id},
                exc_info=exc,
            )
            await self._progress.note(
                task.task_id,
                f"{what.capitalize()} restarted: its model replica stopped "
                f"(retry {retry} of {self._stage_retries})",
            )

        policy = Retry(
            is_replica_failure, attempts=self._stage_retries + 1, first_delay_s=self._retry_backoff
        )
        watch = asyncio.create_task(self._note_cold_start(task, what))
        try:
            return await call_with_retry(attempt, policy, on_retry=retrying)
        finally:
            watch.cancel()

    async def _note_cold_start(self, task: TaskInput, what: str) -> None:
        """A stage still waiting after ``replica_check_after_s`` on a deployment with no
        running replica (scaled to zero, or its replica being replaced) says so in the
        task's progress, and again once a replica runs, with how long it took to start."""
        if self._running_replicas is None:
            return
        await asyncio.sleep(self._replica_check_after)
        try:
            if await self._running_replicas(what) != 0:
                return
            started = time.monotonic()
            await self._progress.note(
                task.task_id,
                f"Waiting for a {what} replica to start (it loads its model first)",
            )
            while await self._running_replicas(what) == 0:
                await asyncio.sleep(0.5)
            await self._progress.note(
                task.task_id,
                f"{what.capitalize()} replica started in {time.monotonic() - started:.1f} s",
            )
        except Exception:  # a note is never worth failing the stage for
            logger.warning(
                "cold start check failed", extra={"task_id": task.task_id}, exc_info=True
            )


def _warn(transcript: Transcript, code: WarningCode, message: str) -> Transcript:
    warning = TranscriptWarning(code=code, message=message)
    return transcript.model_copy(update={"warnings": [*transcript.warnings, warning]})


def _given_transcript(task: TaskInput) -> Transcript:
    return Transcript.model_validate((task.inputs or {}).get("transcript", {}))
