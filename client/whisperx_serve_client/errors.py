"""Exceptions raised by the client.

Every one carries the server's vocabulary: a stable ``error_code``, a ``user_message`` fit
to show a person, and a one-line ``technical_detail``. Catch :class:`ClientError` for all.
"""

from __future__ import annotations

from typing import Any


class ClientError(Exception):
    """Base class of everything this package raises."""

    error_code: str = "client_error"

    def __init__(
        self, user_message: str, technical_detail: str = "", *, error_code: str | None = None
    ) -> None:
        super().__init__(user_message, technical_detail)
        self.user_message = user_message
        self.technical_detail = technical_detail
        if error_code is not None:
            self.error_code = error_code

    def __str__(self) -> str:
        detail = f" ({self.technical_detail})" if self.technical_detail else ""
        return f"[{self.error_code}] {self.user_message}{detail}"

    def __reduce__(self) -> tuple[Any, ...]:
        # Subclass constructors differ; rebuild from the attributes so results pickle.
        return (_rebuild, (type(self), self.args, dict(self.__dict__)))


class APIError(ClientError):
    """The server answered with an error status (4xx/5xx)."""

    def __init__(
        self,
        status_code: int,
        user_message: str,
        technical_detail: str = "",
        *,
        error_code: str | None = None,
    ) -> None:
        super().__init__(user_message, technical_detail, error_code=error_code or "http_error")
        self.status_code = status_code

    def __str__(self) -> str:
        return f"HTTP {self.status_code} {super().__str__()}"


class TaskNotFound(APIError):
    """No task has this identifier (HTTP 404, or WebSocket close code 4404)."""

    def __init__(self, task_id: str, technical_detail: str = "") -> None:
        super().__init__(
            404, "No task has this identifier.", technical_detail, error_code="task_not_found"
        )
        self.task_id = task_id


class TransportError(ClientError):
    """The server could not be reached (after the configured retries)."""

    error_code = "connection_failed"


class SourceError(ClientError):
    """A local file given as a source could not be read."""

    error_code = "unreadable_source"


class TaskError(ClientError):
    """A task ended without a transcript."""

    def __init__(
        self,
        task_id: str,
        user_message: str,
        technical_detail: str = "",
        *,
        error_code: str | None = None,
    ) -> None:
        super().__init__(user_message, technical_detail, error_code=error_code)
        self.task_id = task_id


class TaskFailed(TaskError):
    """The task failed on the server; ``error_code`` says why."""

    error_code = "failed"


class TaskCancelled(TaskError):
    """The task was cancelled before it finished."""

    error_code = "cancelled"


class TaskNotFinished(TaskError):
    """The result was asked for before the task ended."""

    error_code = "task_not_finished"


def _rebuild(cls: type[ClientError], args: tuple[Any, ...], state: dict[str, Any]) -> ClientError:
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error
