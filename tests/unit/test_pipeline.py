"""TaskPipeline orchestration with fake model clients (no Ray, no models)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from common.errors import InvalidAudioError, ProcessingError
from common.schemas import (
    AlignRequest,
    AsrRequest,
    DiarizeRequest,
    Segment,
    TaskError,
    TaskParams,
    TaskProgressStage,
    TaskStatus,
    Timings,
    Transcript,
    Word,
)
from deployments.pipeline import TaskInput, TaskPipeline

AUDIO = np.zeros(16_000 * 2, dtype=np.float32)


class FakeAsr:
    def __init__(self) -> None:
        self.requests: list[AsrRequest] = []
        self.word_calls = 0

    async def transcribe(self, audio: np.ndarray, req: AsrRequest) -> Transcript:
        self.requests.append(req)
        t = Transcript(language="en", segments=[Segment(start=0, end=2, text=" hello world")])
        return self._words(t) if req.word_timestamps else t

    async def add_word_timestamps(self, audio: np.ndarray, transcript: Transcript) -> Transcript:
        self.word_calls += 1
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

    async def align(self, audio: np.ndarray, req: AlignRequest) -> Transcript:
        self.calls += 1
        return req.transcript.model_copy(
            update={"word_timestamps": "wav2vec2", "alignment_model": "fake"}
        )


class FakeDiarize:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.requests: list[DiarizeRequest] = []

    async def diarize(self, audio: np.ndarray, req: DiarizeRequest) -> Transcript:
        self.requests.append(req)
        if self.fail:
            raise RuntimeError("boom")
        assert req.transcript is not None
        return req.transcript.model_copy(update={"speakers": ["SPEAKER_00"]})


class FakeProgress:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.result: Transcript | None = None
        self.error: TaskError | None = None

    async def start(self, task_id: str, stages: list[TaskProgressStage], attempt: int) -> None:
        self.calls.append(("start", tuple(stages)))

    async def enter_stage(self, task_id: str, stage: TaskProgressStage, message: str = "") -> None:
        self.calls.append(("stage", stage, message))

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


def make(
    supported: set[str],
    *,
    decode_error: bool = False,
    diarize_fail: bool = False,
    language: str | None = "en",
) -> tuple[TaskPipeline, FakeAsr, FakeAlign, FakeDiarize, FakeProgress]:
    asr, align, diar, progress = (
        FakeAsr(),
        FakeAlign(supported),
        FakeDiarize(diarize_fail),
        FakeProgress(),
    )

    def decode(path: Path) -> np.ndarray:
        if decode_error:
            raise InvalidAudioError("The file could not be decoded as audio.", "av: invalid data")
        return AUDIO

    pipeline = TaskPipeline(
        asr=asr,
        align=align,
        diarize=diar,
        progress=progress,
        decode=decode,
        default_language=language,  # type: ignore[arg-type]
    )
    return pipeline, asr, align, diar, progress


def task(**params: Any) -> TaskInput:
    return TaskInput(task_id="t1", audio_path=Path("/nonexistent"), params=TaskParams(**params))


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
    assert progress.error is not None and progress.error.code == InvalidAudioError.code


async def test_unknown_failure_becomes_processing_error_without_traceback() -> None:
    pipeline, *_, progress = make({"en"}, diarize_fail=True)
    await pipeline.run(task())
    assert progress.error is not None
    assert progress.error.code == ProcessingError.code
    assert "RuntimeError: boom" in progress.error.technical_detail
    assert "\n" not in progress.error.technical_detail
