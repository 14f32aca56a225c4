"""Liveness and readiness.

Readiness needs the database, the tracker and every deployment. Redis is optional: when it
is down the actor carries progress events alone, so readiness stays 200 but says
``degraded`` and why.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from ingress.services import IngressServices, ServicesDep

logger = logging.getLogger(__name__)
router = APIRouter(tags=["Health"])
T = TypeVar("T")


class HealthStatus(BaseModel):
    status: str
    """``ok``; ``degraded`` (working, an optional part such as Redis is down); or
    ``unavailable`` (HTTP 503)."""
    checks: dict[str, str] = {}
    """Each component: ``ok`` or what is wrong (``redis`` may also be ``not configured``)."""


@router.get("/health", response_model=HealthStatus, summary="The ingress answers")
async def health() -> HealthStatus:
    return HealthStatus(status="ok")


@router.get("/health/live", response_model=HealthStatus, summary="Liveness probe")
async def live() -> HealthStatus:
    return HealthStatus(status="ok")


@router.get(
    "/health/ready",
    response_model=HealthStatus,
    summary="Readiness: database, progress tracker, every deployment, Redis if configured",
    responses={503: {"model": HealthStatus, "description": "A component is not ready"}},
)
async def ready(services: ServicesDep) -> JSONResponse:
    timeout = services.config.ready_timeout_seconds

    def failure(exc: Exception) -> str:
        if isinstance(exc, TimeoutError):
            return f"no answer within {timeout:g} s"
        return f"{type(exc).__name__}: {exc}"[:200]

    async def check(probe: Awaitable[object]) -> str:
        try:
            await asyncio.wait_for(probe, timeout)
            return "ok"
        except Exception as exc:
            return failure(exc)

    async def deployments() -> dict[str, str]:
        try:
            return await asyncio.wait_for(services.deployments_ready(), timeout)
        except Exception as exc:
            return {"deployments": failure(exc)}

    database, tracker, deployment_checks, redis = await asyncio.gather(
        check(run_probe(services.db.ping)),
        check(services.progress.ping()),
        deployments(),
        _redis_check(services, timeout),
    )
    checks = {"database": database, "progress_tracker": tracker, **deployment_checks}
    ok = all(v == "ok" for v in checks.values())
    checks["redis"] = redis
    degraded = redis not in ("ok", "not configured")
    state = "unavailable" if not ok else "degraded" if degraded else "ok"
    if not ok:
        logger.warning("not ready: %s", {k: v for k, v in checks.items() if v != "ok"})
    body = HealthStatus(status=state, checks=checks)
    return JSONResponse(status_code=200 if ok else 503, content=body.model_dump())


def run_probe(probe: Callable[[], T]) -> Awaitable[T]:
    """Run a blocking probe on the readiness threads.

    Not on the default executor: under a burst of uploads that one queues request work (a
    SQLite write waits for the write lock for seconds), and a probe waiting behind it would
    report a busy replica as a broken one.
    """
    return asyncio.get_running_loop().run_in_executor(_PROBE_THREADS, probe)


_PROBE_THREADS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="readiness")


async def _redis_check(services: IngressServices, timeout: float) -> str:
    if services.events is None:
        return "not configured"
    try:
        return await asyncio.wait_for(services.events.health(), timeout)
    except Exception as exc:
        return f"unavailable: {type(exc).__name__}: {exc}"[:200]
