"""Pydantic models for every boundary: HTTP, deployment handles, the progress actor, WS events."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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
    """What a task runs: the whole pipeline, or one stage (the ``/service/*`` routes)."""

    speech_to_text = "speech-to-text"
    """Transcription, then (as asked) word alignment and diarization."""
    transcribe = "transcribe"
    """ASR only (``/service/transcribe``)."""
    align = "align"
    """Word alignment of a given transcript against its audio (``/service/align``)."""
    diarize = "diarize"
    """Speaker turns only (``/service/diarize``)."""
    combine = "combine"
    """Speaker labels assigned to a given transcript's words (``/service/combine``)."""


# ---------------------------------------------------------------- task parameters

ComputeType = Literal[
    "default", "float16", "float32", "bfloat16", "int8", "int8_float16", "int8_float32"
]
Probability = Annotated[float, Field(ge=0, le=1)]


class AsrOptions(BaseModel):
    """Per-request ASR options; anything left unset uses the deployment's configured default.

    The names follow whisperx (``asr_options``, ``vad_options``) and whisperX-FastAPI.
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: Annotated[str | None, Field(max_length=200)] = None
    """A Whisper model the ASR deployment is configured to serve; unset = its default."""
    compute_type: ComputeType | None = None
    language: Annotated[str | None, Field(min_length=2, max_length=8, pattern=r"^[a-zA-Z-]+$")] = (
        None
    )
    task: Literal["transcribe", "translate"] = "transcribe"
    batch_size: Annotated[int | None, Field(ge=1, le=128)] = None
    # decoding
    beam_size: Annotated[int | None, Field(ge=1, le=20)] = None
    best_of: Annotated[int | None, Field(ge=1, le=20)] = None
    patience: Annotated[float | None, Field(gt=0, le=10)] = None
    length_penalty: Annotated[float | None, Field(ge=0, le=10)] = None
    temperatures: Annotated[list[Probability] | None, Field(min_length=1, max_length=10)] = None
    compression_ratio_threshold: Annotated[float | None, Field(gt=0, le=100)] = None
    log_prob_threshold: Annotated[float | None, Field(ge=-100, le=0)] = None
    no_speech_threshold: Probability | None = None
    condition_on_previous_text: bool | None = None
    initial_prompt: Annotated[str | None, Field(max_length=2000)] = None
    hotwords: Annotated[str | None, Field(max_length=2000)] = None
    suppress_numerals: bool | None = None
    # voice activity detection
    vad_onset: Annotated[float | None, Field(gt=0, lt=1)] = None
    vad_offset: Annotated[float | None, Field(gt=0, lt=1)] = None
    chunk_size: Annotated[int | None, Field(ge=1, le=30)] = None


InterpolateMethod = Literal["nearest", "linear", "ignore"]


class AlignOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    align_model: Annotated[str | None, Field(max_length=200)] = None
    """A wav2vec2 model the alignment deployment is configured to serve for the language."""
    interpolate_method: InterpolateMethod = "nearest"
    return_char_alignments: bool = False


class TaskParams(BaseModel):
    """What one task asks for."""

    model_config = ConfigDict(extra="forbid")

    asr: AsrOptions = AsrOptions()
    alignment: AlignOptions = AlignOptions()
    align: bool = True
    diarize: bool = True
    num_speakers: Annotated[int | None, Field(ge=1, le=50)] = None
    min_speakers: Annotated[int | None, Field(ge=1, le=50)] = None
    max_speakers: Annotated[int | None, Field(ge=1, le=50)] = None
    callback_url: Annotated[str | None, Field(max_length=2048)] = None
    """Receives the final task (``TaskPublic`` JSON) by POST on completion or failure."""

    @model_validator(mode="after")
    def _speakers_consistent(self) -> TaskParams:
        lo, hi, n = self.min_speakers, self.max_speakers, self.num_speakers
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"min_speakers ({lo}) must not exceed max_speakers ({hi})")
        if n is not None and ((lo is not None and n < lo) or (hi is not None and n > hi)):
            raise ValueError(f"num_speakers ({n}) must lie between min_speakers and max_speakers")
        return self

    def stages(self, task_type: TaskType = TaskType.speech_to_text) -> list[TaskProgressStage]:
        """The progress stages this task goes through, in order."""
        single = {
            TaskType.transcribe: TaskProgressStage.transcribing,
            TaskType.align: TaskProgressStage.aligning,
            TaskType.diarize: TaskProgressStage.diarizing,
            TaskType.combine: TaskProgressStage.diarizing,
        }
        if task_type in single:
            return [single[task_type]]
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


class Char(BaseModel):
    char: str
    start: float | None = None
    end: float | None = None
    score: float | None = None


class Segment(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True)  # field docs in the OpenAPI

    start: float
    end: float
    text: str
    speaker: str | None = None
    words: list[Word] = []
    chars: list[Char] | None = None
    """Per-character alignment, when ``return_char_alignments`` was asked for."""
    avg_logprob: float | None = None
    repetition: RepetitionFix | None = None
    """Set when Whisper's text for this window repeated itself: ``redecoded`` (a second,
    different decode gave clean text, which replaced it), ``cut`` (it looped again, with
    more words than the audio holds: the repeats were dropped) or ``kept`` (it repeated
    again but fits the audio, so it is likely what was said). ``Transcript.warnings`` says
    the same, with the repetition found."""


RepetitionFix = Literal["redecoded", "cut", "kept"]


class SpeakerTurn(BaseModel):
    start: float
    end: float
    speaker: str


WordTimestampMethod = Literal["wav2vec2", "whisper"]
WarningCode = Literal["repetition_redecoded", "repetition_cut", "repetition_kept", "no_aligner"]


class TranscriptWarning(BaseModel):
    """Something the service changed or could not do, with where it happened (seconds)."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    code: WarningCode
    """``repetition_*``: Whisper repeated itself in the window ``start``-``end`` (see
    ``Segment.repetition``); ``no_aligner``: no wav2vec2 aligner for the language, so the
    word times are Whisper's own."""
    message: str
    start: float | None = None
    end: float | None = None


class Transcript(BaseModel):
    """A transcript as it moves through the pipeline and as the task's final result.

    ``word_timestamps`` says what produced the word times: ``wav2vec2`` forced alignment
    (``alignment_model`` names the model), ``whisper`` cross-attention timing from the ASR
    model itself, or ``None`` when the transcript has segment times only.
    """

    model_config = ConfigDict(use_attribute_docstrings=True)

    language: str | None = None
    segments: list[Segment] = []
    word_timestamps: WordTimestampMethod | None = None
    alignment_model: str | None = None
    speakers: list[str] = []
    speaker_turns: list[SpeakerTurn] | None = None
    warnings: list[TranscriptWarning] = []
    """What the service changed or could not do on the way (e.g. a repetition loop cut)."""

    @property
    def text(self) -> str:
        return " ".join(s.text.strip() for s in self.segments).strip()


# ---------------------------------------------------------------- deployment requests
# What a model deployment is asked: audio (a separate argument) and options, nothing of
# tasks. ``request_id`` only tags the replica's log lines.


class AsrRequest(BaseModel):
    request_id: str | None = None
    options: AsrOptions = AsrOptions()
    word_timestamps: bool = False


class AlignRequest(BaseModel):
    request_id: str | None = None
    transcript: Transcript
    options: AlignOptions = AlignOptions()


class DiarizeRequest(BaseModel):
    request_id: str | None = None
    transcript: Transcript | None = None
    num_speakers: int | None = None
    min_speakers: int | None = None
    max_speakers: int | None = None


# ---------------------------------------------------------------- progress protocol


class TaskError(BaseModel):
    """Why a task failed or a request was refused: the one error shape of the service.

    The same fields wherever an error appears: HTTP error bodies, the WebSocket (and Redis)
    ``error`` event (``ErrorEvent`` is a ``TaskError`` plus the event's envelope), a task's
    ``error`` (``TaskPublic``, ``TaskSnapshot``), and the task row's ``error`` JSON column.
    """

    model_config = ConfigDict(use_attribute_docstrings=True)

    error_code: str
    """Stable and machine-readable (``invalid_audio``, ``processing_failed``, …)."""
    user_message: str
    """Fit to show an end user."""
    technical_detail: str = ""
    """One line for operators: no traceback, no secrets."""

    @classmethod
    def from_exception(cls, exc: ServiceError) -> TaskError:
        return cls(
            error_code=exc.code,
            user_message=exc.user_message,
            technical_detail=exc.technical_detail,
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


class ErrorEvent(TaskError):
    """The terminal event of a failed task: its ``TaskError`` fields, flat, in an event."""

    type: Literal["error"] = "error"
    task_id: str
    seq: int
    status: TaskStatus = TaskStatus.failed
    timestamp: datetime = Field(default_factory=utcnow)

    @classmethod
    def of(cls, error: TaskError, *, task_id: str, seq: int) -> ErrorEvent:
        return cls(task_id=task_id, seq=seq, **error.model_dump())


TaskEvent = Annotated[ProgressEvent | ErrorEvent, Field(discriminator="type")]


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
    """Polling fallback, ``GET /tasks/{identifier}/progress``: a projection of the snapshot
    (``from_snapshot``), with the error's fields flat as in the ``error`` event."""

    identifier: str
    status: TaskStatus
    progress_percentage: float
    progress_stage: TaskProgressStage
    error: str | None = None
    """The error's ``user_message`` (the task failed)."""
    error_code: str | None = None
    technical_detail: str | None = None
    seq: int = 0
    queue_position: int | None = None
    """While queued: 1 when the task is next to start."""
    message: str = ""
    eta_seconds: float | None = None

    @classmethod
    def from_snapshot(
        cls, snap: TaskSnapshot, *, queue_position: int | None = None
    ) -> TaskProgress:
        err = snap.error
        return cls(
            identifier=snap.task_id,
            status=snap.status,
            progress_percentage=snap.percentage,
            progress_stage=snap.stage,
            error=err.user_message if err else None,
            error_code=err.error_code if err else None,
            technical_detail=err.technical_detail if err else None,
            seq=snap.seq,
            queue_position=queue_position,
            message=snap.message,
            eta_seconds=snap.eta_seconds,
        )


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


class TaskDeleted(BaseModel):
    identifier: str
    message: str


class TaskPage(BaseModel):
    """One page of ``GET /task/all``."""

    tasks: list[TaskPublic]
    total: int
    """Tasks matching the filters, over all pages."""
    limit: int
    offset: int


class TaskPublic(BaseModel):
    """A task as the API shows it; validated straight from its row
    (``TaskPublic.model_validate(row, from_attributes=True)``, see ``TaskRow.to_public``)."""

    identifier: str
    status: TaskStatus
    task_type: TaskType
    file_name: str | None
    audio_duration: float | None
    params: TaskParams
    result: Transcript | None
    speaker_names: dict[str, str] = {}
    """Names given to diarized speakers (``PUT /task/{identifier}/speakers``); ``result``
    keeps the labels, the downloads (``/result``) show the names."""
    error: TaskError | None
    progress_percentage: float
    progress_stage: TaskProgressStage
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    timings: Timings

    @field_validator("speaker_names", "timings", mode="before")
    @classmethod
    def _unset_is_empty(cls, value: object) -> object:
        """Nullable JSON columns: a row that has none holds ``None``."""
        return {} if value is None else value

    def redacted(self) -> TaskPublic:
        """This task as shown to readers: no credentials in its ``callback_url``."""
        url = self.params.callback_url
        if not url:
            return self
        from common.redact import redact_url

        params = self.params.model_copy(update={"callback_url": redact_url(url)})
        return self.model_copy(update={"params": params})
