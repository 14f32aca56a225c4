"""``PUT /task/{identifier}/speakers``: names for a task's diarized speakers.

The names are kept with the task (``speaker_names`` in ``GET /task/{identifier}``) and
shown in every result download; the stored transcript keeps its ``SPEAKER_xx`` labels, so
a rename can always be undone.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from common.errors import InvalidRequestError, TaskNotFinishedError
from common.schemas import TaskStatus
from ingress.auth import CallerDep, task_not_found, visible_task
from ingress.errors import error_responses
from ingress.services import ServicesDep
from storage import repository

router = APIRouter()

SpeakerLabel = Annotated[str, StringConstraints(min_length=1, max_length=64)]
SpeakerName = Annotated[
    str, StringConstraints(strip_whitespace=True, max_length=100, pattern=r"^[^\x00-\x1f\x7f]*$")
]


class SpeakerNames(BaseModel):
    """Display names by diarized label, e.g. ``{"SPEAKER_00": "Alice"}``. The mapping
    replaces the task's previous names; an empty name (or a label left out) shows the
    label again."""

    model_config = ConfigDict(extra="forbid")

    names: Annotated[dict[SpeakerLabel, SpeakerName], Field(max_length=100)]


class TaskSpeakers(BaseModel):
    identifier: str
    names: dict[str, str]
    """The names now kept with the task (empty names dropped)."""


@router.put(
    "/task/{identifier}/speakers",
    response_model=TaskSpeakers,
    tags=["Tasks Management"],
    summary="Name a completed task's speakers",
    description=(
        "Replaces the task's speaker names. Each key must be one of the task's diarized "
        "labels (`result.speakers`); the names appear in `GET /task/{identifier}` "
        "(`speaker_names`) and in every `GET /task/{identifier}/result` format "
        "(`[Alice]: ` in srt/vtt/txt). 409 while the task has not completed."
    ),
    responses=error_responses(404, 409, 422),
)
async def put_task_speakers(
    identifier: str, body: SpeakerNames, services: ServicesDep, caller: CallerDep
) -> TaskSpeakers:
    row = await visible_task(services.db, caller, identifier)
    task = row.to_public()
    if task.status is not TaskStatus.completed or task.result is None:
        raise TaskNotFinishedError(
            f"The task is {task.status.value}; speakers can be named once it has completed.",
            f"task {identifier[:64]!r} status={task.status.value}",
        )
    known = set(task.result.speakers)
    unknown = sorted(set(body.names) - known)
    if unknown:
        raise InvalidRequestError(
            f"This task has no speaker {unknown[0]!r}; its speakers are "
            f"{', '.join(sorted(known)) or 'none'}.",
            f"unknown speaker labels {unknown[:5]!r}",
        )
    names = {label: name for label, name in body.names.items() if name}
    updated = await asyncio.to_thread(
        repository.set_speaker_names, services.db, task_id=identifier, names=names
    )
    services.finished.evict(identifier)  # its kept answer has the old names
    if updated is None:  # deleted meanwhile
        raise task_not_found(identifier)
    return TaskSpeakers(identifier=identifier, names=dict(updated.speaker_names or {}))
