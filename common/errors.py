"""One error hierarchy for the whole service.

Every error carries a stable ``code``, the HTTP ``status_code`` it maps to, a message fit
for an end user and a one-line technical detail (no traceback, no secrets). Constructor
arguments equal ``self.args`` so instances pickle across Ray process boundaries intact.
"""

from __future__ import annotations

import re
from typing import ClassVar

_SECRET_PATTERNS = (
    re.compile(r"(hf_)[A-Za-z0-9]{8,}"),
    re.compile(r"(://[^:/@\s]+:)[^@\s]+(@)"),  # user:password@ in URLs
    re.compile(r"((?:token|password|secret|api_key)=)[^&\s]+", re.IGNORECASE),
    # Ray internals (actor ids, process ids, node addresses) belong in logs only
    re.compile(r"((?:actor_id|worker_id|node_id|job_id)[=:]\s*)[0-9a-f]{8,}", re.I),
    re.compile(r"(\bpid[=:]\s*)\d+", re.IGNORECASE),
    re.compile(r"(\bip[=:]\s*)[0-9a-fA-F.:]+", re.IGNORECASE),
)


def one_line(text: str, limit: int = 500) -> str:
    """Collapse ``text`` to a single line, redact secrets and cap its length."""
    line = " ".join(str(text).split())
    for pattern in _SECRET_PATTERNS:
        line = pattern.sub(
            lambda m: m.group(1) + "***" + (m.group(2) if m.lastindex == 2 else ""), line
        )
    return line if len(line) <= limit else line[: limit - 1] + "…"


class ServiceError(Exception):
    status_code: ClassVar[int] = 500
    code: ClassVar[str] = "internal"

    def __init__(self, user_message: str, technical_detail: str = "") -> None:
        super().__init__(user_message, technical_detail)
        self.user_message = user_message
        self.technical_detail = one_line(technical_detail)

    def __str__(self) -> str:
        return (
            f"{self.user_message} ({self.technical_detail})"
            if self.technical_detail
            else self.user_message
        )

    @classmethod
    def from_exception(cls, exc: BaseException, user_message: str) -> ServiceError:
        """Wrap a library exception; keep its type and message as the technical detail."""
        return cls(user_message, f"{type(exc).__name__}: {exc}")


class InvalidRequestError(ServiceError):
    status_code, code = 422, "invalid_request"


class InvalidAudioError(ServiceError):
    status_code, code = 422, "invalid_audio"


class EmptyUploadError(InvalidAudioError):
    code = "empty_upload"


class UploadTooLargeError(ServiceError):
    status_code, code = 413, "upload_too_large"


class AudioTooLongError(InvalidAudioError):
    code = "audio_too_long"


class UrlNotAllowedError(ServiceError):
    """A URL this service will not contact: scheme, credentials, or a non-public address."""

    status_code, code = 422, "url_not_allowed"


class DownloadFailedError(ServiceError):
    """A permitted URL that could not be fetched: network, HTTP status, redirects, time."""

    status_code, code = 422, "download_failed"


class TaskNotFoundError(ServiceError):
    status_code, code = 404, "task_not_found"


class TaskNotFinishedError(ServiceError):
    status_code, code = 409, "task_not_finished"


class UnauthorizedError(ServiceError):
    """No API key, or one this service does not know (or has revoked)."""

    status_code, code = 401, "unauthorized"


class RetryLaterError(ServiceError):
    """A refusal the caller may retry after ``retry_after_seconds`` (sent as Retry-After)."""

    status_code, code = 503, "retry_later"

    def __init__(
        self, user_message: str, technical_detail: str = "", retry_after_seconds: int = 1
    ) -> None:
        super().__init__(user_message, technical_detail)
        self.args = (user_message, technical_detail, retry_after_seconds)
        self.retry_after_seconds = max(1, int(retry_after_seconds))


class RateLimitedError(RetryLaterError):
    """This API key has too many tasks in flight, or is over its submissions per minute."""

    status_code, code = 429, "rate_limited"


class OverloadedError(RetryLaterError):
    """The durable queue is over its bound: new submissions wait until it drains."""

    status_code, code = 503, "overloaded"


class AudioNotFoundError(ServiceError):
    """The task exists but has no stored audio (a task given no file, or the file is gone)."""

    status_code, code = 404, "audio_not_found"


class RangeNotSatisfiableError(ServiceError):
    status_code, code = 416, "range_not_satisfiable"


class ModelUnavailableError(ServiceError):
    status_code, code = 503, "model_unavailable"


class ConfigurationError(ServiceError):
    status_code, code = 500, "configuration"


class TaskInterruptedError(ServiceError):
    status_code, code = 500, "task_interrupted"


class ProcessingError(ServiceError):
    status_code, code = 500, "processing_failed"


class OutcomeNotRecordedError(ServiceError):
    """The task ran to its end, but writing its outcome kept failing."""

    status_code, code = 500, "outcome_not_recorded"


_REQUEST_PARTS = ("body", "query", "path", "header", "form")


def validation_error_from(exc: Exception) -> InvalidRequestError:
    """A pydantic (or FastAPI request) validation error as a 422 naming each bad field."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        parts = []
        for e in errors():
            loc = ".".join(str(p) for p in e.get("loc", ()) if p not in _REQUEST_PARTS)
            msg = str(e.get("msg", "invalid"))
            parts.append(f"{loc}: {msg}" if loc else msg)
        detail = one_line("; ".join(parts))
    else:
        detail = one_line(str(exc))
    return InvalidRequestError(f"Invalid request: {detail}", detail)


class MalformedRequestError(ServiceError):
    """The HTTP request itself is broken (e.g. a multipart body without its boundary)."""

    status_code, code = 400, "malformed_request"


class RouteNotFoundError(ServiceError):
    status_code, code = 404, "not_found"


class MethodNotAllowedError(ServiceError):
    status_code, code = 405, "method_not_allowed"


_HTTP_ERRORS: dict[int, type[ServiceError]] = {
    404: RouteNotFoundError,
    405: MethodNotAllowedError,
    413: UploadTooLargeError,
}


_RAY_FAILURES = frozenset(
    {
        "RayActorError",
        "ActorDiedError",
        "ActorUnavailableError",
        "ActorUnschedulableError",
        "WorkerCrashedError",
        "NodeDiedError",
        "LocalRayletDiedError",
        "ObjectLostError",
        "OwnerDiedError",
        "ObjectReconstructionFailedError",
        "RaySystemError",
        "TaskUnschedulableError",
        "OutOfMemoryError",
        "DeploymentUnavailableError",
    }
)


def _is_ray_failure(exc: BaseException) -> bool:
    """A Ray system failure (a replica or node died): matched by name, no Ray import."""
    return any(
        c.__name__ in _RAY_FAILURES and c.__module__.startswith("ray.") for c in type(exc).__mro__
    )


_REPLICA_GONE = frozenset(
    {
        "RayActorError",
        "ActorDiedError",
        "ActorUnavailableError",
        "WorkerCrashedError",
        "NodeDiedError",
        "ReplicaUnavailableError",
        "DeploymentUnavailableError",
    }
)


def is_replica_failure(exc: BaseException) -> bool:
    """The replica (or its node) that served a call died or became unreachable: the request
    itself was not at fault, so it may be sent again to a live replica. A failure raised
    inside a replica (``RayTaskError``, a ServiceError) is not one. Matched by name."""
    return any(
        c.__name__ in _REPLICA_GONE and c.__module__.startswith("ray.") for c in type(exc).__mro__
    )


def as_service_error(exc: BaseException) -> ServiceError:
    """Any exception as a ServiceError: known ones unchanged, the rest as a generic 500.

    HTTP-level rejections raised by the web framework (Starlette's ``HTTPException``: an
    unknown route, a malformed multipart body) keep their 4xx status.
    """
    if isinstance(exc, ServiceError):
        return exc
    cause = getattr(exc, "cause", None)  # ray.exceptions.RayTaskError wraps the original
    if isinstance(cause, ServiceError):
        return cause
    if _is_ray_failure(exc):
        # Ray's text names the actor, its process and node: keep it to the logs
        return ProcessingError(
            "Processing stopped because a model replica stopped unexpectedly. "
            "Please submit the task again.",
            f"{type(exc).__name__}: the replica stopped unexpectedly",
        )
    if isinstance(cause, Exception) and type(exc).__name__.startswith("RayTaskError"):
        return ProcessingError.from_exception(
            cause, "Processing failed because of an internal error."
        )
    status, detail = getattr(exc, "status_code", None), getattr(exc, "detail", None)
    if isinstance(status, int) and 400 <= status < 500 and detail is not None:
        kind = _HTTP_ERRORS.get(status, MalformedRequestError)
        return kind(f"The request was rejected: {detail}.", f"HTTP {status}: {detail}")
    return ProcessingError.from_exception(exc, "Processing failed because of an internal error.")
