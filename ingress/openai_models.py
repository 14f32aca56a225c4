"""OpenAI's audio API shapes, and the mapping between them and our tasks and transcripts.

The response models mirror the official client's ``Transcription`` and
``TranscriptionVerbose`` types (``openai.types.audio``), so it parses them unchanged.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel
from whisperx.utils import LANGUAGES, compression_ratio

from common.errors import ServiceError
from common.schemas import TaskPublic, Word

DEFAULT_MODELS = ("whisper-1",)
"""OpenAI model names that mean "this deployment's default Whisper model"."""


# ---------------------------------------------------------------- responses


class OpenAITranscription(BaseModel):
    """``response_format=json``."""

    text: str


class OpenAISegment(BaseModel):
    id: int
    seek: int
    """Start in 10 ms frames (Whisper's unit); derived from ``start``."""
    start: float
    end: float
    text: str
    tokens: list[int]
    """Not kept by this service: always empty."""
    temperature: float
    """The requested temperature; 0 when none was given."""
    avg_logprob: float
    """Whisper's average log probability of the segment; 0 when unknown."""
    compression_ratio: float
    """gzip compression ratio of the segment text."""
    no_speech_prob: float
    """Not kept by this service: always 0."""


class OpenAIWord(BaseModel):
    word: str
    start: float
    end: float


class OpenAIVerboseTranscription(BaseModel):
    """``response_format=verbose_json``; ``segments``/``words`` as the granularities ask."""

    task: Literal["transcribe", "translate"]
    language: str
    """The language's English name in lower case (``english``), as OpenAI gives it."""
    duration: float
    text: str
    segments: list[OpenAISegment] | None = None
    words: list[OpenAIWord] | None = None


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(BaseModel):
    """Every error of the OpenAI-compatible routes."""

    error: OpenAIErrorDetail

    @classmethod
    def of(cls, *, code: str, message: str, status: int, param: str | None) -> OpenAIError:
        kind = "server_error" if status >= 500 else "invalid_request_error"
        return cls(error=OpenAIErrorDetail(message=message, type=kind, param=param, code=code))


_TEXT_EXAMPLE = "And so, my fellow Americans, ask not what your country can do for you."
SUCCESS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The transcript, in the shape `response_format` names.",
        "content": {
            "text/plain": {"schema": {"type": "string"}, "example": _TEXT_EXAMPLE + "\n"},
            "application/x-subrip": {"schema": {"type": "string"}},
            "text/vtt": {"schema": {"type": "string"}},
        },
    }
}
_ERRORS: dict[int | str, str] = {
    400: "Bad request: invalid parameters, unusable audio, or a task the model cannot do.",
    413: "The upload is larger than this service accepts.",
    429: "This API key is over its limits (tasks in flight or per minute); see Retry-After.",
    500: "The task failed on the server.",
    503: "A model or a backing service is unavailable, or the queue is full (Retry-After).",
    504: "The task did not finish in time; it keeps running (see the message).",
    "4XX": "Any other client error (for example, the task was deleted while running).",
}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": OpenAIError, "description": description}
    for status, description in _ERRORS.items()
}


def _codes(cls: type[ServiceError]) -> dict[str, int]:
    found = {cls.code: cls.status_code}
    for sub in cls.__subclasses__():
        found |= _codes(sub)
    return found


def error_status(code: str, default: int) -> int:
    """HTTP status for an error code: its ServiceError's, with our 422s as OpenAI's 400."""
    status = _codes(ServiceError).get(code, default)
    return 400 if status == 422 else status


# ---------------------------------------------------------------- requests


def task_params(
    *,
    task: Literal["transcribe", "translate"],
    model: str,
    language: str | None,
    prompt: str | None,
    temperature: float | None,
    words: bool,
) -> dict[str, Any]:
    """``TaskParams`` fields for an OpenAI request: no diarization, alignment only for words."""
    asr: dict[str, Any] = {"task": task}
    if model and model not in DEFAULT_MODELS:
        asr["model"] = model
    if language:
        asr["language"] = language
    if prompt:
        asr["initial_prompt"] = prompt
    if temperature is not None:
        asr["temperatures"] = [temperature]
    return {"asr": asr, "align": words, "diarize": False}


# ---------------------------------------------------------------- results


def language_name(code: str | None) -> str:
    """``en`` → ``english`` (whisperx's table, which is Whisper's); unknown codes unchanged."""
    if not code:
        return ""
    return str(LANGUAGES.get(code.lower(), code))


def _words(words: list[Word], floor: float) -> list[OpenAIWord]:
    """Every word with a time: one without keeps to where the previous word ended."""
    out: list[OpenAIWord] = []
    last = floor
    for w in words:
        start = w.start if w.start is not None else last
        end = w.end if w.end is not None else start
        out.append(OpenAIWord(word=w.word.strip(), start=start, end=max(end, start)))
        last = max(end, start)
    return out


def verbose(
    task: TaskPublic,
    *,
    kind: Literal["transcribe", "translate"],
    segments: bool,
    words: bool,
    temperature: float | None,
) -> OpenAIVerboseTranscription:
    transcript = task.result
    assert transcript is not None, "a completed task has a result"
    end = max((s.end for s in transcript.segments), default=0.0)
    body = OpenAIVerboseTranscription(
        task=kind,
        language="english" if kind == "translate" else language_name(transcript.language),
        duration=task.audio_duration or end,
        text=transcript.text,
    )
    if segments:
        body.segments = [
            OpenAISegment(
                id=i,
                seek=round(s.start * 100),
                start=s.start,
                end=s.end,
                text=s.text,
                tokens=[],
                temperature=temperature or 0.0,
                avg_logprob=s.avg_logprob or 0.0,
                compression_ratio=compression_ratio(s.text) if s.text else 0.0,
                no_speech_prob=0.0,
            )
            for i, s in enumerate(transcript.segments)
        ]
    if words:
        body.words = [w for s in transcript.segments for w in _words(s.words, s.start)]
    return body
