"""One task's path through the model deployments: decode → ASR → alignment → diarization.

Plain orchestration over typed clients (no Ray import), so it is unit-tested with fakes.
Word timestamps: wav2vec2 forced alignment when an aligner exists for the language;
otherwise Whisper's own cross-attention timings, and the transcript says which it is.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.errors import as_service_error
from common.schemas import (
    AlignRequest,
    AsrRequest,
    DiarizeRequest,
    TaskError,
    TaskParams,
    TaskProgressStage,
    TaskStatus,
    Timings,
    Transcript,
)
from deployments.clients import AlignClient, AsrClient, DiarizeClient, ProgressSink

logger = logging.getLogger(__name__)

Decoder = Callable[[Path], np.ndarray]
DurationSink = Callable[[str, float], Awaitable[None]]
SAMPLE_RATE = 16_000


@dataclass
class TaskInput:
    task_id: str
    audio_path: Path
    params: TaskParams
    attempt: int = 1
    queued_seconds: float | None = None


@dataclass
class TaskOutcome:
    status: TaskStatus
    duration_s: float | None
    error: TaskError | None = None


class TaskPipeline:
    def __init__(
        self,
        *,
        asr: AsrClient,
        align: AlignClient,
        diarize: DiarizeClient,
        progress: ProgressSink,
        decode: Decoder,
        default_language: str | None = None,
        record_duration: DurationSink | None = None,
    ) -> None:
        self._asr, self._align, self._diarize = asr, align, diarize
        self._progress = progress
        self._decode = decode
        self._default_language = default_language
        self._record_duration = record_duration

    async def run(self, task: TaskInput) -> TaskOutcome:
        timings = Timings(queued=task.queued_seconds)
        started = time.perf_counter()
        duration: float | None = None
        try:
            await self._progress.start(task.task_id, task.params.stages(), task.attempt)
            t0 = time.perf_counter()
            audio = await asyncio.to_thread(self._decode, task.audio_path)
            timings.decode = round(time.perf_counter() - t0, 3)
            duration = round(len(audio) / SAMPLE_RATE, 3)
            if self._record_duration is not None:  # before the result is published
                await self._record_duration(task.task_id, duration)
            transcript = await self._process(task, audio, timings)
            timings.total = round(time.perf_counter() - started, 3)
            await self._progress.finish(
                task.task_id, TaskStatus.completed, result=transcript, timings=timings
            )
            return TaskOutcome(TaskStatus.completed, duration)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # every failure becomes a failed task with a clear error
            err = as_service_error(exc)
            if err.status_code >= 500:
                logger.error("task failed: %s", err, extra={"task_id": task.task_id}, exc_info=exc)
            else:
                logger.warning("task rejected: %s", err, extra={"task_id": task.task_id})
            error = TaskError.from_exception(err)
            timings.total = round(time.perf_counter() - started, 3)
            await self._progress.finish(
                task.task_id, TaskStatus.failed, error=error, timings=timings
            )
            return TaskOutcome(TaskStatus.failed, duration, error)

    async def _process(self, task: TaskInput, audio: np.ndarray, timings: Timings) -> Transcript:
        params, task_id = task.params, task.task_id
        language = params.asr.language or self._default_language
        can_align: bool | None = None
        if params.align and language:
            can_align = await self._align.supports(language)

        t0 = time.perf_counter()
        transcript = await self._asr.transcribe(
            audio,
            AsrRequest(task_id=task_id, options=params.asr, word_timestamps=can_align is False),
        )
        timings.transcribing = round(time.perf_counter() - t0, 3)

        if params.align:
            t0 = time.perf_counter()
            if can_align is None:
                can_align = await self._align.supports(transcript.language)
            if can_align:
                await self._progress.enter_stage(task_id, TaskProgressStage.aligning)
                transcript = await self._align.align(
                    audio, AlignRequest(task_id=task_id, transcript=transcript)
                )
            else:
                await self._progress.enter_stage(
                    task_id,
                    TaskProgressStage.aligning,
                    f"No wav2vec2 aligner for '{transcript.language}': word times from Whisper",
                )
                if transcript.word_timestamps is None:
                    transcript = await self._asr.add_word_timestamps(audio, transcript)
            timings.aligning = round(time.perf_counter() - t0, 3)

        if params.diarize:
            t0 = time.perf_counter()
            await self._progress.enter_stage(task_id, TaskProgressStage.diarizing)
            transcript = await self._diarize.diarize(
                audio,
                DiarizeRequest(
                    task_id=task_id,
                    transcript=transcript,
                    num_speakers=params.num_speakers,
                    min_speakers=params.min_speakers,
                    max_speakers=params.max_speakers,
                ),
            )
            timings.diarizing = round(time.perf_counter() - t0, 3)
        return transcript
