"""The web page: ``GET /`` and its assets under ``/static/``, plain files, no build step;
and ``GET /models``, the model names the page's model choice offers.

Every asset answers with an ``ETag`` and ``Cache-Control: no-cache``: browsers keep their
copy and revalidate it with a cheap 304, so a new release shows at the next load without
fingerprinted file names. The page's own headers keep it to this origin (CSP).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from ingress.services import ServicesDep

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"

PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'self'; connect-src 'self' ws: wss:; media-src 'self' blob:; "
        "img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
}


class Assets(StaticFiles):
    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        for name, value in PAGE_HEADERS.items():
            response.headers.setdefault(name, value)
        return response


assets = Assets(directory=STATIC_DIR)
router = APIRouter()


@router.get("/", include_in_schema=False)
async def index(request: Request) -> Response:
    return await assets.get_response("index.html", request.scope)


class ServedModels(BaseModel):
    asr_models: list[str]
    """Names ``model=`` may take besides the default; empty when one model is served."""


@router.get(
    "/models",
    response_model=ServedModels,
    tags=["Speech-2-Text"],
    summary="The Whisper models a request may choose by name",
    description=(
        "The names in the ASR deployment's `asr.models`, each usable as the `model` option "
        "of the submitting routes; leaving `model` unset uses the default model."
    ),
)
async def served_models(services: ServicesDep) -> ServedModels:
    catalog = services.asr_catalog
    return ServedModels(asr_models=catalog.choices if catalog is not None else [])


def mount_page(app: FastAPI) -> None:
    app.include_router(router)
    app.mount("/static", assets, name="static")
