"""Service logging: the log level setting, and ``task_id`` / ``request_id`` on every line
that concerns a task, in every deployment.

Inside a Ray worker, :func:`configure_service_logging` (called once per replica, from each
deployment's ``__init__``) sets the level of this project's loggers from
``WHISPERX_SERVE_LOG_LEVEL`` and sends their records through Serve's own logger, so they
land in the replica's Serve log file with Serve's encoding (``logging_config.encoding:
JSON`` in serve_config.yaml gives one JSON object per line, ``task_id`` and
``request_id`` as fields). Outside Serve (the tracker actor) they go to stderr, which Ray
keeps in the worker's log. Nothing is configured at import, nor outside Ray.

:func:`log_context` binds a task id and request id to the running code (a context
variable, so it follows ``await`` and ``asyncio.to_thread``); a filter adds them to each
record that does not carry its own.
"""

from __future__ import annotations

import contextlib
import logging
import re
import uuid
from collections.abc import Iterator
from contextvars import ContextVar

PACKAGES = ("common", "deployments", "ingress", "storage")
SERVE_LOGGER = "ray.serve"
REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

_task_id: ContextVar[str | None] = ContextVar("whisperx_task_id", default=None)
_request_id: ContextVar[str | None] = ContextVar("whisperx_request_id", default=None)


def valid_request_id(value: str | None) -> str | None:
    """``value`` if it is a usable request id (1–128 of ``A-Z a-z 0-9 . _ : -``)."""
    return value if value is not None and _REQUEST_ID.match(value) else None


def new_request_id() -> str:
    return uuid.uuid4().hex


def current_request_id() -> str | None:
    return _request_id.get()


@contextlib.contextmanager
def log_context(*, task_id: str | None = None, request_id: str | None = None) -> Iterator[None]:
    """Log lines inside carry ``task_id`` / ``request_id`` (those given; others kept)."""
    tokens = []
    if task_id is not None:
        tokens.append((_task_id, _task_id.set(task_id)))
    if request_id is not None:
        tokens.append((_request_id, _request_id.set(request_id)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def bind(*, task_id: str | None = None, request_id: str | None = None) -> None:
    """Like :func:`log_context` for the rest of the current asyncio task or thread."""
    if task_id is not None:
        _task_id.set(task_id)
    if request_id is not None:
        _request_id.set(request_id)


class ContextFilter(logging.Filter):
    """Adds the bound ``task_id`` and ``request_id`` to records that lack them."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "task_id", None) is None and (task_id := _task_id.get()):
            record.task_id = task_id
        if getattr(record, "request_id", None) is None and (request_id := _request_id.get()):
            record.request_id = request_id
        return True


SERVE_EXTRA_FIELDS = "ray_serve_extra_fields"
"""Serve's way to add fields to its JSON lines (a plain ``task_id`` attribute is Ray's own
task id to Serve, which removes it)."""


class _ToServeLogger(logging.Handler):
    """Hands records to Serve's logger (looked up per record: Serve may rebuild its
    handlers when its logging config changes), our ``task_id`` as a Serve extra field."""

    def emit(self, record: logging.LogRecord) -> None:
        task_id = record.__dict__.pop("task_id", None)
        if task_id is not None:
            fields = dict(getattr(record, SERVE_EXTRA_FIELDS, None) or {})
            fields.setdefault("task_id", task_id)
            setattr(record, SERVE_EXTRA_FIELDS, fields)
        logging.getLogger(SERVE_LOGGER).handle(record)


def parse_level(level: str) -> int:
    value = logging.getLevelName(level.strip().upper())
    if not isinstance(value, int):
        raise ValueError(f"unknown log level {level!r} (DEBUG, INFO, WARNING, ERROR)")
    return value


def configure_service_logging(level: str, *, force: bool = False) -> None:
    """Set this project's loggers to ``level`` and route them as the module says.

    Does nothing outside a Ray worker unless ``force`` (tests), so unit tests and tools
    keep their own logging setup.
    """
    if not force and not _in_ray_worker():
        return
    try:
        numeric = parse_level(level)
    except ValueError:
        numeric = logging.INFO
        logging.getLogger(__name__).warning("unknown log level %r; using INFO", level)
    serve_logger = logging.getLogger(SERVE_LOGGER)
    if serve_logger.handlers:
        handler: logging.Handler = _ToServeLogger()
    else:
        handler = logging.StreamHandler()
        handler.setFormatter(_text_formatter())
    handler.addFilter(ContextFilter())
    for name in PACKAGES:
        package_logger = logging.getLogger(name)
        package_logger.setLevel(numeric)
        for old in [h for h in package_logger.handlers if getattr(h, "_whisperx", False)]:
            package_logger.removeHandler(old)
        handler._whisperx = True  # type: ignore[attr-defined]
        package_logger.addHandler(handler)
        package_logger.propagate = False


def _text_formatter() -> logging.Formatter:
    try:
        from ray._common.formatters import TextFormatter  # key=value extras after the line

        return TextFormatter()
    except Exception:
        return logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")


def _in_ray_worker() -> bool:
    """True in a Ray worker process (a replica, an actor), not in a driver or a test."""
    try:
        import ray
        from ray._private import worker

        return bool(ray.is_initialized()) and worker.global_worker.mode == ray.WORKER_MODE
    except Exception:
        return False
