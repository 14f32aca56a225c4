"""One mapping from errors to HTTP responses, keyed on ServiceError.status_code; every
body is a ``TaskError`` (``/v1`` answers in OpenAI's shape, see routes/openai_compat.py)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from common.errors import RetryLaterError, ServiceError, as_service_error, validation_error_from
from common.schemas import TaskError

logger = logging.getLogger(__name__)


def error_responses(*codes: int) -> dict[int | str, dict[str, object]]:
    """OpenAPI ``responses=`` entry documenting the error body (a ``TaskError``) for ``codes``."""
    return {code: {"model": TaskError} for code in codes}


def response_for(exc: BaseException) -> JSONResponse:
    err = as_service_error(exc)
    headers = getattr(exc, "headers", None)  # Starlette's 405 carries ``Allow``
    if err.status_code >= 500:
        logger.error("request failed: %s", err, exc_info=exc)
    else:
        logger.warning("request rejected: %s", err)
    body = TaskError.from_exception(err)
    return JSONResponse(
        status_code=err.status_code,
        content=body.model_dump(),
        headers={**(headers if isinstance(headers, dict) else {}), **retry_after(err)} or None,
    )


def retry_after(err: ServiceError) -> dict[str, str]:
    """The ``Retry-After`` header of a refusal the caller may retry (429, 503)."""
    if isinstance(err, RetryLaterError):
        return {"Retry-After": str(err.retry_after_seconds)}
    return {}


def install_error_handlers(app: FastAPI) -> None:
    async def on_service_error(_: Request, exc: Exception) -> JSONResponse:
        return response_for(exc)

    async def on_validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return response_for(validation_error_from(exc))

    app.add_exception_handler(ServiceError, on_service_error)
    app.add_exception_handler(StarletteHTTPException, on_service_error)  # 404, 405, bad multipart
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(Exception, on_service_error)


def document_error_shape(app: FastAPI) -> None:
    """Make the OpenAPI document say what the handlers above actually send.

    FastAPI documents request-validation failures as its own ``HTTPValidationError``; here
    they are answered with ``TaskError`` like every other error, so the document
    points every 422 at that model. Operations with a body document the 400 a malformed
    body gets, and every operation the 500 an unexpected failure gets.
    """
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        spec = build()
        ref = {"$ref": "#/components/schemas/TaskError"}
        body = {"application/json": {"schema": ref}}
        schemas = spec.setdefault("components", {}).setdefault("schemas", {})
        schemas.setdefault("TaskError", TaskError.model_json_schema())
        for operations in spec.get("paths", {}).values():
            for operation in operations.values():
                responses = operation.setdefault("responses", {})
                invalid = responses.get("422")
                if invalid is not None and "HTTPValidationError" in str(invalid):
                    responses["422"] = {"description": "Invalid request", "content": body}
                if "requestBody" in operation:
                    responses.setdefault(
                        "400", {"description": "Malformed request body", "content": body}
                    )
                    responses.setdefault(
                        "408", {"description": "The body did not arrive in time", "content": body}
                    )
                if "multipart/form-data" in operation.get("requestBody", {}).get("content", {}):
                    _document_content_checks(responses)
                responses.setdefault(
                    "500", {"description": "Unexpected server error", "content": body}
                )
        _forms_without_null(spec)
        for name in ("HTTPValidationError", "ValidationError"):
            if name not in str(spec.get("paths")):
                schemas.pop(name, None)
        app.openapi_schema = spec
        return spec

    app.openapi = openapi  # type: ignore[method-assign]


_FORMS = ("multipart/form-data", "application/x-www-form-urlencoded")


def _forms_without_null(spec: dict[str, Any]) -> None:
    """A form field is sent or left out; it cannot be JSON ``null``. FastAPI documents an
    optional field as ``anyOf: [T, null]``, which invites clients (and schemathesis) to send
    the text ``null``; say ``T`` instead (the field stays optional)."""
    schemas = spec.get("components", {}).get("schemas", {})
    for operations in spec.get("paths", {}).values():
        for operation in operations.values():
            content = operation.get("requestBody", {}).get("content", {})
            for media in _FORMS:
                ref = content.get(media, {}).get("schema", {}).get("$ref", "")
                body = schemas.get(ref.rsplit("/", 1)[-1]) if ref else None
                for prop in (body or {}).get("properties", {}).values():
                    branches = prop.get("anyOf")
                    if not branches:
                        continue
                    kept = [b for b in branches if b.get("type") != "null"]
                    if len(kept) == 1:
                        prop.pop("anyOf")
                        prop.update({k: v for k, v in kept[0].items() if k not in prop})
                    else:
                        prop["anyOf"] = kept


_CONTENT_422 = (
    "Invalid request, or a file whose content the schema cannot describe is unusable: "
    "not decodable audio (`invalid_audio`), empty (`empty_upload`), longer than the service "
    "accepts (`audio_too_long`), or JSON that is not a transcript/diarization "
    "(`invalid_request`)."
)


def _document_content_checks(responses: dict[str, Any]) -> None:
    """Uploads are ``format: binary`` in the schema, yet must hold audio (or JSON): say
    that such a schema-valid file can still get a 422 (/v1 says so in its own 400)."""
    if "422" in responses:
        responses["422"]["description"] = _CONTENT_422
