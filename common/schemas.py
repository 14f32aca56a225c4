"""Pydantic models for every boundary: HTTP, deployment handles, the progress actor, WS events."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from common.errors import ServiceError


def utcnow() -> datetime:
    return datetime.now(UTC)


class TaskStatus(StrEnum):
    queued = "queued"
    processing = "processing"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (TaskStatus.completed, TaskStatus.failed, TaskStatus.cancelled)


class TaskProgressStage(StrEnum):
    queued = "queued"
    transcribing = "transcribing"
    aligning = "aligning"
    diarizing = "diarizing"
    complete = "complete"


class TaskType(StrEnum):
    speech_to_text = "speech-to-text"


# ---------------------------------------------------------------- task parameters


class AsrOptions(BaseModel):
    """Per-request ASR options; anything left unset uses the deployment's configured default."""

    model_config = ConfigDict(extra="forbid")

    language: Annotated[str | None, Field(min_length=2, max_length=8, pattern=r"^[a-zA-Z-]+$")] = (
        None
    )
    task: Literal["transcribe", "translate"] = "transcribe"
    batch_size: Annotated[int | None, Field(ge=1, le=128)] = None
    beam_size: Annotated[int | None, Field(ge=1, le=20)] = None
    initial_prompt: Annotated[str | None, Field(max_length=2000)] = None
    vad_onset: Annotated[float | None, Field(gt=0, lt=1)] = None
    vad_offset: Annotated[float | None, Field(gt=0, lt=1)] = None
    chunk_size: Annotated[int | None, Field(ge=1, le=30)] = None


class TaskParams(BaseModel):
    """What one speech-to-text task asks for."""

    model_config = ConfigDict(extra="forbid")

    asr: AsrOptions = AsrOptions()
    align: bool = True
    diarize: bool = True
    num_speakers: Annotated[int | None, Field(ge=1, le=50)] = None
    min_speakers: Annotated[int | None, Field(ge=1, le=50)] = None
    max_speakers: Annotated[int | None, Field(ge=1, le=50)] = None

    @model_validator(mode="after")
    def _speakers_consistent(self) -> TaskParams:
        lo, hi, n = self.min_speakers, self.max_speakers, self.num_speakers
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"min_speakers ({lo}) must not exceed max_speakers ({hi})")
        if n is not None and ((lo is not None and n < lo) or (hi is not None and n > hi)):
            raise ValueError(f"num_speakers ({n}) must lie between min_speakers and max_speakers")
        return self

    def stages(self) -> list[TaskProgressStage]:
        """The progress stages this task goes through, in order."""
        stages = [TaskProgressStage.transcribing]
        if self.align:
            stages.append(TaskProgressStage.aligning)
        if self.diarize:
            stages.append(TaskProgressStage.diarizing)
        return stages


# ---------------------------------------------------------------- transcripts


class Word(BaseModel):
    word: str
    start: float | None = None
    end: float | None = None
    score: float | None = None
    speaker: str | None = None


class Segment(BaseModel):
    start: float
    end: float
    text: str
    speaker: str | None = None
    words: list[Word] = []
    avg_logprob: float | None = None


class SpeakerTurn(BaseModel):
    start: float
    end: float
    speaker: str


WordTimestampMethod = Literal["wav2vec2", "whisper"]


class Transcript(BaseModel):
    """A transcript as it moves through the pipeline and as the task's final result.

    ``word_timestamps`` says what produced the word times: ``wav2vec2`` forced alignment
    (``alignment_model`` names the model), ``whisper`` cross-attention timing from the ASR
    model itself, or ``None`` when the transcript has segment times only.
    """

    language: str
    segments: list[Segment]
    word_timestamps: WordTimestampMethod | None = None
    alignment_model: str | None = None
    speakers: list[str] = []
    speaker_turns: list[SpeakerTurn] | None = None

    @property
    def text(self) -> str:
        return " ".join(s.text.strip() for s in self.segments).strip()


# ---------------------------------------------------------------- deployment requests


class AsrRequest(BaseModel):
    task_id: str | None = None
    options: AsrOptions = AsrOptions()
    word_timestamps: bool = False


class AlignRequest(BaseModel):
    task_id: str | None = None
    transcript: Transcript
    interpolate_method: Literal["nearest", "linear", "ignore"] = "nearest"
    return_char_alignments: bool = False


class DiarizeRequest(BaseModel):
    task_id: str | None = None
    transcript: Transcript | None = None
    num_speakers: int | None = None
    min_speakers: int | None = None
    max_speakers: int | None = None


# ---------------------------------------------------------------- progress protocol


class TaskError(BaseModel):
    code: str
    user_message: str
    technical_detail: str = ""

    @classmethod
    def from_exception(cls, exc: ServiceError) -> TaskError:
        return cls(
            code=exc.code, user_message=exc.user_message, technical_detail=exc.technical_detail
        )


class ProgressEvent(BaseModel):
    type: Literal["progress"] = "progress"
    task_id: str
    seq: int
    status: TaskStatus
    stage: TaskProgressStage
    percentage: float
    message: str = ""
    eta_seconds: float | None = None
    timestamp: datetime = Field(default_factory=utcnow)


class ErrorEvent(BaseModel):
    type: Literal["error"] = "error"
    task_id: str
    seq: int
    status: TaskStatus = TaskStatus.failed
    error_code: str
    user_message: str
    technical_detail: str = ""
    timestamp: datetime = Field(default_factory=utcnow)


TaskEvent = Annotated[ProgressEvent | ErrorEvent, Field(discriminator="type")]


def is_terminal(event: ProgressEvent | ErrorEvent) -> bool:
    return event.status.terminal


class TaskSnapshot(BaseModel):
    """First WebSocket frame: where the task stands; ``seq`` is the last event it reflects."""

    type: Literal["snapshot"] = "snapshot"
    task_id: str
    seq: int
    status: TaskStatus
    stage: TaskProgressStage
    percentage: float
    message: str = ""
    eta_seconds: float | None = None
    error: TaskError | None = None
    timestamp: datetime = Field(default_factory=utcnow)


class TaskProgress(BaseModel):
    """Polling fallback, ``GET /tasks/{identifier}/progress``."""

    identifier: str
    status: TaskStatus
    progress_percentage: float
    progress_stage: TaskProgressStage
    error: str | None = None
    error_code: str | None = None
    seq: int = 0


# ---------------------------------------------------------------- task records over HTTP


class Timings(BaseModel):
    """Seconds spent in each step; ``None`` for steps that did not run."""

    queued: float | None = None
    decode: float | None = None
    transcribing: float | None = None
    aligning: float | None = None
    diarizing: float | None = None
    total: float | None = None


class TaskAccepted(BaseModel):
    identifier: str
    status: TaskStatus
    message: str
    progress_url: str
    websocket_url: str


class TaskPublic(BaseModel):
    identifier: str
    status: TaskStatus
    task_type: TaskType
    file_name: str | None
    audio_duration: float | None
    params: TaskParams
    result: Transcript | None
    error: TaskError | None
    progress_percentage: float
    progress_stage: TaskProgressStage
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    timings: Timings
