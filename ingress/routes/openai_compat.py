"""OpenAI-compatible speech-to-text: ``POST /v1/audio/transcriptions`` and ``/translations``.

The official ``openai`` client works unchanged against ``base_url=<service>/v1``. Each
request becomes an ordinary durable task (same storage and queue as ``/speech-to-text``)
and the route waits for it, so a client that disconnects leaves the task running and its
result readable at ``GET /task/{identifier}``. Errors use OpenAI's shape
``{"error": {"message", "type", "param", "code"}}`` with the status its client maps to the
matching exception (``BadRequestError`` for a bad request, and so on).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute

from common.errors import (
    InvalidRequestError,
    ServiceError,
    as_service_error,
    validation_error_from,
)
from common.schemas import TaskPublic, TaskStatus, TaskType
from ingress.errors import retry_after
from ingress.formats import ResultFormat, SubtitleOptions, render
from ingress.openai_models import (
    DEFAULT_MODELS,
    ERROR_RESPONSES,
    SUCCESS_RESPONSES,
    OpenAIError,
    OpenAITranscription,
    OpenAIVerboseTranscription,
    error_status,
    task_params,
    verbose,
)
from ingress.params import build_params
from ingress.services import ServicesDep
from ingress.submit import accept_upload
from ingress.sync import wait_for_task

logger = logging.getLogger(__name__)

ResponseFormat = Literal["json", "text", "srt", "vtt", "verbose_json"]
Granularity = Literal["word", "segment"]


class OpenAIRoute(APIRoute):
    """Answers every error of these routes, request validation included, in OpenAI's shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                return error_response(validation_error_from(exc), param=_first_param(exc))
            except Exception as exc:
                err = as_service_error(exc)
                if err.status_code >= 500:
                    logger.error("request failed: %s", err, exc_info=exc)
                else:
                    logger.warning("request rejected: %s", err)
                return error_response(err)

        return handle


router = APIRouter(prefix="/v1/audio", tags=["OpenAI compatible"], route_class=OpenAIRoute)


def _first_param(exc: RequestValidationError) -> str | None:
    for error in exc.errors():
        names = [str(p) for p in error.get("loc", ()) if p not in ("body", "query")]
        if names:
            return names[0]
    return None


def error_response(
    err: ServiceError, *, param: str | None = None, retry: bool | None = None
) -> JSONResponse:
    """``err`` as OpenAI's error body; ``retry=False`` tells the client not to resubmit."""
    response = _error_json(err.code, str(err), err.status_code, param=param, retry=retry)
    response.headers.update(retry_after(err))
    return response


def _error_json(
    code: str, message: str, status: int, *, param: str | None = None, retry: bool | None = None
) -> JSONResponse:
    status = error_status(code, status)
    body = OpenAIError.of(code=code, message=message, status=status, param=param)
    headers = {} if retry is None else {"x-should-retry": str(retry).lower()}
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


async def _run(
    request: Request,
    services: ServicesDep,
    file: UploadFile,
    *,
    task: Literal["transcribe", "translate"],
    model: str,
    language: str | None,
    prompt: str | None,
    response_format: ResponseFormat,
    temperature: float | None,
    granularities: list[Granularity],
) -> Response:
    if granularities and response_format != "verbose_json":
        raise InvalidRequestError(
            "timestamp_granularities needs response_format 'verbose_json'.",
            f"timestamp_granularities with response_format={response_format}",
        )
    params = build_params(
        **task_params(
            task=task,
            model=model,
            language=language,
            prompt=prompt,
            temperature=temperature,
            words="word" in granularities,
        )
    )
    accepted = await accept_upload(
        request, services, file, task_type=TaskType.speech_to_text, params=params
    )
    task_id = accepted.identifier
    timeout = services.config.sync_timeout_seconds
    done = await wait_for_task(services, task_id, timeout)
    if done is None:
        return _error_json(
            "timeout",
            f"The task did not finish within {timeout:g} s. It keeps running: read its result "
            f"later with GET /task/{task_id}.",
            504,
            retry=False,
        )
    if done.status is not TaskStatus.completed:
        return _task_error(done)
    return _answer(done, response_format, granularities, task, temperature)


def _task_error(task: TaskPublic) -> JSONResponse:
    """The failed (or cancelled) task's own error; its code decides the status."""
    if task.error is None:
        if task.status is TaskStatus.cancelled:
            return _error_json(
                "task_cancelled", "The task was cancelled before it finished.", 409, retry=False
            )
        return _error_json("processing_failed", "The task failed.", 500, retry=False)
    message = task.error.user_message
    if task.error.technical_detail:
        message = f"{message} ({task.error.technical_detail})"
    return _error_json(task.error.error_code, message, 500, retry=False)


def _answer(
    task: TaskPublic,
    response_format: ResponseFormat,
    granularities: list[Granularity],
    kind: Literal["transcribe", "translate"],
    temperature: float | None,
) -> Response:
    assert task.result is not None, "a completed task has a result"
    transcript = task.result
    if response_format == "json":
        return JSONResponse(OpenAITranscription(text=transcript.text).model_dump())
    if response_format == "verbose_json":
        body = verbose(
            task,
            kind=kind,
            segments=not granularities or "segment" in granularities,
            words="word" in granularities,
            temperature=temperature,
        )
        return JSONResponse(body.model_dump(exclude_none=True))
    if response_format == "text":
        return Response(transcript.text + "\n", media_type=ResultFormat.txt.media_type)
    fmt = ResultFormat(response_format)
    return Response(render(transcript, fmt, SubtitleOptions()), media_type=fmt.media_type)


_MODEL_DOC = (
    f"{' or '.join(repr(m) for m in DEFAULT_MODELS)} (or empty) = the deployment's default "
    "Whisper model; any other name must be one the ASR deployment serves."
)
_FORMAT_DOC = "`json`, `text`, `srt`, `vtt` or `verbose_json`."
_TEMPERATURE_DOC = "Sampling temperature 0–1; unset = the deployment's fallback schedule."

FileField = Annotated[
    UploadFile, File(description="Audio or video file (any format PyAV decodes).")
]
ModelField = Annotated[str, Form(max_length=200, description=_MODEL_DOC)]
PromptField = Annotated[
    str | None, Form(max_length=2000, description="Text to guide the style or continue a clip.")
]
FormatField = Annotated[ResponseFormat, Form(description=_FORMAT_DOC)]
TemperatureField = Annotated[float | None, Form(ge=0, le=1, description=_TEMPERATURE_DOC)]


@router.post(
    "/transcriptions",
    summary="Transcribe audio (OpenAI-compatible)",
    description=(
        "Compatible with OpenAI's `POST /v1/audio/transcriptions`: the official client works "
        "with `base_url=<service>/v1`. Waits for the task (at most `sync_timeout_seconds`); "
        "the task is durable, so it finishes even if the client leaves, and "
        "`GET /task/{identifier}` then has it. `verbose_json` segments carry Whisper's "
        "`avg_logprob` where known; `tokens`, `no_speech_prob` and `seek` are not kept by "
        "this service and come back empty or derived (`seek` from the segment start). "
        "Word timings come from wav2vec2 alignment (or Whisper where no aligner exists). "
        "No diarization: use `POST /speech-to-text` for speaker labels."
    ),
    response_model=OpenAITranscription | OpenAIVerboseTranscription,
    responses={**SUCCESS_RESPONSES, **ERROR_RESPONSES},
)
async def create_transcription(
    request: Request,
    services: ServicesDep,
    file: FileField,
    model: ModelField = "whisper-1",
    language: Annotated[
        str | None,
        Form(
            pattern=r"^([a-zA-Z-]{2,8})?$",
            description="ISO-639-1 code of the audio's language; unset = detect.",
        ),
    ] = None,
    prompt: PromptField = None,
    response_format: FormatField = "json",
    temperature: TemperatureField = None,
    timestamp_granularities: Annotated[
        list[Granularity] | None,
        Form(
            alias="timestamp_granularities[]",
            description="`word` and/or `segment`; `verbose_json` only. `word` adds alignment.",
        ),
    ] = None,
) -> Response:
    return await _run(
        request,
        services,
        file,
        task="transcribe",
        model=model,
        language=language or None,
        prompt=prompt or None,
        response_format=response_format,
        temperature=temperature,
        granularities=list(dict.fromkeys(timestamp_granularities or [])),
    )


@router.post(
    "/translations",
    summary="Translate audio into English text (OpenAI-compatible)",
    description=(
        "Compatible with OpenAI's `POST /v1/audio/translations`: Whisper's `translate` task. "
        "Needs a multilingual model: an English-only model (`*.en`) refuses with 400, since "
        "it cannot translate and the service will not pass a transcript off as a translation."
    ),
    response_model=OpenAITranscription | OpenAIVerboseTranscription,
    responses={**SUCCESS_RESPONSES, **ERROR_RESPONSES},
)
async def create_translation(
    request: Request,
    services: ServicesDep,
    file: FileField,
    model: ModelField = "whisper-1",
    prompt: PromptField = None,
    response_format: FormatField = "json",
    temperature: TemperatureField = None,
) -> Response:
    return await _run(
        request,
        services,
        file,
        task="translate",
        model=model,
        language=None,
        prompt=prompt or None,
        response_format=response_format,
        temperature=temperature,
        granularities=[],
    )
