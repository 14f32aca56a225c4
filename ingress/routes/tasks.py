"""Task routes: submit audio, list, read, cancel and delete tasks, poll their progress."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, File, Query, Request, Response, UploadFile
from pydantic import BeforeValidator

from common.schemas import (
    TaskAccepted,
    TaskDeleted,
    TaskPage,
    TaskProgress,
    TaskPublic,
    TaskStatus,
    TaskType,
)
from deployments.progress_state import state_from_row
from ingress.auth import Caller, CallerDep, task_not_found, visible_task
from ingress.errors import error_responses
from ingress.params import SpeechParams
from ingress.services import IngressServices, ServicesDep
from ingress.submit import accept_upload
from storage import repository

logger = logging.getLogger(__name__)
router = APIRouter()


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
    responses=error_responses(413, 422, 429, 503),
)
async def speech_to_text(
    request: Request,
    services: ServicesDep,
    params: SpeechParams,
    file: Annotated[UploadFile, File(description="Audio or video file (any format PyAV decodes).")],
) -> TaskAccepted:
    return await accept_upload(
        request, services, file, task_type=TaskType.speech_to_text, params=params
    )


def _iso_only(value: object) -> object:
    """ISO 8601 only: pydantic would take a bare number (``0.5``) as a Unix time."""
    if isinstance(value, int | float) or (
        isinstance(value, str) and value.strip().lstrip("+-").replace(".", "", 1).isdigit()
    ):
        raise ValueError("expected an ISO 8601 date-time, not a number")
    return value


IsoDateTime = Annotated[datetime, BeforeValidator(_iso_only)]


@router.get(
    "/task/all",
    response_model=TaskPage,
    tags=["Tasks Management"],
    summary="List tasks with filters, paging and sorting",
    responses=error_responses(422),
)
async def list_tasks(
    services: ServicesDep,
    caller: CallerDep,
    status: Annotated[TaskStatus | None, Query(description="Only tasks in this status.")] = None,
    task_type: Annotated[TaskType | None, Query(description="Only tasks of this type.")] = None,
    created_after: Annotated[
        IsoDateTime | None, Query(description="Created at or after (ISO 8601).")
    ] = None,
    created_before: Annotated[
        IsoDateTime | None, Query(description="Created before (ISO 8601).")
    ] = None,
    sort: Annotated[
        Literal["newest", "oldest"], Query(description="Order by creation time.")
    ] = "newest",
    limit: Annotated[int, Query(ge=1, le=1000, description="Page size.")] = 100,
    offset: Annotated[int, Query(ge=0, le=10**9, description="Tasks to skip.")] = 0,
) -> TaskPage:
    filters = repository.TaskFilter(
        status=status,
        task_type=task_type,
        created_after=_aware(created_after),
        created_before=_aware(created_before),
        owner_key_id=caller.owner_scope,
    )
    rows, total = await asyncio.to_thread(
        repository.list_tasks,
        services.db,
        filters=filters,
        limit=limit,
        offset=offset,
        newest_first=sort == "newest",
    )
    return TaskPage(
        tasks=[row.to_public().redacted() for row in rows], total=total, limit=limit, offset=offset
    )


def _aware(value: datetime | None) -> datetime | None:
    """Naive times are taken as UTC."""
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


@router.get(
    "/task/{identifier}",
    response_model=TaskPublic,
    tags=["Tasks Management"],
    summary="A task: status, result, error and timings",
    responses=error_responses(404),
)
async def get_task(identifier: str, services: ServicesDep, caller: CallerDep) -> Response:
    kept = services.finished.body("task", identifier, caller.owner_scope)
    if kept is not None:
        return _json(kept)
    row = await visible_task(services.db, caller, identifier)
    body = row.to_public().redacted().model_dump_json().encode()
    if TaskStatus(row.status).terminal:
        services.finished.put("task", identifier, body, owner_key_id=row.owner_key_id)
    return _json(body)


def _json(body: bytes) -> Response:
    """A body already serialised from its response model (``response_model`` documents it)."""
    return Response(body, media_type="application/json")


@router.post(
    "/task/{identifier}/cancel",
    response_model=TaskProgress,
    tags=["Tasks Management"],
    summary="Cancel a queued or running task",
    description=(
        "A queued task is cancelled at once. A running task is stopped at once (its model "
        "call is cancelled; the model stops at its next progress step) and then ends "
        "`cancelled`; watchers get a `cancelled` event. Cancelling a finished task changes "
        "nothing."
    ),
    responses=error_responses(404, 503),
)
async def cancel_task(identifier: str, services: ServicesDep, caller: CallerDep) -> Response:
    await visible_task(services.db, caller, identifier)
    # The runner makes the transition (and publishes it, and sends the callback of a task
    # that was still queued) before it answers, so the progress read below shows it.
    if await services.runner.cancel(identifier) is None:
        raise task_not_found(identifier)
    return await get_task_progress(identifier, services, caller)


@router.delete(
    "/task/{identifier}/delete",
    response_model=TaskDeleted,
    tags=["Tasks Management"],
    summary="Delete a task and its stored audio",
    description="A task still queued or running is cancelled first.",
    responses=error_responses(404),
)
async def delete_task(identifier: str, services: ServicesDep, caller: CallerDep) -> TaskDeleted:
    row = await visible_task(services.db, caller, identifier)
    if not TaskStatus(row.status).terminal:
        try:
            await services.runner.cancel(identifier)
        except Exception:  # whatever stopped the cancel: the row goes anyway, and the run
            # that still holds it finds nothing to finish
            logger.warning("could not cancel task %s before deleting it", identifier, exc_info=True)
    deleted = await asyncio.to_thread(repository.delete_task, services.db, task_id=identifier)
    services.finished.evict(identifier)  # after the delete: a read meanwhile kept it again
    if deleted is None:
        raise task_not_found(identifier)
    if deleted.audio_key:  # the database store's copy went with the row
        await asyncio.to_thread(services.blobs.delete, deleted.audio_key)
    try:
        await services.progress.forget(identifier)
    except Exception:  # its live state is evicted later anyway
        logger.warning("tracker could not drop deleted task %s", identifier, exc_info=True)
    logger.info("task %s deleted", identifier, extra={"task_id": identifier})
    return TaskDeleted(identifier=identifier, message="Task deleted")


@router.get(
    "/tasks/{identifier}/progress",
    response_model=TaskProgress,
    tags=["Tasks Management"],
    summary="Current progress of a task (polling fallback to the WebSocket)",
    responses=error_responses(404),
)
async def get_task_progress(identifier: str, services: ServicesDep, caller: CallerDep) -> Response:
    kept = services.finished.body("progress", identifier, caller.owner_scope)
    if kept is not None:
        return _json(kept)
    return _json(await _progress_body(identifier, services, caller))


async def _progress_body(identifier: str, services: IngressServices, caller: Caller) -> bytes:
    owner: str | None = None
    owner_known = caller.owner_scope is not None
    if owner_known:  # auth on, not an admin: is it this key's task?
        owner = (await visible_task(services.db, caller, identifier)).owner_key_id
    try:
        snap = await services.progress.snapshot(identifier)
    except Exception:  # tracker unreachable: the database is the durable copy
        logger.warning("progress tracker unavailable; reading the database", exc_info=True)
        row = await asyncio.to_thread(repository.get_task, services.db, task_id=identifier)
        snap = state_from_row(row).snapshot() if row is not None else None
    if snap is None:
        raise task_not_found(identifier)
    position = None
    if snap.status is TaskStatus.queued:
        position = await asyncio.to_thread(
            repository.queue_position, services.db, task_id=identifier
        )
    body = TaskProgress.from_snapshot(snap, queue_position=position).model_dump_json().encode()
    if snap.status.terminal:
        services.finished.put(
            "progress", identifier, body, owner_key_id=owner, owner_known=owner_known
        )
    return body
