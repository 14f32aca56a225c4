"""HTTP with bounded retries, and the service's routes as typed calls.

Retry policy (``ClientConfig.retries`` extra attempts, exponential backoff with jitter;
a ``Retry-After`` is waited out in full, up to ``max_retry_after``):

- reads, cancel and delete are retried on any connection error and on 429/502/503/504;
- submissions are retried only when the request cannot have created a task: a connection
  that never opened (connect error or timeout), a 429 (this key's limits) or a 503 answer
  (the service refused it: overloaded).
  A connection lost after the upload was sent, or a 502/504 from a proxy, is *not*
  retried: the task may exist, and retrying could run the file twice. Such errors are
  raised as :class:`TransportError` / :class:`APIError`; ``GET /task/all`` shows whether
  the task was created.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import IO, Any

import httpx

from whisperx_serve_client._config import ClientConfig
from whisperx_serve_client.errors import (
    APIError,
    ClientError,
    TaskNotFinished,
    TaskNotFound,
    TransportError,
)
from whisperx_serve_client.models import TaskAccepted, TaskProgress, TaskPublic

RETRY_STATUSES = frozenset({429, 502, 503, 504})
SUBMIT_RETRY_STATUSES = frozenset({429, 503})
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)

FileField = tuple[str, IO[bytes] | bytes]
FilesFactory = Callable[[], contextlib.AbstractContextManager[dict[str, FileField]]]
"""Opens the upload afresh for each attempt, so a retry re-sends the whole file."""


class AsyncTransport:
    """One ``httpx.AsyncClient`` per event loop, created on first use (never at import)."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self._http: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._http is None or self._loop is not loop:
            # A client is bound to the loop it first ran on; a notebook that calls
            # asyncio.run() twice gets a fresh one instead of "Event loop is closed".
            self._http = httpx.AsyncClient(
                timeout=self.config.timeout, headers=self.config.headers()
            )
            self._loop = loop
        return self._http

    async def aclose(self) -> None:
        http, self._http = self._http, None
        if http is not None and self._loop is asyncio.get_running_loop():
            await http.aclose()

    # ------------------------------------------------------------ core

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Sequence[tuple[str, str]] = (),
        data: Mapping[str, str] | None = None,
        files: FilesFactory | None = None,
        submission: bool = False,
        task_id: str | None = None,
        missing_ok_on_retry: bool = False,
    ) -> httpx.Response:
        """Send with retries; raise :class:`APIError` for an error answer.

        ``missing_ok_on_retry``: a 404 after a retry means an earlier attempt that we never
        heard back from already did the job (deletes).
        """
        statuses = SUBMIT_RETRY_STATUSES if submission else RETRY_STATUSES
        attempt = 0
        while True:
            try:
                with files() if files else _no_files() as upload:
                    response = await self._client().request(
                        method,
                        self.config.url(path),
                        params=tuple(params),
                        data=data,
                        files=upload or None,
                    )
            except httpx.TransportError as exc:
                retryable = isinstance(exc, _NOT_SENT) or not submission
                if retryable and attempt < self.config.retries:
                    await self._pause(attempt)
                    attempt += 1
                    continue
                raise TransportError(
                    f"Could not reach the service at {self.config.base_url}.",
                    f"{method} {path}: {type(exc).__name__}: {exc}",
                ) from exc
            hint = _retry_after(response)
            if (
                response.status_code in statuses
                and attempt < self.config.retries
                and (hint is None or hint <= self.config.max_retry_after)
            ):
                await self._pause(attempt, hint)
                attempt += 1
                continue
            if response.status_code == 404 and attempt > 0 and missing_ok_on_retry:
                return response
            if response.is_error:
                raise api_error(response, task_id)
            return response

    async def _pause(self, attempt: int, hint: float | None = None) -> None:
        delay = min(self.config.backoff * 2**attempt, self.config.max_backoff)
        delay *= random.uniform(0.5, 1.0)
        if hint is not None:  # the server knows when there is room again: wait that long
            delay = max(delay, hint)
        await asyncio.sleep(delay)

    # ------------------------------------------------------------ routes

    async def submit_upload(
        self, files: FilesFactory, params: Sequence[tuple[str, str]]
    ) -> TaskAccepted:
        r = await self.request(
            "POST", "/speech-to-text", params=params, files=files, submission=True
        )
        return TaskAccepted.model_validate(r.json())

    async def submit_url(self, url: str, params: Sequence[tuple[str, str]]) -> TaskAccepted:
        r = await self.request(
            "POST", "/speech-to-text-url", params=params, data={"url": url}, submission=True
        )
        return TaskAccepted.model_validate(r.json())

    async def task(self, task_id: str) -> TaskPublic:
        r = await self.request("GET", f"/task/{task_id}", task_id=task_id)
        return TaskPublic.model_validate(r.json())

    async def progress(self, task_id: str) -> TaskProgress:
        r = await self.request("GET", f"/tasks/{task_id}/progress", task_id=task_id)
        return TaskProgress.model_validate(r.json())

    async def result_text(self, task_id: str, format: str) -> str:
        r = await self.request(
            "GET", f"/task/{task_id}/result", params=[("format", format)], task_id=task_id
        )
        return r.text

    async def cancel(self, task_id: str) -> TaskProgress:
        r = await self.request("POST", f"/task/{task_id}/cancel", task_id=task_id)
        return TaskProgress.model_validate(r.json())

    async def delete(self, task_id: str) -> None:
        await self.request(
            "DELETE", f"/task/{task_id}/delete", task_id=task_id, missing_ok_on_retry=True
        )

    async def list_tasks(self, params: Sequence[tuple[str, str]]) -> list[TaskPublic]:
        r = await self.request("GET", "/task/all", params=params)
        body = r.json()
        if isinstance(body, dict):  # a paged answer: {"tasks": [...], "total": n}
            body = body.get("tasks") or body.get("items") or []
        return [TaskPublic.model_validate(item) for item in body]


@contextlib.contextmanager
def _no_files() -> Iterator[dict[str, FileField]]:
    yield {}


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    try:
        return float(value) if value else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


def api_error(response: httpx.Response, task_id: str | None = None) -> ClientError:
    """The server's error body (``error_code``, ``user_message``, ``technical_detail``)."""
    body: Any
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "user_message" in body:
        code = str(body.get("error_code") or "http_error")
        message, detail = str(body["user_message"]), str(body.get("technical_detail") or "")
    else:
        code = "http_error"
        message = f"The service answered {response.status_code} {response.reason_phrase}."
        text = body.get("detail") if isinstance(body, dict) else response.text
        detail = " ".join(str(text).split())[:500]
    if code == "task_not_found" and task_id is not None:
        return TaskNotFound(task_id, detail)
    if code == "task_not_finished" and task_id is not None:
        return TaskNotFinished(task_id, message, detail, error_code=code)
    return APIError(response.status_code, message, detail, error_code=code)
