"""Accepting a task: one place that stores the row, wakes the runner and answers 202-style.

Every submitting route (uploads, URLs, single-stage ``/service/*`` routes, the OpenAI-style
endpoints) ends here, so all tasks share one record format and one queue.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

from fastapi import Request, UploadFile

from common import metrics
from common.errors import UploadTooLargeError
from common.logs import current_request_id
from common.schemas import TaskAccepted, TaskParams, TaskStatus, TaskType
from ingress.auth import Caller, caller_of, refused
from ingress.services import IngressServices
from ingress.uploads import display_name, save_upload, spool_path, upload_key
from storage import repository
from storage.quota import QuotaExceeded

logger = logging.getLogger(__name__)


def new_task_id() -> str:
    return uuid.uuid4().hex


def check_declared_size(headers: Any, limit: int) -> None:
    """Refuse before reading the body when Content-Length already exceeds the limit."""
    declared = headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + 64 * 1024:
        raise UploadTooLargeError(
            f"The file is larger than the {limit} bytes this service accepts.",
            f"content-length {declared} > max_upload_bytes={limit}",
        )


def check_params(services: IngressServices, params: TaskParams) -> None:
    """422 now for what the deployments could not do (an unknown model, a language the
    model lacks), instead of a task that fails later."""
    if services.asr_catalog is not None:
        services.asr_catalog.check(params.asr)


async def accept_task(
    services: IngressServices,
    *,
    task_id: str,
    task_type: TaskType,
    params: TaskParams,
    file_name: str | None,
    audio_key: str | None,
    audio_duration: float | None = None,
    inputs: dict[str, Any] | None = None,
    caller: Caller | None,
) -> TaskAccepted:
    """Insert the queued task, wake the runner, and describe where to follow it.

    The task belongs to ``caller``'s key and must fit its limits and the queue bound (429
    or 503 otherwise, and the stored audio ``audio_key`` is removed). ``caller=None`` is
    the Ray-native DeploymentHandle path: no owner, no limits.
    """
    check_params(services, params)
    if (request_id := current_request_id()) is not None:  # carried into the task's logs
        inputs = {**(inputs or {}), "request_id": request_id}
    try:
        await asyncio.to_thread(
            repository.create_task,
            services.db,
            task_id=task_id,
            task_type=task_type,
            params=params,
            file_name=file_name,
            audio_key=audio_key,
            audio_duration=audio_duration,
            inputs=inputs,
            owner_key_id=caller.key_id if caller else None,
            quota=caller.quota(services.config) if caller else None,
        )
    except QuotaExceeded as exc:
        if audio_key is not None:
            await asyncio.to_thread(services.blobs.delete, audio_key)
        raise refused(exc.refusal) from None
    services.runner.notify()
    metrics.record_submitted(task_type.value)
    logger.info("task %s queued (%s)", task_id, task_type.value, extra={"task_id": task_id})
    return TaskAccepted(
        identifier=task_id,
        status=TaskStatus.queued,
        message="Task queued",
        progress_url=f"/tasks/{task_id}/progress",
        websocket_url=f"/ws/tasks/{task_id}",
    )


async def accept_upload(
    request: Request,
    services: IngressServices,
    file: UploadFile,
    *,
    task_type: TaskType,
    params: TaskParams,
    inputs: dict[str, Any] | None = None,
) -> TaskAccepted:
    """Probe an uploaded file, put it into the blob store, and queue its task."""
    check_params(services, params)
    limit = services.config.max_upload_bytes
    check_declared_size(request.headers, limit)
    caller = caller_of(request)
    task_id = new_task_id()
    key = upload_key(task_id, file.filename)
    duration = await save_upload(
        services.blobs,
        file.file,
        spool_path(services.settings.spool_dir(), key),
        key,
        limit,
        max_seconds=services.config.max_audio_seconds,
    )
    return await accept_task(
        services,
        task_id=task_id,
        task_type=task_type,
        params=params,
        file_name=display_name(file.filename),
        audio_key=key,
        audio_duration=duration,
        inputs=inputs,
        caller=caller,
    )
