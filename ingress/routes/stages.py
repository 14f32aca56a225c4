"""Single-stage routes (``/service/*``): one model stage as its own task.

Each answers at once like ``POST /speech-to-text`` and runs through the same durable
queue, progress protocol and result routes; the task's ``task_type`` says which stage.
JSON inputs (a transcript to align, diarization to combine) are validated here, so a
malformed file is a 422 before anything is queued.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, File, Request, UploadFile
from pydantic import BaseModel, ValidationError

from common.errors import InvalidRequestError, UploadTooLargeError
from common.schemas import (
    AlignOptions,
    AsrOptions,
    SpeakerTurn,
    TaskAccepted,
    TaskType,
    Transcript,
)
from ingress.auth import CallerDep
from ingress.errors import error_responses
from ingress.limits import MAX_JSON_BYTES
from ingress.params import (
    CallbackUrl,
    SpeakerOptions,
    align_options,
    asr_options,
    build_params,
)
from ingress.services import ServicesDep
from ingress.submit import accept_task, accept_upload, new_task_id
from ingress.uploads import display_name

router = APIRouter(prefix="/service", tags=["Services"])

MAX_JSON_DEPTH = 64
"""Nesting of arrays and objects; a transcript record needs about 8."""
MAX_NUMBER_DIGITS = 64
"""Digits in a row in one JSON number; timestamps and scores need far fewer."""
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_LONG_NUMBER = re.compile(rb"[0-9]{%d,}" % (MAX_NUMBER_DIGITS + 1))
_OPEN = np.frombuffer(b"[{", dtype=np.uint8)
_CLOSE = np.frombuffer(b"]}", dtype=np.uint8)
_ACCEPTED = "Queues the task and answers at once; follow it like any other task."
AsrDep = Annotated[AsrOptions, Depends(asr_options)]
AlignDep = Annotated[AlignOptions, Depends(align_options)]
SpeakersDep = Annotated[SpeakerOptions, Depends()]
AudioFile = Annotated[
    UploadFile, File(description="Audio or video file (any format PyAV decodes).")
]


async def _read_json(upload: UploadFile, what: str) -> Any:
    raw = await upload.read(MAX_JSON_BYTES + 1)
    if len(raw) > MAX_JSON_BYTES:
        raise UploadTooLargeError(
            f"The {what} file is larger than {MAX_JSON_BYTES} bytes.",
            f"{what} JSON exceeds {MAX_JSON_BYTES} bytes",
        )
    _check_json_shape(raw, what)
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidRequestError(
            f"The {what} file is not valid JSON.", f"{what}: {type(exc).__name__}: {exc}"
        ) from None


def _check_json_shape(raw: bytes, what: str) -> None:
    """Refuse deep nesting and huge numbers before the parser sees them (a parser's
    recursion limit or Python's int-digits limit would otherwise answer 500)."""
    bare = _STRING.sub(b'""', raw)  # brackets and digits inside strings do not count
    if _LONG_NUMBER.search(bare):
        raise InvalidRequestError(
            f"The {what} file has a number with more than {MAX_NUMBER_DIGITS} digits.",
            f"{what}: number longer than {MAX_NUMBER_DIGITS} digits",
        )
    data = np.frombuffer(bare, dtype=np.uint8)
    step = np.isin(data, _OPEN).astype(np.int32) - np.isin(data, _CLOSE).astype(np.int32)
    if step.size and int(np.cumsum(step).max()) > MAX_JSON_DEPTH:
        raise InvalidRequestError(
            f"The {what} file is nested deeper than {MAX_JSON_DEPTH} levels.",
            f"{what}: JSON nesting deeper than {MAX_JSON_DEPTH}",
        )


def _validated(model: type[BaseModel], data: Any, what: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(root)"
        raise InvalidRequestError(
            f"The {what} file does not have the expected shape: {where}: {first['msg']}.",
            f"{what} validation: {exc.error_count()} errors; first at {where}",
        ) from None


def _transcript(data: Any, what: str) -> Transcript:
    """Our Transcript JSON, or whisperx's own result (``{"segments": [...], ...}``)."""
    if isinstance(data, dict) and isinstance(data.get("result"), dict):
        data = data["result"]  # a whole task record from GET /task/{id}
    transcript: Transcript = _validated(Transcript, data, what)
    if not transcript.segments:
        raise InvalidRequestError(f"The {what} has no segments.", f"{what}: empty segments list")
    return transcript


class _Turns(BaseModel):
    turns: list[SpeakerTurn]


def _speaker_turns(data: Any) -> list[SpeakerTurn]:
    """Turns from a diarize task's result, a list of turns, or whisperX-FastAPI's shape
    (``label`` for ``speaker``)."""
    if isinstance(data, dict):
        if isinstance(data.get("result"), dict):
            data = data["result"]
        data = data.get("speaker_turns", data.get("segments"))
    if isinstance(data, list):
        data = [
            {**item, "speaker": item.get("speaker", item.get("label"))}
            if isinstance(item, dict)
            else item
            for item in data
        ]
    turns: list[SpeakerTurn] = _validated(_Turns, {"turns": data}, "diarization").turns
    if not turns:
        raise InvalidRequestError("The diarization has no speaker turns.", "empty turns")
    return turns


@router.post(
    "/transcribe",
    response_model=TaskAccepted,
    summary="Transcribe only (no word alignment, no speakers)",
    description=_ACCEPTED,
    responses=error_responses(413, 422, 429, 503),
)
async def transcribe(
    request: Request,
    services: ServicesDep,
    asr: AsrDep,
    file: AudioFile,
    callback_url: CallbackUrl = None,
) -> TaskAccepted:
    params = build_params(asr=asr, align=False, diarize=False, callback_url=callback_url)
    return await accept_upload(
        request, services, file, task_type=TaskType.transcribe, params=params
    )


@router.post(
    "/align",
    response_model=TaskAccepted,
    summary="Word timestamps for a given transcript and its audio",
    description=(
        "`transcript` is a JSON file: a transcript from this service (or a whole task "
        'record) or whisperx\'s own result (`{"segments": [{"start", "end", "text"}], '
        '"language"}`). Uses wav2vec2 when an aligner serves the language, else Whisper\'s '
        "own word timings; the result's `word_timestamps` says which. " + _ACCEPTED
    ),
    responses=error_responses(413, 422, 429, 503),
)
async def align(
    request: Request,
    services: ServicesDep,
    alignment: AlignDep,
    transcript: Annotated[UploadFile, File(description="Transcript JSON file.")],
    file: AudioFile,
    callback_url: CallbackUrl = None,
) -> TaskAccepted:
    given = _transcript(await _read_json(transcript, "transcript"), "transcript")
    params = build_params(alignment=alignment, diarize=False, callback_url=callback_url)
    inputs = {"transcript": given.model_dump(mode="json")}
    return await accept_upload(
        request, services, file, task_type=TaskType.align, params=params, inputs=inputs
    )


@router.post(
    "/diarize",
    response_model=TaskAccepted,
    summary="Speaker turns only",
    description="The result has no segments, only `speaker_turns` and `speakers`. " + _ACCEPTED,
    responses=error_responses(413, 422, 429, 503),
)
async def diarize(
    request: Request,
    services: ServicesDep,
    speakers: SpeakersDep,
    file: AudioFile,
    callback_url: CallbackUrl = None,
) -> TaskAccepted:
    params = build_params(
        align=False,
        num_speakers=speakers.num_speakers,
        min_speakers=speakers.min_speakers,
        max_speakers=speakers.max_speakers,
        callback_url=callback_url,
    )
    return await accept_upload(request, services, file, task_type=TaskType.diarize, params=params)


@router.post(
    "/combine",
    response_model=TaskAccepted,
    summary="Assign speakers from a diarization to a transcript's words",
    description=(
        "`aligned_transcript`: transcript JSON (ideally with word times). `diarization_result`: "
        "a `/service/diarize` result, or a JSON list of `{start, end, speaker}` (or `label`). "
        + _ACCEPTED
    ),
    responses=error_responses(413, 422, 429, 503),
)
async def combine(
    services: ServicesDep,
    caller: CallerDep,
    aligned_transcript: Annotated[UploadFile, File(description="Transcript JSON file.")],
    diarization_result: Annotated[UploadFile, File(description="Diarization JSON file.")],
    callback_url: CallbackUrl = None,
) -> TaskAccepted:
    given = _transcript(await _read_json(aligned_transcript, "transcript"), "transcript")
    turns = _speaker_turns(await _read_json(diarization_result, "diarization"))
    params = build_params(align=False, callback_url=callback_url)
    return await accept_task(
        services,
        task_id=new_task_id(),
        task_type=TaskType.combine,
        params=params,
        file_name=display_name(aligned_transcript.filename),
        audio_key=None,
        inputs={
            "transcript": given.model_dump(mode="json"),
            "speaker_turns": [t.model_dump(mode="json") for t in turns],
        },
        caller=caller,
    )
