"""Task routes: submit audio, read a task, poll its progress, list tasks."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Annotated

from fastapi import APIRouter, File, Query, Request, UploadFile
from pydantic import ValidationError

from common.errors import TaskNotFoundError, UploadTooLargeError, validation_error_from
from common.schemas import (
    AsrOptions,
    TaskAccepted,
    TaskParams,
    TaskProgress,
    TaskPublic,
    TaskStatus,
    TaskType,
)
from deployments.progress_state import state_from_row
from ingress.errors import error_responses
from ingress.services import ServicesDep
from ingress.uploads import display_name, save_upload, storage_path
from storage import repository

logger = logging.getLogger(__name__)
router = APIRouter()


def _not_found(identifier: str) -> TaskNotFoundError:
    return TaskNotFoundError("No task has this identifier.", f"task {identifier[:64]!r} not found")


@router.post(
    "/speech-to-text",
    response_model=TaskAccepted,
    tags=["Speech-2-Text"],
    summary="Transcribe an uploaded audio or video file",
    description=(
        "Stores the upload, queues a task and answers at once with its identifier. Follow "
        "progress over `WS /ws/tasks/{identifier}` or `GET /tasks/{identifier}/progress`; "
        "read the transcript with `GET /task/{identifier}`."
    ),
    responses=error_responses(413, 422, 503),
)
async def speech_to_text(
    request: Request,
    services: ServicesDep,
    file: Annotated[UploadFile, File(description="Audio or video file (any format PyAV decodes).")],
    language: Annotated[str | None, Query(description="Language code; unset = detect.")] = None,
    task: Annotated[
        str, Query(description="`transcribe` or `translate` (to English).")
    ] = "transcribe",
    batch_size: Annotated[int | None, Query(description="ASR batch size.")] = None,
    beam_size: Annotated[int | None, Query(description="Beam size for decoding.")] = None,
    initial_prompt: Annotated[str | None, Query(description="Prompt for the first window.")] = None,
    vad_onset: Annotated[float | None, Query(description="VAD onset threshold (0–1).")] = None,
    vad_offset: Annotated[float | None, Query(description="VAD offset threshold (0–1).")] = None,
    chunk_size: Annotated[
        int | None, Query(description="VAD chunk size in seconds (1–30).")
    ] = None,
    align: Annotated[bool, Query(description="Produce word-level timestamps.")] = True,
    diarize: Annotated[bool, Query(description="Label speakers.")] = True,
    num_speakers: Annotated[int | None, Query(description="Exact number of speakers.")] = None,
    min_speakers: Annotated[int | None, Query(description="Least number of speakers.")] = None,
    max_speakers: Annotated[int | None, Query(description="Most number of speakers.")] = None,
) -> TaskAccepted:
    try:
        params = TaskParams(
            asr=AsrOptions(
                language=language,
                task=task,  # validated by pydantic
                batch_size=batch_size,
                beam_size=beam_size,
                initial_prompt=initial_prompt,
                vad_onset=vad_onset,
                vad_offset=vad_offset,
                chunk_size=chunk_size,
            ),
            align=align,
            diarize=diarize,
            num_speakers=num_speakers,
            min_speakers=min_speakers,
            max_speakers=max_speakers,
        )
    except ValidationError as exc:
        raise validation_error_from(exc) from None

    limit = services.config.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + 64 * 1024:
        raise UploadTooLargeError(
            f"The file is larger than the {limit} bytes this service accepts.",
            f"content-length {declared} > max_upload_bytes={limit}",
        )
    task_id = uuid.uuid4().hex
    path = storage_path(services.settings.upload_dir(), task_id, file.filename)
    duration = await save_upload(file.file, path, limit)
    await asyncio.to_thread(
        repository.create_task,
        services.db,
        task_id=task_id,
        task_type=TaskType.speech_to_text,
        params=params,
        file_name=display_name(file.filename),
        audio_path=str(path),
        audio_duration=duration,
    )
    services.runner.notify()
    logger.info("task %s queued", task_id, extra={"task_id": task_id})
    return TaskAccepted(
        identifier=task_id,
        status=TaskStatus.queued,
        message="Task queued",
        progress_url=f"/tasks/{task_id}/progress",
        websocket_url=f"/ws/tasks/{task_id}",
    )


@router.get(
    "/task/all",
    response_model=list[TaskPublic],
    tags=["Tasks Management"],
    summary="List tasks, newest first",
)
async def list_tasks(
    services: ServicesDep,
    status: TaskStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[TaskPublic]:
    rows = await asyncio.to_thread(
        repository.list_tasks, services.db, status=status, limit=limit, offset=offset
    )
    return [row.to_public() for row in rows]


@router.get(
    "/task/{identifier}",
    response_model=TaskPublic,
    tags=["Tasks Management"],
    summary="A task: status, result, error and timings",
    responses=error_responses(404),
)
async def get_task(identifier: str, services: ServicesDep) -> TaskPublic:
    row = await asyncio.to_thread(repository.get_task, services.db, task_id=identifier)
    if row is None:
        raise _not_found(identifier)
    return row.to_public()


@router.get(
    "/tasks/{identifier}/progress",
    response_model=TaskProgress,
    tags=["Tasks Management"],
    summary="Current progress of a task (polling fallback to the WebSocket)",
    responses=error_responses(404),
)
async def get_task_progress(identifier: str, services: ServicesDep) -> TaskProgress:
    try:
        snap = await services.progress.snapshot(identifier)
    except Exception:  # tracker unreachable: the database is the durable copy
        logger.warning("progress tracker unavailable; reading the database", exc_info=True)
        row = await asyncio.to_thread(repository.get_task, services.db, task_id=identifier)
        snap = state_from_row(row).snapshot() if row is not None else None
    if snap is None:
        raise _not_found(identifier)
    return TaskProgress(
        identifier=snap.task_id,
        status=snap.status,
        progress_percentage=snap.percentage,
        progress_stage=snap.stage,
        error=snap.error.user_message if snap.error else None,
        error_code=snap.error.code if snap.error else None,
        seq=snap.seq,
    )
