"""``Client``: the blocking API for scripts and notebooks.

Each call runs the matching :class:`AsyncClient` coroutine on a private event loop in a
daemon thread (see ``_sync``), so it works the same in a plain script and inside
Jupyter's running loop, and one connection pool serves every call.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Literal, overload

from whisperx_serve_client._sources import Source
from whisperx_serve_client._sync import LoopThread
from whisperx_serve_client.async_client import AsyncClient, AsyncTaskHandle, TextFormat
from whisperx_serve_client.batch import BatchResult
from whisperx_serve_client.models import (
    ResultFormat,
    TaskEvent,
    TaskProgress,
    TaskPublic,
    TaskStatus,
    Transcript,
)
from whisperx_serve_client.options import TranscribeOptions, Unpack


class TaskHandle:
    """A submitted task: follow it, wait for it, fetch or save its result, cancel it."""

    def __init__(self, loop: LoopThread, handle: AsyncTaskHandle) -> None:
        self._loop = loop
        self._handle = handle
        self.id = handle.id

    def __repr__(self) -> str:
        return f"TaskHandle(id={self.id!r})"

    def status(self) -> TaskProgress:
        """Status, stage and percentage now (``GET /tasks/{id}/progress``)."""
        return self._loop.run(self._handle.status())

    def info(self) -> TaskPublic:
        """The whole task record: params, result, error, timings (``GET /task/{id}``)."""
        return self._loop.run(self._handle.info())

    def events(self, after_seq: int = 0) -> Iterator[TaskEvent]:
        """Progress events with ``seq > after_seq`` in order, ending after the terminal one
        (WebSocket, resumed by seq after a drop; polling when it cannot be used)."""
        return self._loop.iterate(self._handle.events(after_seq))

    def wait(self, timeout: float | None = None) -> Transcript:
        """The transcript once the task completes; raises ``TaskFailed``,
        ``TaskCancelled``, or ``TimeoutError`` after ``timeout`` seconds."""
        return self._loop.run(self._handle.wait(timeout))

    @overload
    def result(self, format: Literal["json"] = "json") -> Transcript: ...
    @overload
    def result(self, format: TextFormat) -> str: ...
    def result(self, format: ResultFormat = "json") -> Transcript | str:
        """The result now: a Transcript for json, the server's text for srt/vtt/txt/tsv."""
        if format == "json":
            return self._loop.run(self._handle.result("json"))
        return self._loop.run(self._handle.result(format))

    def save(self, path: str | Path, format: ResultFormat | None = None) -> Path:
        """Write the result to ``path``; the format defaults to the file's suffix."""
        return self._loop.run(self._handle.save(path, format))

    def cancel(self) -> TaskProgress:
        """Ask the server to cancel the task; returns its progress afterwards."""
        return self._loop.run(self._handle.cancel())

    def delete(self) -> None:
        """Delete the task and its stored audio on the server."""
        self._loop.run(self._handle.delete())


class Client:
    """Talks to one whisperx-serve deployment; no connection is opened before the first call.

    ``Client(base_url, api_key=None, timeout=60, retries=3)``: ``api_key`` is sent as a
    Bearer token (also on the WebSocket handshake); ``retries`` bounds the extra attempts
    after connection errors and 429/502/503/504 answers (submissions only when no task can
    have been created), each waiting out the server's ``Retry-After``.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 0.5,
        poll_interval: float = 1.0,
        websocket: bool = True,
    ) -> None:
        self._async = AsyncClient(
            base_url,
            api_key,
            timeout=timeout,
            retries=retries,
            backoff=backoff,
            poll_interval=poll_interval,
            websocket=websocket,
        )
        self.config = self._async.config
        self._loop = LoopThread()
        # Stop the loop thread even when the client is never closed explicitly.
        self._finalizer = weakref.finalize(self, self._loop.close, self._async.aclose)

    def __repr__(self) -> str:
        return f"Client({self.config.base_url!r})"

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close connections and stop the client's event-loop thread."""
        self._finalizer()

    def task(self, task_id: str) -> TaskHandle:
        """A handle on an existing task (e.g. one submitted by an earlier session)."""
        return TaskHandle(self._loop, self._async.task(task_id))

    def submit(self, source: Source, **options: Unpack[TranscribeOptions]) -> TaskHandle:
        """Queue a task for ``source`` (URL, path or bytes) and return at once."""
        return TaskHandle(self._loop, self._loop.run(self._async.submit(source, **options)))

    def transcribe(self, source: Source, **options: Unpack[TranscribeOptions]) -> Transcript:
        """Submit ``source`` and wait for its transcript."""
        return self._loop.run(self._async.transcribe(source, **options))

    def transcribe_many(
        self,
        sources: Iterable[Source],
        *,
        concurrency: int = 4,
        progress: bool = True,
        **options: Unpack[TranscribeOptions],
    ) -> BatchResult:
        """Transcribe every source, ``concurrency`` at a time, with progress bars; failed
        sources become error items and never cost the others their results."""
        return self._loop.run(
            self._async.transcribe_many(
                sources, concurrency=concurrency, progress=progress, **options
            )
        )

    def list_tasks(
        self, *, status: TaskStatus | str | None = None, limit: int = 100, offset: int = 0
    ) -> list[TaskPublic]:
        """Tasks on the server, newest first (``GET /task/all``)."""
        return self._loop.run(self._async.list_tasks(status=status, limit=limit, offset=offset))
