"""``GET /task/{identifier}/audio``: the stored upload, streamed from the blob store with
range requests, for the page's player (seeking asks for byte ranges)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import Response

from common.errors import AudioNotFoundError
from common.schemas import TaskError
from ingress.auth import CallerDep, visible_task
from ingress.errors import error_responses
from ingress.media import MEDIA_TYPES, ranged_blob
from ingress.services import ServicesDep
from storage.blobs import BlobInfo, BlobStore

router = APIRouter()

_AUDIO_TYPES = sorted({*MEDIA_TYPES.values(), "application/octet-stream"})
_BINARY = {"schema": {"type": "string", "format": "binary"}}
_RANGE_HEADERS = {
    "Accept-Ranges": {"description": "Always `bytes`.", "schema": {"type": "string"}},
    "ETag": {"description": "Validator for `If-Range`.", "schema": {"type": "string"}},
}


def stored_audio(store: BlobStore, key: str | None) -> BlobInfo | None:
    """The task's stored upload, if its key names a file the blob store holds."""
    if not key:
        return None
    try:
        return store.info(key)
    except ValueError:  # not a key (a path from before the blob store, elsewhere)
        return None


@router.get(
    "/task/{identifier}/audio",
    tags=["Tasks Management"],
    summary="The task's stored audio or video file (HTTP range requests)",
    description=(
        "The file as it was uploaded (or downloaded from its URL), for playback next to the "
        "transcript. Supports one byte range per request (`Range: bytes=a-b`, `a-`, `-n`): "
        "206 with `Content-Range`; a range outside the file is a 416 whose `Content-Range` "
        "gives the size (`bytes */size`); a malformed or multi-range `Range`, or an `If-Range` "
        "that no longer matches, gets the whole file. 404 `audio_not_found` when the task "
        "has no stored file (single-stage tasks given JSON only)."
    ),
    response_class=Response,
    responses={
        200: {
            "description": "The whole file.",
            "content": {t: _BINARY for t in _AUDIO_TYPES},
            "headers": _RANGE_HEADERS,
        },
        206: {
            "description": "One byte range of the file.",
            "content": {t: _BINARY for t in _AUDIO_TYPES},
            "headers": {
                **_RANGE_HEADERS,
                "Content-Range": {"description": "`bytes a-b/size`.", "schema": {"type": "string"}},
            },
        },
        416: {
            "model": TaskError,
            "description": "The range lies outside the file.",
            "headers": {
                "Content-Range": {"description": "`bytes */size`.", "schema": {"type": "string"}}
            },
        },
        **error_responses(404),
    },
)
async def get_task_audio(
    identifier: str, request: Request, services: ServicesDep, caller: CallerDep
) -> Response:
    row = await visible_task(services.db, caller, identifier)  # only whoever may read the task
    key = row.audio_key
    info = await asyncio.to_thread(stored_audio, services.blobs, key)
    if key is None or info is None:
        raise AudioNotFoundError(
            "This task has no stored audio to play.", f"task {identifier[:64]!r} has no audio file"
        )
    try:
        return await ranged_blob(services.blobs, key, info, request.headers)
    except FileNotFoundError:  # deleted between the check and the read
        raise AudioNotFoundError(
            "This task has no stored audio to play.", f"task {identifier[:64]!r} audio is gone"
        ) from None
