"""Liveness and readiness.

Readiness needs the database, the tracker and every deployment. Redis is optional: when it
is down the actor carries progress events alone, so readiness stays 200 but says
``degraded`` and why.
"""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from ingress.services import IngressServices, ServicesDep

logger = logging.getLogger(__name__)
router = APIRouter(tags=["Health"])


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
    checks: dict[str, str] = {}

    async def check(name: str, probe: asyncio.Future[object] | asyncio.Task[object]) -> None:
        try:
            await asyncio.wait_for(probe, timeout)
            checks[name] = "ok"
        except Exception as exc:
            checks[name] = f"{type(exc).__name__}: {exc}"[:200] or type(exc).__name__

    await check("database", asyncio.ensure_future(asyncio.to_thread(services.db.ping)))
    await check("progress_tracker", asyncio.ensure_future(services.progress.ping()))
    try:
        checks.update(await asyncio.wait_for(services.deployments_ready(), timeout))
    except Exception as exc:
        checks["deployments"] = f"{type(exc).__name__}: {exc}"[:200]
    ok = all(v == "ok" for v in checks.values())
    checks["redis"] = await _redis_check(services, timeout)
    degraded = checks["redis"] not in ("ok", "not configured")
    state = "unavailable" if not ok else "degraded" if degraded else "ok"
    body = HealthStatus(status=state, checks=checks)
    return JSONResponse(status_code=200 if ok else 503, content=body.model_dump())


async def _redis_check(services: IngressServices, timeout: float) -> str:
    if services.events is None:
        return "not configured"
    try:
        return await asyncio.wait_for(services.events.health(), timeout)
    except Exception as exc:
        return f"unavailable: {type(exc).__name__}: {exc}"[:200]
