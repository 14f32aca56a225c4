"""The FastAPI application and the Serve ingress deployment that hosts it."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from ray import serve

from common.config import IngressConfig
from common.errors import UploadTooLargeError
from common.logs import configure_service_logging, log_context
from common.schemas import TaskAccepted, TaskParams, TaskPublic, TaskSnapshot, TaskType
from common.settings import Settings
from deployments.audio import require_shared_blob_store
from deployments.clients import ProgressClient, RunnerClient
from deployments.events_bus import EventsBusConfig
from deployments.progress import TrackerHandle
from ingress.auth import install_auth, log_auth_state
from ingress.catalog import AsrCatalog
from ingress.errors import document_error_shape, install_error_handlers
from ingress.events_reader import RedisEventReader
from ingress.hot_reads import FinishedTasks
from ingress.limits import RequestLimitsMiddleware
from ingress.request_id import RequestIdMiddleware, serve_request_id
from ingress.routes import audio, health, openai_compat, results, speakers, stages, tasks
from ingress.routes.page import mount_page
from ingress.routes.url import router as url_router
from ingress.services import IngressServices
from ingress.submit import accept_task, new_task_id
from ingress.sync import wait_for_task
from ingress.uploads import display_name, spool_path, store_spooled, upload_key
from ingress.ws import router as ws_router
from storage.blobs import blob_store_from
from storage.db import Database, migrate

logger = logging.getLogger(__name__)

DESCRIPTION = """
WhisperX speech-to-text as a Ray Serve deployment graph: Whisper ASR, wav2vec2 word
alignment and pyannote speaker diarization, each its own deployment.

Submit audio with `POST /speech-to-text`; follow the task over `WS /ws/tasks/{identifier}`
(snapshot, then events with a per-task `seq`, then a normal close) or poll
`GET /tasks/{identifier}/progress`; read the result with `GET /task/{identifier}`.
"""


def create_app(services: IngressServices) -> FastAPI:
    app = FastAPI(title="whisperx-serve", version="0.1.0", description=DESCRIPTION)
    app.state.services = services
    install_error_handlers(app)
    document_error_shape(app)
    app.include_router(tasks.router)
    app.include_router(url_router)
    app.include_router(results.router)
    app.include_router(openai_compat.router)
    app.include_router(stages.router)
    app.include_router(health.router)
    app.include_router(ws_router)
    app.include_router(audio.router)
    app.include_router(speakers.router)
    mount_page(app)
    # Starlette runs the last added middleware outermost: CORS, request id, limits, auth.
    install_auth(app, services.db, services.config)
    app.add_middleware(RequestLimitsMiddleware, config=services.config)
    app.add_middleware(RequestIdMiddleware)  # limit and auth answers carry the id too
    if services.config.cors_origins:  # outermost: preflights and 401s get CORS headers too
        app.add_middleware(
            CORSMiddleware,
            allow_origins=services.config.cors_origins,
            allow_methods=["GET", "POST", "PUT", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
            expose_headers=["Retry-After", "Content-Disposition", "X-Request-ID"],
            max_age=600,
        )
    return app


_SERVING = {"HEALTHY", "UPSCALING", "DOWNSCALING"}


async def serve_deployment_statuses(app_name: str) -> dict[str, str]:
    """Each deployment of this app: "ok" when HEALTHY, else its status and message."""
    status = await health.run_probe(serve.status)
    app_status = status.applications.get(app_name)
    if app_status is None:
        return {"application": f"application {app_name!r} not found"}
    result: dict[str, str] = {}
    for name, dep in app_status.deployments.items():
        healthy = dep.status.value in _SERVING  # autoscaling still serves
        result[f"deployment:{name}"] = (
            "ok" if healthy else f"{dep.status.value}: {dep.message}"[:200]
        )
    return result


# Every open WebSocket is an ongoing request: room for thousands of watchers besides HTTP.
@serve.deployment(name="Ingress", ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=4000)
@serve.ingress()
class Ingress:
    async def __init__(  # type: ignore[misc]  # Serve runs async constructors
        self,
        runner: Any,
        *,
        tracker: Any,
        app_name: str,
        config: IngressConfig,
        asr_catalog: AsrCatalog | None = None,
    ) -> None:
        settings = Settings()
        configure_service_logging(settings.log_level)
        url = settings.resolved_database_url()
        db = Database(url)
        blobs = blob_store_from(settings, db)
        require_shared_blob_store(blobs)  # before anything else: several nodes, local dir
        await asyncio.to_thread(migrate, url)
        serve_app_name = serve.get_replica_context().app_name

        async def deployments_ready() -> dict[str, str]:
            return await serve_deployment_statuses(serve_app_name)

        async def publisher_state() -> str:  # a health probe: no waiting for a replacement
            return str(await tracker.redis_state.remote())

        bus = EventsBusConfig.from_settings(settings, app_name)
        self._services = IngressServices(
            settings=settings,
            config=config,
            db=db,
            blobs=blobs,
            progress=ProgressClient(TrackerHandle(tracker)),
            runner=RunnerClient(runner),
            deployments_ready=deployments_ready,
            events=RedisEventReader(bus, publisher_state=publisher_state) if bus else None,
            asr_catalog=asr_catalog,
            finished=FinishedTasks(
                max_bytes=config.finished_cache_bytes, ttl_s=config.finished_cache_seconds
            ),
        )
        await asyncio.to_thread(log_auth_state, self._services.db, config)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_app(self._services)

    # ---------------------------------------------------------------- DeploymentHandle API
    # For code already on the cluster (see ingress/batch.py): the same task records, queue
    # and progress as the HTTP routes, without going through HTTP.

    async def submit(
        self,
        audio: bytes,
        file_name: str | None = None,
        params: TaskParams | None = None,
    ) -> TaskAccepted:
        """Queue a speech-to-text task for ``audio`` (the file's bytes, any format)."""
        with log_context(request_id=serve_request_id()):
            return await self._submit(audio, file_name, params)

    async def _submit(
        self, audio: bytes, file_name: str | None, params: TaskParams | None
    ) -> TaskAccepted:
        services = self._services
        if len(audio) > services.config.max_upload_bytes:
            raise UploadTooLargeError(
                f"The file is larger than the {services.config.max_upload_bytes} bytes this "
                "service accepts.",
                f"{len(audio)} bytes > max_upload_bytes",
            )
        task_id = new_task_id()
        key = upload_key(task_id, file_name)
        spooled = spool_path(services.settings.spool_dir(), key)
        await asyncio.to_thread(spooled.write_bytes, audio)
        duration = await store_spooled(
            services.blobs, spooled, key, len(audio), max_seconds=services.config.max_audio_seconds
        )
        return await accept_task(
            services,
            task_id=task_id,
            task_type=TaskType.speech_to_text,
            params=params or TaskParams(),
            file_name=display_name(file_name),
            audio_key=key,
            audio_duration=duration,
            caller=None,  # cluster code: no key, no limits; admin keys see these tasks
        )

    async def wait(self, task_id: str, timeout_s: float = 3600.0) -> TaskPublic | None:
        """The task once it has ended, or ``None`` if it still runs after ``timeout_s``."""
        task = await wait_for_task(self._services, task_id, timeout_s)
        return task.redacted() if task is not None else None

    async def progress(self, task_id: str) -> TaskSnapshot | None:
        return await self._services.progress.snapshot(task_id)
