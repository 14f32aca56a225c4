"""``POST /speech-to-text-url``: download audio from a URL, then queue it like an upload.

The download goes through :mod:`common.netguard` (http/https only, public addresses only
unless allowlisted, every redirect re-checked, size and time bounded) into this node's
spool directory; from there it is probed and stored like an upload, under the key
``<task_id><ext>`` of the blob store.
"""

from __future__ import annotations

from typing import Annotated

import httpx
from fastapi import APIRouter, Form

from common.config import IngressConfig
from common.netguard.transport import FetchLimits, fetch_to_file
from common.schemas import TaskAccepted, TaskType
from ingress.auth import CallerDep
from ingress.errors import error_responses
from ingress.params import SpeechParams
from ingress.services import ServicesDep
from ingress.submit import accept_task, check_params, new_task_id
from ingress.uploads import display_name, spool_path, store_spooled, upload_key

router = APIRouter()


def url_file_name(url: str) -> str | None:
    """The URL path's last segment, percent-decoded and sanitised, shown as the file name."""
    try:
        path = httpx.URL(url).path
    except (httpx.InvalidURL, TypeError, ValueError):
        return None
    return display_name(path.rsplit("/", 1)[-1])


def download_limits(config: IngressConfig) -> FetchLimits:
    return FetchLimits(
        max_bytes=config.max_download_bytes or config.max_upload_bytes,
        connect_timeout=config.download_connect_timeout_seconds,
        read_timeout=config.download_read_timeout_seconds,
        total_timeout=config.download_timeout_seconds,
        max_redirects=config.download_max_redirects,
    )


@router.post(
    "/speech-to-text-url",
    response_model=TaskAccepted,
    tags=["Speech-2-Text"],
    summary="Transcribe audio or video downloaded from a URL",
    description=(
        "Downloads the file at `url` (a form field), stores it like an upload, queues a "
        "task and answers with its identifier; the options are those of "
        "`POST /speech-to-text`. Only `http`/`https` URLs without credentials whose host "
        "resolves to public addresses are fetched (`url_not_allowed` otherwise, also for "
        "any redirect hop); the download is bounded in size (`upload_too_large`) and time "
        "(`download_failed`, like any failure to fetch the file)."
    ),
    responses=error_responses(413, 422, 429, 503),
)
async def speech_to_text_url(
    services: ServicesDep,
    caller: CallerDep,
    params: SpeechParams,
    url: Annotated[
        str,
        Form(
            min_length=1,
            max_length=2048,
            description="http(s) URL of the audio or video file to transcribe.",
        ),
    ],
) -> TaskAccepted:
    check_params(services, params)  # before the download, not after
    task_id = new_task_id()
    file_name = url_file_name(url)
    key = upload_key(task_id, file_name)
    spooled = spool_path(services.settings.spool_dir(), key)
    fetched = await fetch_to_file(
        url,
        spooled,
        limits=download_limits(services.config),
        allow_networks=services.settings.url_fetch_allow_networks,
    )
    duration = await store_spooled(
        services.blobs,
        spooled,
        key,
        fetched.size,
        source="downloaded",
        max_seconds=services.config.max_audio_seconds,
    )
    return await accept_task(
        services,
        task_id=task_id,
        task_type=TaskType.speech_to_text,
        params=params,
        file_name=file_name,
        audio_key=key,
        audio_duration=duration,
        caller=caller,
    )
