"""``GET /task/{identifier}/result``: a finished task's transcript as a downloadable file."""

from __future__ import annotations

import asyncio
import re
from pathlib import PurePosixPath
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response
from pydantic import ValidationError

from common.errors import TaskNotFinishedError, validation_error_from
from common.schemas import TaskPublic, TaskStatus, Transcript
from ingress.auth import CallerDep, visible_task
from ingress.errors import error_responses
from ingress.formats import ResultFormat, SubtitleOptions, render, with_speaker_names
from ingress.services import ServicesDep

router = APIRouter()

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")

_CUE = "[SPEAKER_00]: And so, my fellow Americans"
_EXAMPLES = {
    ResultFormat.srt: f"1\n00:00:00,000 --> 00:00:02,500\n{_CUE}\n",
    ResultFormat.vtt: f"WEBVTT\n\n00:00.000 --> 00:02.500\n{_CUE}\n",
    ResultFormat.txt: f"{_CUE}\n",
    ResultFormat.tsv: "start\tend\ttext\n0\t2500\tAnd so, my fellow Americans\n",
}


def _content(fmt: ResultFormat) -> dict[str, object]:
    media = fmt.media_type.split(";")[0]
    if fmt is ResultFormat.json:
        return {media: {"schema": {"$ref": "#/components/schemas/Transcript"}}}
    return {media: {"schema": {"type": "string"}, "example": _EXAMPLES[fmt]}}


def download_stem(task: TaskPublic) -> str:
    """A header-safe file name stem: the upload's name without extension, else the task id."""
    if task.file_name:
        stem = _UNSAFE.sub("_", PurePosixPath(task.file_name).stem).strip("._-")[:100]
        if stem:
            return stem
    return task.identifier


async def subtitle_options(
    highlight_words: Annotated[
        bool, Query(description="srt/vtt: underline each word as it is spoken.")
    ] = False,
    max_line_width: Annotated[
        int | None, Query(ge=1, le=1000, description="srt/vtt: characters per line.")
    ] = None,
    max_line_count: Annotated[
        int | None,
        Query(ge=1, le=100, description="srt/vtt: lines per cue (with `max_line_width`)."),
    ] = None,
) -> SubtitleOptions:
    try:
        return SubtitleOptions(
            highlight_words=highlight_words,
            max_line_width=max_line_width,
            max_line_count=max_line_count,
        )
    except ValidationError as exc:
        raise validation_error_from(exc) from None


@router.get(
    "/task/{identifier}/result",
    tags=["Tasks Management"],
    summary="Download a completed task's transcript as json, srt, vtt, txt or tsv",
    description=(
        "`json` is the task's `Transcript` (as in `GET /task/{identifier}`); `srt`, `vtt`, "
        "`txt` and `tsv` are written by whisperx's own writers, with `[SPEAKER_xx]: ` labels "
        "when the task was diarized (or the names given with `PUT /task/{identifier}/speakers`"
        ", in every format). A diarize-only task gives one cue per speaker turn. "
        "The response is an attachment named after the uploaded file."
    ),
    response_class=Response,
    responses={
        200: {
            "description": "The transcript in the requested format.",
            "content": {k: v for fmt in ResultFormat for k, v in _content(fmt).items()},
        },
        **error_responses(404, 409, 422),
    },
)
async def get_task_result(
    identifier: str,
    services: ServicesDep,
    caller: CallerDep,
    options: Annotated[SubtitleOptions, Depends(subtitle_options)],
    format: Annotated[ResultFormat, Query(description="File format.")] = ResultFormat.json,
) -> Response:
    task = (await visible_task(services.db, caller, identifier)).to_public()
    if task.status is not TaskStatus.completed:
        hint = "" if task.status.terminal else " Try again once it has completed."
        raise TaskNotFinishedError(
            f"The task is {task.status.value}, not completed, so it has no result yet.{hint}",
            f"task {identifier[:64]!r} status={task.status.value}",
        )
    transcript = with_speaker_names(task.result or Transcript(), task.speaker_names)
    body = await asyncio.to_thread(render, transcript, format, options)
    return Response(
        content=body.encode("utf-8"),
        media_type=format.media_type,
        headers={
            "Content-Disposition": (
                f'attachment; filename="{download_stem(task)}.{format.extension}"'
            )
        },
    )
