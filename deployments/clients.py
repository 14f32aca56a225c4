"""Typed wrappers over DeploymentHandles and the tracker actor handle.

The orchestration code talks to these, never to raw handles, so the call contracts are
checked by mypy and unit tests can pass fakes with the same methods. The model clients
hide the deployments' streams (``deployments.model_stream``): they return the result and
await ``progress(percentage)`` for each progress item; cancelling the awaiting coroutine
closes the stream, which stops the model's work.
"""

from __future__ import annotations

from typing import Any, Protocol

from common.schemas import (
    AlignRequest,
    AsrOptions,
    AsrRequest,
    DiarizeRequest,
    SpeakerTurn,
    TaskError,
    TaskProgressStage,
    TaskSnapshot,
    TaskStatus,
    Timings,
    Transcript,
)
from deployments.audio import AudioRef
from deployments.model_stream import ProgressFn, collect
from deployments.progress_state import Event


class AsrClient:
    """Whisper: ``transcribe`` and ``add_word_timestamps`` stream progress to ``progress``."""

    def __init__(self, handle: Any) -> None:
        self._stream = handle.options(stream=True)

    async def transcribe(
        self, audio: AudioRef, req: AsrRequest, *, progress: ProgressFn | None = None
    ) -> Transcript:
        return await collect(self._stream.transcribe.remote(audio, req), Transcript, progress)

    async def add_word_timestamps(
        self,
        audio: AudioRef,
        transcript: Transcript,
        options: AsrOptions | None = None,
        *,
        request_id: str | None = None,
        progress: ProgressFn | None = None,
    ) -> Transcript:
        stream = self._stream.add_word_timestamps.remote(audio, transcript, options, request_id)
        return await collect(stream, Transcript, progress)


class AlignClient:
    """wav2vec2 alignment. ``languages``: all the deployment could serve (see
    ``AlignConfig.candidate_languages``); others are answered here, without a call."""

    def __init__(self, handle: Any, *, languages: frozenset[str] | None = None) -> None:
        self._handle = handle
        self._stream = handle.options(stream=True)
        self._languages = languages

    async def supports(self, language: str) -> bool:
        if self._languages is not None and language.lower() not in self._languages:
            return False
        return bool(await self._handle.supports.remote(language))

    async def align(
        self, audio: AudioRef, req: AlignRequest, *, progress: ProgressFn | None = None
    ) -> Transcript:
        return await collect(self._stream.align.remote(audio, req), Transcript, progress)


class DiarizeClient:
    def __init__(self, handle: Any) -> None:
        self._handle = handle
        self._stream = handle.options(stream=True)

    async def diarize(
        self, audio: AudioRef, req: DiarizeRequest, *, progress: ProgressFn | None = None
    ) -> Transcript:
        return await collect(self._stream.diarize.remote(audio, req), Transcript, progress)

    async def assign(self, transcript: Transcript, turns: list[SpeakerTurn]) -> Transcript:
        result: Transcript = await self._handle.assign.remote(transcript, turns)
        return result


# ---------------------------------------------------------------- what the pipeline needs
# One Protocol per boundary of ``TaskPipeline``: the clients above (and ``ProgressClient``)
# satisfy them in production, in-process fakes in the unit tests.


class Transcriber(Protocol):
    """The ASR deployment, as the pipeline calls it; ``AsrClient`` or a test fake."""

    async def transcribe(
        self, audio: AudioRef, req: AsrRequest, *, progress: ProgressFn | None = None
    ) -> Transcript: ...
    async def add_word_timestamps(
        self,
        audio: AudioRef,
        transcript: Transcript,
        options: AsrOptions | None = None,
        *,
        request_id: str | None = None,
        progress: ProgressFn | None = None,
    ) -> Transcript: ...


class Aligner(Protocol):
    """The alignment deployment; ``AlignClient`` or a test fake."""

    async def supports(self, language: str) -> bool: ...
    async def align(
        self, audio: AudioRef, req: AlignRequest, *, progress: ProgressFn | None = None
    ) -> Transcript: ...


class Diarizer(Protocol):
    """The diarization deployment; ``DiarizeClient`` or a test fake."""

    async def diarize(
        self, audio: AudioRef, req: DiarizeRequest, *, progress: ProgressFn | None = None
    ) -> Transcript: ...
    async def assign(self, transcript: Transcript, turns: list[SpeakerTurn]) -> Transcript: ...


class ProgressSink(Protocol):
    """What the pipeline needs from the tracker; ``ProgressClient`` or a test fake."""

    async def start(self, task_id: str, stages: list[TaskProgressStage], attempt: int) -> None: ...
    async def enter_stage(
        self, task_id: str, stage: TaskProgressStage, message: str = ""
    ) -> None: ...
    async def note(self, task_id: str, message: str) -> None: ...
    async def report(self, task_id: str, stage: TaskProgressStage, percentage: float) -> None: ...


class OutcomeWriteError(Exception):
    """An ``OutcomeSink`` could not write the outcome (its database did not answer or
    refused); the same write may be tried again. The cause is chained."""


class OutcomeSink(Protocol):
    """Where the pipeline records how a task ended: the TaskRunner, which writes the
    transition (``storage.lifecycle``) and then has the tracker publish it; or a fake."""

    async def finish(
        self,
        task_id: str,
        status: TaskStatus,
        *,
        result: Transcript | None = None,
        error: TaskError | None = None,
        timings: Timings | None = None,
    ) -> bool:
        """Write the task's final state, then publish it; False if it was already final
        (or its run lost the task). Raises ``OutcomeWriteError`` when the write failed."""
        ...


class ProgressClient:
    """Typed access to the ProgressTracker actor."""

    def __init__(self, actor: Any) -> None:
        self._actor = actor

    async def start(self, task_id: str, stages: list[TaskProgressStage], attempt: int) -> None:
        await self._actor.start.remote(task_id, [s.value for s in stages], attempt)

    async def enter_stage(self, task_id: str, stage: TaskProgressStage, message: str = "") -> None:
        await self._actor.enter_stage.remote(task_id, stage.value, message)

    async def note(self, task_id: str, message: str) -> None:
        await self._actor.note.remote(task_id, message)

    async def report(self, task_id: str, stage: TaskProgressStage, percentage: float) -> None:
        """A running stage's own 0-100 percentage (the tracker keeps it monotonic)."""
        await self._actor.report.remote(task_id, stage.value, percentage)

    async def finished(
        self, task_id: str, status: TaskStatus, error: TaskError | None = None
    ) -> None:
        """Publish the terminal event; the runner has written the row."""
        await self._actor.finished.remote(task_id, status.value, error)

    async def request_cancel(self, task_id: str) -> None:
        """Signal the runner replica holding ``task_id`` (its ``wait_cancelled`` returns)."""
        await self._actor.request_cancel.remote(task_id)

    async def wait_cancelled(self, task_id: str, timeout_s: float) -> bool:
        """True once ``task_id``'s cancellation is requested; False when it finished first
        or ``timeout_s`` passed."""
        return bool(await self._actor.wait_cancelled.remote(task_id, timeout_s))

    async def snapshot(self, task_id: str) -> TaskSnapshot | None:
        snap: TaskSnapshot | None = await self._actor.snapshot.remote(task_id)
        return snap

    async def events_after(
        self, task_id: str, after_seq: int, timeout_s: float
    ) -> list[Event] | None:
        events: list[Event] | None = await self._actor.events_after.remote(
            task_id, after_seq, timeout_s
        )
        return events

    async def ping(self) -> bool:
        return bool(await self._actor.ping.remote())

    async def forget(self, task_id: str) -> None:
        await self._actor.forget.remote(task_id)


class RunnerClient:
    def __init__(self, handle: Any) -> None:
        self._handle = handle

    def notify(self) -> None:
        """Wake the runner to claim new work now (fire and forget)."""
        self._handle.notify.remote()

    async def cancel(self, task_id: str) -> TaskStatus | None:
        """A user's cancel, taken by one runner replica: a queued task ends ``cancelled``
        now, a running one is stopped by the replica that holds it. Returns the task's
        status afterwards (``None``: unknown task)."""
        status: TaskStatus | None = await self._handle.cancel.remote(task_id)
        return status
