"""Typed mirrors of the server's JSON: transcripts, task records and progress events.

Defined here rather than imported from the server so the client installs without Ray or
torch. Every model ignores fields it does not know, so a newer server with more fields
does not break an older client. Stages are plain strings for the same reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, PrivateAttr

if TYPE_CHECKING:
    import pandas as pd

    from whisperx_serve_client._config import ClientConfig

ResultFormat = Literal["json", "srt", "vtt", "txt", "tsv"]
RESULT_FORMATS: tuple[str, ...] = ("json", "srt", "vtt", "txt", "tsv")


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", protected_namespaces=())


class TaskStatus(str, Enum):
    queued = "queued"
    processing = "processing"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (TaskStatus.completed, TaskStatus.failed, TaskStatus.cancelled)


# ---------------------------------------------------------------- transcripts


@dataclass(frozen=True)
class TaskOrigin:
    """Where a transcript came from, so its server-rendered formats can be fetched later.

    Holds only configuration (no open connections), so it outlives the client, pickles,
    and compares by value (two reads of one task's result are equal transcripts).
    """

    config: ClientConfig
    task_id: str

    def fetch(self, format: str) -> str:
        from whisperx_serve_client._sync import run_sync
        from whisperx_serve_client._transport import AsyncTransport

        async def fetch() -> str:
            transport = AsyncTransport(self.config)
            try:
                return await transport.result_text(self.task_id, format)
            finally:
                await transport.aclose()

        return run_sync(fetch())


def attach_origin(transcript: Transcript, config: ClientConfig, task_id: str) -> Transcript:
    transcript._origin = TaskOrigin(config, task_id)
    return transcript


class Word(_Model):
    word: str
    start: float | None = None
    end: float | None = None
    score: float | None = None
    speaker: str | None = None


class Char(_Model):
    char: str
    start: float | None = None
    end: float | None = None
    score: float | None = None


class Segment(_Model):
    start: float
    end: float
    text: str
    speaker: str | None = None
    words: list[Word] = []
    chars: list[Char] | None = None
    avg_logprob: float | None = None
    repetition: str | None = None
    """``redecoded``, ``cut`` or ``kept`` when Whisper repeated itself in this window."""


class SpeakerTurn(_Model):
    start: float
    end: float
    speaker: str


class TranscriptWarning(_Model):
    """Something the service changed or could not do (``code``), and where (seconds)."""

    code: str
    message: str
    start: float | None = None
    end: float | None = None


class Transcript(_Model):
    """A task's result: segments with word timings and speaker labels.

    ``word_timestamps`` says what produced the word times (``wav2vec2``, ``whisper``) or is
    ``None`` for segment times only. A transcript that came from a task remembers the task,
    so :meth:`save` can fetch the server's srt/vtt/txt/tsv renderings of it.
    """

    language: str | None = None
    segments: list[Segment] = []
    word_timestamps: str | None = None
    alignment_model: str | None = None
    speakers: list[str] = []
    speaker_turns: list[SpeakerTurn] | None = None
    warnings: list[TranscriptWarning] = []
    """E.g. ``repetition_cut`` (a Whisper loop was cut) or ``no_aligner`` (Whisper's word
    times, no wav2vec2 aligner for the language)."""

    _origin: TaskOrigin | None = PrivateAttr(default=None)

    @property
    def text(self) -> str:
        return " ".join(s.text.strip() for s in self.segments).strip()

    @property
    def task_id(self) -> str | None:
        """The task that produced this transcript, when it came from the server."""
        return self._origin.task_id if self._origin else None

    def __repr__(self) -> str:
        text = self.text
        preview = text if len(text) <= 60 else text[:59] + "…"
        return (
            f"Transcript(language={self.language!r}, segments={len(self.segments)}, "
            f"speakers={self.speakers!r}, text={preview!r})"
        )

    def to_dataframe(self, level: Literal["segment", "word"] = "segment") -> pd.DataFrame:
        """One row per segment (start, end, text, speaker) or per word (start, end, word,
        speaker, score, segment). Needs pandas: ``pip install whisperx-serve-client[pandas]``."""
        rows = self.rows(level)
        return _pandas().DataFrame(rows, columns=list(TRANSCRIPT_COLUMNS[level]))

    def rows(self, level: Literal["segment", "word"] = "segment") -> list[dict[str, Any]]:
        """The rows :meth:`to_dataframe` builds, as plain dicts (no pandas needed)."""
        if level == "segment":
            return [
                {"start": s.start, "end": s.end, "text": s.text.strip(), "speaker": s.speaker}
                for s in self.segments
            ]
        if level == "word":
            return [
                {
                    "start": w.start,
                    "end": w.end,
                    "word": w.word,
                    "speaker": w.speaker if w.speaker is not None else s.speaker,
                    "score": w.score,
                    "segment": i,
                }
                for i, s in enumerate(self.segments)
                for w in s.words
            ]
        raise ValueError(f"level must be 'segment' or 'word', not {level!r}")

    def render(self, format: ResultFormat = "json") -> str:
        """This transcript as text in ``format``: json locally, the rest from the server."""
        check_format(format)
        if format == "json":
            return self.model_dump_json(indent=2)
        if self._origin is None:
            raise ValueError(
                f"format {format!r} is rendered by the server; this transcript did not come "
                "from a task (save it as json, or use TaskHandle.save)"
            )
        return self._origin.fetch(format)

    def save(self, path: str | Path, format: ResultFormat | None = None) -> Path:
        """Write the transcript to ``path``; the format defaults to the file's suffix.

        Blocks while a non-json format is fetched; in async code prefer
        ``await handle.save(...)``.
        """
        target = Path(path)
        fmt = format or format_from_suffix(target)
        text = self.render(fmt)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        return target


TRANSCRIPT_COLUMNS: dict[str, tuple[str, ...]] = {
    "segment": ("start", "end", "text", "speaker"),
    "word": ("start", "end", "word", "speaker", "score", "segment"),
}


def check_format(format: str) -> None:
    if format not in RESULT_FORMATS:
        raise ValueError(f"format must be one of {', '.join(RESULT_FORMATS)}; got {format!r}")


def format_from_suffix(path: Path) -> ResultFormat:
    suffix = path.suffix.lower().lstrip(".")
    for fmt in ("json", "srt", "vtt", "txt", "tsv"):
        if suffix == fmt:
            return fmt
    return "json"


def _pandas() -> Any:
    try:
        import pandas
    except ImportError as exc:  # an optional extra
        raise ImportError(
            "to_dataframe needs pandas: pip install 'whisperx-serve-client[pandas]'"
        ) from exc
    return pandas


# ---------------------------------------------------------------- task records


class ErrorInfo(_Model):
    """Why a task failed: the server's one error shape (``TaskPublic.error``, the snapshot's
    ``error``, the fields of an ``error`` event and of HTTP error bodies)."""

    error_code: str = Field(validation_alias=AliasChoices("error_code", "code"))
    """Stable and machine-readable. (Older servers spelled it ``code`` in
    ``TaskPublic.error`` and the snapshot; that is read too.)"""
    user_message: str
    technical_detail: str = ""

    @property
    def code(self) -> str:
        """The former name of ``error_code``."""
        return self.error_code


class Timings(_Model):
    queued: float | None = None
    decode: float | None = None
    transcribing: float | None = None
    aligning: float | None = None
    diarizing: float | None = None
    total: float | None = None


class TaskAccepted(_Model):
    """Answer to a submission."""

    identifier: str
    status: TaskStatus
    message: str = ""
    progress_url: str = ""
    websocket_url: str = ""


class TaskProgress(_Model):
    """``GET /tasks/{id}/progress``: the polling view of a task."""

    identifier: str
    status: TaskStatus
    progress_percentage: float = 0.0
    progress_stage: str = "queued"
    error: str | None = None
    """The error's ``user_message`` (the task failed)."""
    error_code: str | None = None
    technical_detail: str | None = None
    seq: int = 0
    queue_position: int | None = None
    """While queued: 1 when the task is next to start."""
    message: str = ""
    eta_seconds: float | None = None


class TaskPublic(_Model):
    """``GET /task/{id}``: the whole task record."""

    identifier: str
    status: TaskStatus
    task_type: str = "speech-to-text"
    file_name: str | None = None
    audio_duration: float | None = None
    params: dict[str, Any] = {}
    result: Transcript | None = None
    speaker_names: dict[str, str] = {}
    """Names given to diarized speakers; ``result`` keeps the labels."""
    error: ErrorInfo | None = None
    progress_percentage: float = 0.0
    progress_stage: str = "queued"
    created_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    timings: Timings = Timings()


# ---------------------------------------------------------------- progress stream


class _Event(_Model):
    task_id: str
    seq: int
    status: TaskStatus
    timestamp: datetime | None = None

    @property
    def terminal(self) -> bool:
        return self.status.terminal


class ProgressEvent(_Event):
    type: Literal["progress"] = "progress"
    stage: str
    percentage: float
    message: str = ""
    eta_seconds: float | None = None


class ErrorEvent(_Event, ErrorInfo):
    """The event that ended a failed task: its ``ErrorInfo`` fields, flat."""

    type: Literal["error"] = "error"
    status: TaskStatus = TaskStatus.failed


class TaskSnapshot(_Event):
    """First WebSocket frame: where the task stands; ``seq`` is the last event it reflects."""

    type: Literal["snapshot"] = "snapshot"
    stage: str
    percentage: float
    message: str = ""
    eta_seconds: float | None = None
    error: ErrorInfo | None = None


TaskEvent = ProgressEvent | ErrorEvent
"""What ``events()`` yields: progress, or the error that ended the task."""

Frame = TaskSnapshot | ProgressEvent | ErrorEvent

_FRAMES: dict[str, type[Frame]] = {
    "snapshot": TaskSnapshot,
    "progress": ProgressEvent,
    "error": ErrorEvent,
}


def parse_frame(raw: str | bytes) -> Frame | None:
    """One WebSocket frame; ``None`` for frame types this client does not know."""
    data = json.loads(raw)
    kind = _FRAMES.get(str(data.get("type"))) if isinstance(data, dict) else None
    return kind.model_validate(data) if kind else None
