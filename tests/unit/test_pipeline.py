"""TaskPipeline orchestration with fake model clients (no Ray, no models)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from common.errors import InvalidAudioError, ProcessingError
from common.schemas import (
    AlignRequest,
    AsrOptions,
    AsrRequest,
    DiarizeRequest,
    Segment,
    SpeakerTurn,
    TaskError,
    TaskParams,
    TaskProgressStage,
    TaskStatus,
    TaskType,
    Timings,
    Transcript,
    Word,
)
from deployments.audio import DecodedAudio
from deployments.clients import OutcomeWriteError
from deployments.model_stream import ProgressFn
from deployments.pipeline import TaskInput, TaskPipeline

AUDIO = np.zeros(16_000 * 2, dtype=np.float32)


async def fixed_decode(key: str) -> DecodedAudio:
    """The fakes get a plain ndarray where production passes an ObjectRef."""
    return DecodedAudio(audio=AUDIO, duration_s=AUDIO.size / 16_000)


class FakeAsr:
    def __init__(self) -> None:
        self.requests: list[AsrRequest] = []
        self.word_calls = 0
        self.language = "en"  # what the model "detects"
        self.while_running: Callable[[], object] | None = None
        """Called during each transcription (a test's stand-in for what happens meanwhile)."""

    async def transcribe(
        self, audio: np.ndarray, req: AsrRequest, *, progress: ProgressFn | None = None
    ) -> Transcript:
        self.requests.append(req)
        await _report(progress, 50.0, 100.0)
        t = Transcript(
            language=self.language, segments=[Segment(start=0, end=2, text=" hello world")]
        )
        return self._words(t) if req.word_timestamps else t

    async def add_word_timestamps(
        self,
        audio: np.ndarray,
        transcript: Transcript,
        options: AsrOptions | None = None,
        *,
        request_id: str | None = None,
        progress: ProgressFn | None = None,
    ) -> Transcript:
        self.word_calls += 1
        await _report(progress, 100.0)
        return self._words(transcript)

    @staticmethod
    def _words(t: Transcript) -> Transcript:
        seg = t.segments[0].model_copy(update={"words": [Word(word="hello", start=0, end=1)]})
        return t.model_copy(update={"segments": [seg], "word_timestamps": "whisper"})


class FakeAlign:
    def __init__(self, supported: set[str]) -> None:
        self.supported = supported
        self.calls = 0

    async def supports(self, language: str) -> bool:
        return language in self.supported

    async def align(
        self, audio: np.ndarray, req: AlignRequest, *, progress: ProgressFn | None = None
    ) -> Transcript:
        self.calls += 1
        await _report(progress, 100.0)
        return req.transcript.model_copy(
            update={"word_timestamps": "wav2vec2", "alignment_model": "fake"}
        )


class FakeDiarize:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.requests: list[DiarizeRequest] = []
        self.assigned: list[list[SpeakerTurn]] = []
        self.block: asyncio.Event | None = None

    async def diarize(
        self, audio: np.ndarray, req: DiarizeRequest, *, progress: ProgressFn | None = None
    ) -> Transcript:
        self.requests.append(req)
        await _report(progress, 10.0)
        if self.fail:
            raise RuntimeError("boom")
        if self.block is not None:
            await self.block.wait()
        turns = [SpeakerTurn(start=0, end=2, speaker="SPEAKER_00")]
        base = req.transcript or Transcript()
        return base.model_copy(update={"speakers": ["SPEAKER_00"], "speaker_turns": turns})

    async def assign(self, transcript: Transcript, turns: list[SpeakerTurn]) -> Transcript:
        self.assigned.append(turns)
        segments = [s.model_copy(update={"speaker": turns[0].speaker}) for s in transcript.segments]
        speakers = sorted({t.speaker for t in turns})
        return transcript.model_copy(
            update={"segments": segments, "speaker_turns": turns, "speakers": speakers}
        )


async def _report(progress: ProgressFn | None, *percentages: float) -> None:
    for pct in percentages:
        if progress is not None:
            await progress(pct)


class FakeProgress:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.reports: list[tuple[TaskProgressStage, float]] = []
        self.result: Transcript | None = None
        self.error: TaskError | None = None

    async def start(self, task_id: str, stages: list[TaskProgressStage], attempt: int) -> None:
        self.calls.append(("start", tuple(stages)))

    async def enter_stage(self, task_id: str, stage: TaskProgressStage, message: str = "") -> None:
        self.calls.append(("stage", stage, message))

    async def note(self, task_id: str, message: str) -> None:
        self.calls.append(("note", message))

    async def report(self, task_id: str, stage: TaskProgressStage, percentage: float) -> None:
        self.reports.append((stage, percentage))

    async def finish(
        self,
        task_id: str,
        status: TaskStatus,
        *,
        result: Transcript | None = None,
        error: TaskError | None = None,
        timings: Timings | None = None,
    ) -> bool:
        self.calls.append(("finish", status))
        self.result, self.error = result, error
        return True


def pipeline_of(**overrides: Any) -> TaskPipeline:
    """A pipeline on fakes: English, no waits between retries; ``progress`` doubles as the
    outcome sink unless ``outcomes`` is given."""
    progress = overrides.pop("progress", None) or FakeProgress()
    options: dict[str, Any] = {
        "asr": FakeAsr(),
        "align": FakeAlign({"en"}),
        "diarize": FakeDiarize(),
        "progress": progress,
        "outcomes": progress,
        "decode": fixed_decode,
        "default_language": "en",
        "record_backoff_s": 0.0,
        "stage_retry_backoff_s": 0.0,
    }
    return TaskPipeline(**{**options, **overrides})


def make(
    supported: set[str],
    *,
    decode_error: bool = False,
    diarize_fail: bool = False,
    language: str | None = "en",
    cancelled: set[str] | None = None,
    diarize_alongside: bool = True,
) -> tuple[TaskPipeline, FakeAsr, FakeAlign, FakeDiarize, FakeProgress]:
    asr, align, diar, progress = (
        FakeAsr(),
        FakeAlign(supported),
        FakeDiarize(diarize_fail),
        FakeProgress(),
    )

    async def decode(key: str) -> DecodedAudio:
        if decode_error:
            raise InvalidAudioError("The file could not be decoded as audio.", "av: invalid data")
        return await fixed_decode(key)

    pipeline = pipeline_of(
        asr=asr,
        align=align,
        diarize=diar,
        progress=progress,
        decode=decode,
        default_language=language,
        cancelled_by_user=cancelled.__contains__ if cancelled is not None else None,
        diarize_alongside=diarize_alongside,
    )
    return pipeline, asr, align, diar, progress


def task(**params: Any) -> TaskInput:
    return TaskInput(task_id="t1", audio_key="t1.wav", params=TaskParams(**params))


async def test_full_pipeline_with_wav2vec2() -> None:
    pipeline, asr, align, diar, progress = make({"en"})
    outcome = await pipeline.run(task(min_speakers=1, max_speakers=2))
    assert outcome.status is TaskStatus.completed and outcome.duration_s == pytest.approx(2.0)
    assert asr.requests[0].word_timestamps is False and align.calls == 1
    assert progress.result is not None and progress.result.word_timestamps == "wav2vec2"
    assert diar.requests[0].max_speakers == 2
    assert [c[0] for c in progress.calls] == ["start", "stage", "stage", "finish"]


async def test_no_aligner_uses_whisper_words_in_one_asr_pass() -> None:
    pipeline, asr, align, _, progress = make(set())
    await pipeline.run(task())
    assert asr.requests[0].word_timestamps is True and asr.word_calls == 0 and align.calls == 0
    assert progress.result is not None and progress.result.word_timestamps == "whisper"
    stage_msgs = [
        c[2] for c in progress.calls if c[0] == "stage" and c[1] is TaskProgressStage.aligning
    ]
    assert stage_msgs and "Whisper" in stage_msgs[0]
    assert [(w.code, w.message) for w in progress.result.warnings] == [
        ("no_aligner", stage_msgs[0])
    ]


async def test_detected_language_without_aligner_adds_words_after() -> None:
    pipeline, asr, _, _, progress = make(set(), language=None)
    await pipeline.run(task())
    assert asr.requests[0].word_timestamps is False and asr.word_calls == 1
    assert progress.result is not None and progress.result.word_timestamps == "whisper"


async def test_skipped_stages_are_not_entered() -> None:
    pipeline, _, align, diar, progress = make({"en"})
    await pipeline.run(task(align=False, diarize=False))
    assert progress.calls[0] == ("start", (TaskProgressStage.transcribing,))
    assert not [c for c in progress.calls if c[0] == "stage"]
    assert align.calls == 0 and not diar.requests


async def test_bad_audio_fails_task_with_its_code() -> None:
    pipeline, *_, progress = make({"en"}, decode_error=True)
    outcome = await pipeline.run(task())
    assert outcome.status is TaskStatus.failed
    assert progress.error is not None and progress.error.error_code == InvalidAudioError.code


async def test_unknown_failure_becomes_processing_error_without_traceback() -> None:
    pipeline, *_, progress = make({"en"}, diarize_fail=True)
    await pipeline.run(task())
    assert progress.error is not None
    assert progress.error.error_code == ProcessingError.code
    assert "RuntimeError: boom" in progress.error.technical_detail
    assert "\n" not in progress.error.technical_detail


GIVEN = Transcript(language="en", segments=[Segment(start=0, end=2, text="hello world")])


async def test_transcribe_only_task() -> None:
    pipeline, asr, align, diar, progress = make({"en"})
    kind = TaskType.transcribe
    outcome = await pipeline.run(
        TaskInput("t1", "t1.wav", TaskParams(align=False, diarize=False), task_type=kind)
    )
    assert outcome.status is TaskStatus.completed
    assert progress.calls[0] == ("start", (TaskProgressStage.transcribing,))
    assert len(asr.requests) == 1 and align.calls == 0 and not diar.requests


@pytest.mark.parametrize(("supported", "method"), [({"en"}, "wav2vec2"), (set(), "whisper")])
async def test_align_task_aligns_the_given_transcript(supported: set[str], method: str) -> None:
    pipeline, asr, _, diar, progress = make(supported)
    inputs = {"transcript": GIVEN.model_dump(mode="json")}
    await pipeline.run(
        TaskInput(
            "t1", "t1.wav", TaskParams(diarize=False), task_type=TaskType.align, inputs=inputs
        )
    )
    assert progress.calls[0] == ("start", (TaskProgressStage.aligning,))
    assert asr.requests == [] and not diar.requests
    assert progress.result is not None and progress.result.word_timestamps == method


async def test_diarize_task_gives_turns_only() -> None:
    pipeline, asr, _, diar, progress = make({"en"})
    await pipeline.run(
        TaskInput(
            "t1", "t1.wav", TaskParams(align=False, max_speakers=3), task_type=TaskType.diarize
        )
    )
    assert progress.calls[0] == ("start", (TaskProgressStage.diarizing,))
    assert asr.requests == [] and diar.requests[0].transcript is None
    assert diar.requests[0].max_speakers == 3
    assert progress.result is not None and progress.result.segments == []
    assert progress.result.speaker_turns is not None


async def test_combine_task_needs_no_audio() -> None:
    pipeline, asr, _, diar, progress = make({"en"})
    turns = [{"start": 0.0, "end": 2.0, "speaker": "SPEAKER_01"}]
    inputs = {"transcript": GIVEN.model_dump(mode="json"), "speaker_turns": turns}
    outcome = await pipeline.run(
        TaskInput("t1", None, TaskParams(align=False), task_type=TaskType.combine, inputs=inputs)
    )
    assert outcome.status is TaskStatus.completed and outcome.duration_s is None
    assert diar.assigned[0][0].speaker == "SPEAKER_01" and asr.requests == []
    assert progress.result is not None and progress.result.segments[0].speaker == "SPEAKER_01"


@pytest.mark.parametrize("alongside", [True, False])
async def test_cancel_request_stops_at_the_next_stage_boundary(alongside: bool) -> None:
    cancelled: set[str] = set()
    pipeline, asr, align, diar, progress = make(
        {"en"}, cancelled=cancelled, diarize_alongside=alongside
    )
    original = asr.transcribe

    async def transcribe_then_cancel(
        audio: np.ndarray, req: AsrRequest, *, progress: ProgressFn | None = None
    ) -> Transcript:
        cancelled.add("t1")  # the user cancels while transcription runs
        return await original(audio, req, progress=progress)

    asr.transcribe = transcribe_then_cancel  # type: ignore[method-assign]
    outcome = await pipeline.run(task())
    assert outcome.status is TaskStatus.cancelled
    assert align.calls == 0 and not diar.assigned
    assert bool(diar.requests) is alongside  # diarization started beside ASR, or never
    assert progress.calls[-1] == ("finish", TaskStatus.cancelled)


async def test_interrupted_model_call_ends_cancelled_only_when_asked() -> None:
    cancelled: set[str] = set()
    pipeline, _, _, diar, progress = make({"en"}, cancelled=cancelled)
    diar.block = asyncio.Event()
    running = asyncio.create_task(pipeline.run(task()))
    await wait_until_async(lambda: bool(diar.requests))
    cancelled.add("t1")
    running.cancel()
    outcome = await running
    assert outcome.status is TaskStatus.cancelled
    assert progress.calls[-1] == ("finish", TaskStatus.cancelled)

    pipeline, _, _, diar, progress = make({"en"}, cancelled=set())
    diar.block = asyncio.Event()
    running = asyncio.create_task(pipeline.run(task()))
    await wait_until_async(lambda: bool(diar.requests))
    running.cancel()  # a lost lease or shutdown: not the user's cancel
    with pytest.raises(asyncio.CancelledError):
        await running
    assert ("finish", TaskStatus.cancelled) not in progress.calls


async def wait_until_async(predicate: Any, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_a_multilingual_model_next_to_an_english_default_detects_first() -> None:
    """model=base must not inherit the English-only default's fixed "en": the aligner is
    chosen for the language the model detects (here none serves it: Whisper times)."""
    pipeline, asr, align, _, progress = make({"en"}, language="en")
    pipeline._model_languages = {"base": None}
    asr.language = "de"
    await pipeline.run(task(asr=AsrOptions(model="base"), diarize=False))
    assert asr.requests[0].word_timestamps is False  # not decided before ASR detected
    assert align.calls == 0 and asr.word_calls == 1
    assert progress.result is not None and progress.result.word_timestamps == "whisper"


class ActorDiedError(Exception):
    """Stands in for ray.exceptions.ActorDiedError (matched by name and module)."""


ActorDiedError.__module__ = "ray.exceptions"


class DyingAsr(FakeAsr):
    def __init__(self, deaths: int, error: Exception | None = None) -> None:
        super().__init__()
        self.deaths = deaths
        self.error = error

    async def transcribe(
        self, audio: np.ndarray, req: AsrRequest, *, progress: ProgressFn | None = None
    ) -> Transcript:
        if self.deaths > 0:
            self.deaths -= 1
            self.requests.append(req)
            raise self.error or ActorDiedError("The actor died unexpectedly; pid=123")
        return await super().transcribe(audio, req, progress=progress)


def _with_asr(asr: FakeAsr, retries: int = 2) -> tuple[TaskPipeline, FakeProgress]:
    pipeline, _, align, diar, progress = make({"en"})
    pipeline = pipeline_of(
        asr=asr, align=align, diarize=diar, progress=progress, stage_retries=retries
    )
    return pipeline, progress


async def test_a_stage_whose_replica_died_is_retried_and_completes() -> None:
    asr = DyingAsr(deaths=2)
    pipeline, progress = _with_asr(asr)
    outcome = await pipeline.run(task())
    assert outcome.status is TaskStatus.completed and len(asr.requests) == 3
    notes = [c[1] for c in progress.calls if c[0] == "note"]
    assert len(notes) == 2 and "retry 2 of 2" in notes[-1]


async def test_replica_deaths_past_the_retries_fail_as_processing_failed() -> None:
    asr = DyingAsr(deaths=3)
    pipeline, _ = _with_asr(asr)
    outcome = await pipeline.run(task())
    assert outcome.status is TaskStatus.failed and len(asr.requests) == 3
    assert outcome.error is not None and outcome.error.error_code == "processing_failed"
    assert "pid" not in outcome.error.technical_detail.replace("pid=***", "")


async def test_input_errors_are_never_retried() -> None:
    asr = DyingAsr(deaths=1, error=InvalidAudioError("bad audio", "x"))
    pipeline, progress = _with_asr(asr)
    outcome = await pipeline.run(task())
    assert outcome.status is TaskStatus.failed and len(asr.requests) == 1
    assert outcome.error is not None and outcome.error.error_code == "invalid_audio"
    assert not [c for c in progress.calls if c[0] == "note"]


class FlakyProgress(FakeProgress):
    """``finish`` fails for the statuses in ``failing`` (``times`` times each, or always)."""

    def __init__(self, failing: set[TaskStatus], times: int | None = None) -> None:
        super().__init__()
        self.failing, self.times = failing, times

    async def finish(self, task_id: str, status: TaskStatus, **kw: Any) -> bool:
        self.calls.append(("write", status))
        if status in self.failing and (self.times is None or self.times > 0):
            if self.times is not None:
                self.times -= 1
            raise OutcomeWriteError(task_id) from RuntimeError("database is locked")
        return await super().finish(task_id, status, **kw)


def _with_progress(progress: FakeProgress, **kw: Any) -> TaskPipeline:
    return pipeline_of(progress=progress, **kw)


async def test_a_failed_outcome_write_is_retried_not_the_task() -> None:
    progress = FlakyProgress({TaskStatus.completed}, times=2)
    outcome = await _with_progress(progress).run(task())
    assert outcome.status is TaskStatus.completed
    writes = [c for c in progress.calls if c[0] == "write"]
    assert writes == [("write", TaskStatus.completed)] * 3
    assert [c[0] for c in progress.calls].count("start") == 1  # the task ran once


async def test_an_outcome_that_cannot_be_written_fails_with_its_own_code() -> None:
    progress = FlakyProgress({TaskStatus.completed})
    outcome = await _with_progress(progress, record_attempts=3).run(task())
    assert outcome.status is TaskStatus.failed and outcome.error is not None
    assert outcome.error.error_code == "outcome_not_recorded"
    assert "database is locked" in outcome.error.technical_detail
    assert progress.calls[-1] == ("finish", TaskStatus.failed)


async def test_a_database_hiccup_during_a_users_cancel_is_not_a_runner_stop() -> None:
    """The user's cancel arrives as asyncio cancellation; whether it was the user's is known
    from memory, and the first write of ``cancelled`` failing (the database hiccups) only
    retries the write: the task ends ``cancelled``, not stopped for a later re-run."""
    progress = FlakyProgress({TaskStatus.cancelled}, times=1)
    diar = FakeDiarize()
    diar.block = asyncio.Event()
    stopping: set[str] = set()
    pipeline = pipeline_of(diarize=diar, progress=progress, cancelled_by_user=stopping.__contains__)
    running = asyncio.create_task(pipeline.run(task()))
    while not diar.requests:
        await asyncio.sleep(0)
    stopping.add("t1")  # what the runner notes before it cancels for the user
    running.cancel()
    outcome = await running
    assert outcome.status is TaskStatus.cancelled
    assert [c for c in progress.calls if c[0] in ("write", "finish")] == [
        ("write", TaskStatus.cancelled),
        ("write", TaskStatus.cancelled),
        ("finish", TaskStatus.cancelled),
    ]


async def test_an_unexpected_error_from_the_outcome_sink_is_not_retried() -> None:
    """Only ``OutcomeWriteError`` (the write may be tried again) is retried; a bug in the
    sink goes to the runner at once, whose top-level catch logs its traceback."""

    class BuggyProgress(FakeProgress):
        async def finish(self, task_id: str, status: TaskStatus, **kw: Any) -> bool:
            self.calls.append(("write", status))
            raise TypeError("a bug")

    progress = BuggyProgress()
    with pytest.raises(TypeError):
        await _with_progress(progress).run(task())
    assert [c for c in progress.calls if c[0] == "write"] == [("write", TaskStatus.completed)]


async def test_diarization_whose_replica_died_is_retried_too() -> None:
    class DyingDiarize(FakeDiarize):
        deaths = 1

        async def diarize(
            self, audio: np.ndarray, req: DiarizeRequest, *, progress: ProgressFn | None = None
        ) -> Transcript:
            if self.deaths:
                self.deaths -= 1
                self.requests.append(req)
                raise ActorDiedError("The actor died unexpectedly")
            return await super().diarize(audio, req, progress=progress)

    progress, diar = FakeProgress(), DyingDiarize()
    pipeline = pipeline_of(diarize=diar, progress=progress)
    outcome = await pipeline.run(task())
    assert outcome.status is TaskStatus.completed and len(diar.requests) == 2
    assert progress.result is not None and progress.result.speakers == ["SPEAKER_00"]
    assert [c[1] for c in progress.calls if c[0] == "note"] == [
        "Diarization restarted: its model replica stopped (retry 1 of 2)"
    ]


async def test_each_stage_reports_its_model_progress_to_the_tracker() -> None:
    pipeline, *_, progress = make({"en"})
    outcome = await pipeline.run(task())
    assert outcome.status is TaskStatus.completed
    # Diarization runs beside ASR, so its report may come first (the tracker keeps only
    # the current stage's reports); each stage's own reports stay in order.
    assert sorted(progress.reports) == sorted(
        [
            (TaskProgressStage.transcribing, 50.0),
            (TaskProgressStage.transcribing, 100.0),
            (TaskProgressStage.aligning, 100.0),
            (TaskProgressStage.diarizing, 10.0),
        ]
    )
    transcribing = [r for r in progress.reports if r[0] is TaskProgressStage.transcribing]
    assert transcribing == [
        (TaskProgressStage.transcribing, 50.0),
        (TaskProgressStage.transcribing, 100.0),
    ]


async def test_whisper_word_timing_reports_as_the_aligning_stage() -> None:
    pipeline, asr, _, _, progress = make(set(), language=None)
    await pipeline.run(task(diarize=False))
    assert asr.word_calls == 1
    assert progress.reports[-1] == (TaskProgressStage.aligning, 100.0)


async def test_a_failing_progress_report_never_fails_the_stage() -> None:
    class BrokenReports(FakeProgress):
        async def report(self, task_id: str, stage: TaskProgressStage, percentage: float) -> None:
            raise RuntimeError("tracker restarting")

    progress = BrokenReports()
    outcome = await _with_progress(progress).run(task())
    assert outcome.status is TaskStatus.completed
    assert progress.result is not None


class ScaledToZero:
    """Replica counts as Serve would give them: diarization at zero until its first call
    has waited ``starts_after`` checks; ASR always running."""

    def __init__(self, starts_after: int) -> None:
        self.asked: list[str] = []
        self.starts_after = starts_after

    async def __call__(self, stage: str) -> int | None:
        self.asked.append(stage)
        if stage != "diarization":
            return 1
        return 1 if self.asked.count("diarization") > self.starts_after else 0


class SlowDiarize(FakeDiarize):
    async def diarize(
        self, audio: np.ndarray, req: DiarizeRequest, *, progress: ProgressFn | None = None
    ) -> Transcript:
        await asyncio.sleep(0.7)  # past the check and one replica poll
        return await super().diarize(audio, req, progress=progress)


async def test_a_stage_waiting_on_a_deployment_at_zero_says_it_is_starting_and_for_how_long() -> (
    None
):
    progress, counts = FakeProgress(), ScaledToZero(starts_after=1)
    pipeline = pipeline_of(
        diarize=SlowDiarize(),
        progress=progress,
        running_replicas=counts,
        replica_check_after_s=0.05,
    )
    outcome = await pipeline.run(task(align=False))
    assert outcome.status is TaskStatus.completed
    notes = [c[1] for c in progress.calls if c[0] == "note"]
    assert len(notes) == 2, notes
    assert notes[0].startswith("Waiting for a diarization replica to start")
    assert notes[1].startswith("Diarization replica started in ")


async def test_a_stage_with_a_running_replica_or_a_quick_answer_notes_nothing() -> None:
    progress, counts = FakeProgress(), ScaledToZero(starts_after=0)
    pipeline = pipeline_of(progress=progress, running_replicas=counts, replica_check_after_s=5)
    assert (await pipeline.run(task(align=False))).status is TaskStatus.completed
    assert counts.asked == []  # every stage answered before the check was due
    assert not [c for c in progress.calls if c[0] == "note"]


# ------------------------------------------------------- diarization beside ASR


async def test_diarization_runs_while_asr_runs_and_labels_the_words_after() -> None:
    pipeline, asr, _align, diar, progress = make({"en"})
    diarizing_during_asr: list[bool] = []
    original = asr.transcribe

    async def transcribe(
        audio: np.ndarray, req: AsrRequest, *, progress: ProgressFn | None = None
    ) -> Transcript:
        await wait_until_async(lambda: bool(diar.requests), timeout=5)
        diarizing_during_asr.append(True)
        return await original(audio, req, progress=progress)

    asr.transcribe = transcribe  # type: ignore[method-assign]
    outcome = await pipeline.run(task())
    assert outcome.status is TaskStatus.completed and diarizing_during_asr == [True]
    assert diar.requests[0].transcript is None  # it needs no words
    assert diar.assigned == [[SpeakerTurn(start=0, end=2, speaker="SPEAKER_00")]]
    result = progress.result
    assert result is not None and result.speakers == ["SPEAKER_00"]
    assert result.word_timestamps == "wav2vec2" and result.segments[0].speaker == "SPEAKER_00"
    # Stages are still entered in order, diarizing once the words are ready.
    assert [c[1] for c in progress.calls if c[0] == "stage"] == [
        TaskProgressStage.aligning,
        TaskProgressStage.diarizing,
    ]


async def test_a_diarization_failure_fails_the_task_without_waiting_for_asr() -> None:
    pipeline, asr, _, _, progress = make({"en"}, diarize_fail=True)
    asr_cancelled = asyncio.Event()

    async def transcribe_forever(
        audio: np.ndarray, req: AsrRequest, *, progress: ProgressFn | None = None
    ) -> Transcript:
        try:
            await asyncio.Event().wait()
        finally:
            asr_cancelled.set()
        raise AssertionError("unreachable")

    asr.transcribe = transcribe_forever  # type: ignore[method-assign]
    outcome = await asyncio.wait_for(pipeline.run(task()), 5)
    assert outcome.status is TaskStatus.failed and asr_cancelled.is_set()
    assert progress.error is not None and progress.error.error_code == "processing_failed"


async def test_an_asr_failure_stops_the_diarization_beside_it() -> None:
    pipeline, asr, _, diar, _progress = make({"en"})
    diar.block = asyncio.Event()  # diarization would run for ever
    diarization_cancelled = asyncio.Event()
    original = diar.diarize

    async def diarize(
        audio: np.ndarray, req: DiarizeRequest, *, progress: ProgressFn | None = None
    ) -> Transcript:
        try:
            return await original(audio, req, progress=progress)
        finally:
            diarization_cancelled.set()

    async def broken_asr(
        audio: np.ndarray, req: AsrRequest, *, progress: ProgressFn | None = None
    ) -> Transcript:
        await wait_until_async(lambda: bool(diar.requests), timeout=5)
        raise ProcessingError("Transcription failed.", "boom")

    diar.diarize = diarize  # type: ignore[method-assign]
    asr.transcribe = broken_asr  # type: ignore[method-assign]
    outcome = await asyncio.wait_for(pipeline.run(task()), 5)
    assert outcome.status is TaskStatus.failed and diarization_cancelled.is_set()
    assert not diar.assigned


async def test_diarization_after_asr_when_not_alongside() -> None:
    pipeline, _, _, diar, _progress = make({"en"}, diarize_alongside=False)
    outcome = await pipeline.run(task())
    assert outcome.status is TaskStatus.completed
    assert diar.requests[0].transcript is not None and not diar.assigned
