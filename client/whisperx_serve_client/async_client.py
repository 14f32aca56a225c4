"""``AsyncClient``: the whole API as coroutines; the sync ``Client`` runs these."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from types import TracebackType
from typing import Literal, overload

from whisperx_serve_client import _sources
from whisperx_serve_client._config import ClientConfig
from whisperx_serve_client._sources import Source
from whisperx_serve_client._stream import follow
from whisperx_serve_client._transport import AsyncTransport
from whisperx_serve_client.batch import BatchItem, BatchProgress, BatchResult
from whisperx_serve_client.errors import (
    ClientError,
    TaskCancelled,
    TaskFailed,
    TaskNotFinished,
)
from whisperx_serve_client.models import (
    ResultFormat,
    TaskEvent,
    TaskProgress,
    TaskPublic,
    TaskStatus,
    Transcript,
    attach_origin,
    check_format,
    format_from_suffix,
)
from whisperx_serve_client.options import TranscribeOptions, Unpack, query_params

logger = logging.getLogger(__name__)

TextFormat = Literal["srt", "vtt", "txt", "tsv"]
_SETTLE_POLLS = 30  # reads of a task whose terminal event arrived before its record


class AsyncTaskHandle:
    """A submitted task: follow it, wait for it, fetch or save its result, cancel it."""

    def __init__(self, transport: AsyncTransport, task_id: str) -> None:
        self._transport = transport
        self.id = task_id

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r})"

    async def status(self) -> TaskProgress:
        """Status, stage and percentage now (``GET /tasks/{id}/progress``)."""
        return await self._transport.progress(self.id)

    async def info(self) -> TaskPublic:
        """The whole task record: params, result, error, timings (``GET /task/{id}``)."""
        return await self._transport.task(self.id)

    def events(self, after_seq: int = 0) -> AsyncIterator[TaskEvent]:
        """Progress events with ``seq > after_seq`` (default: from the start), in order,
        ending after the terminal one. Reconnects and resumes by ``seq`` when the
        WebSocket drops; polls when it cannot be used."""
        return follow(self._transport, self.id, after_seq)

    async def wait(self, timeout: float | None = None) -> Transcript:
        """The transcript once the task completes.

        Raises :class:`TaskFailed` / :class:`TaskCancelled` if it does not, and
        ``TimeoutError`` after ``timeout`` seconds (the task goes on running).
        """
        try:
            return await asyncio.wait_for(self._wait(), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"task {self.id} did not finish within {timeout} s") from None

    async def _wait(self) -> Transcript:
        async for _ in self.events():
            pass
        return await self.outcome(settle=True)

    async def outcome(self, *, settle: bool = False) -> Transcript:
        """The result of an ended task, or the exception saying how it ended.

        ``settle``: the task is known to have ended; re-read a record that lags behind.
        """
        for _ in range(_SETTLE_POLLS if settle else 1):
            task = await self._transport.task(self.id)
            if task.status is TaskStatus.completed and task.result is not None:
                return attach_origin(task.result, self._transport.config, self.id)
            if task.status is TaskStatus.failed:
                err = task.error
                raise TaskFailed(
                    self.id,
                    err.user_message if err else "The task failed.",
                    err.technical_detail if err else "",
                    error_code=err.error_code if err else None,
                )
            if task.status is TaskStatus.cancelled:
                raise TaskCancelled(self.id, "The task was cancelled.")
            if settle:
                await asyncio.sleep(self._transport.config.poll_interval)
        raise TaskNotFinished(self.id, f"The task is still {task.status.value}.")

    @overload
    async def result(self, format: Literal["json"] = "json") -> Transcript: ...
    @overload
    async def result(self, format: TextFormat) -> str: ...
    async def result(self, format: ResultFormat = "json") -> Transcript | str:
        """The result now: a :class:`Transcript` for json, the server's rendering (text)
        for srt, vtt, txt and tsv. Raises if the task has not completed."""
        check_format(format)
        if format == "json":
            return await self.outcome()
        return await self._text(format)

    async def _text(self, format: str) -> str:
        try:
            return await self._transport.result_text(self.id, format)
        except TaskNotFinished:
            await self.outcome()  # raises TaskFailed / TaskCancelled for an ended task
            raise

    async def save(self, path: str | Path, format: ResultFormat | None = None) -> Path:
        """Write the result to ``path``; the format defaults to the file's suffix."""
        target = Path(path)
        fmt = format or format_from_suffix(target)
        check_format(fmt)
        if fmt == "json":
            text = (await self.outcome()).model_dump_json(indent=2)
        else:
            text = await self._text(fmt)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        return target

    async def cancel(self) -> TaskProgress:
        """Ask the server to cancel; a queued task ends at once, a running one at its next
        safe point. Returns the task's progress afterwards."""
        return await self._transport.cancel(self.id)

    async def delete(self) -> None:
        """Delete the task and its stored audio on the server."""
        await self._transport.delete(self.id)


class AsyncClient:
    """Talks to one whisperx-serve deployment. Use as ``async with AsyncClient(url) as c``
    (or call :meth:`aclose`); no connection is opened before the first call."""

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
        self.config = ClientConfig(
            base_url=base_url,
            api_key=api_key,
            timeout=timeout,
            retries=retries,
            backoff=backoff,
            poll_interval=poll_interval,
            websocket=websocket,
        )
        self._transport = AsyncTransport(self.config)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config.base_url!r})"

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._transport.aclose()

    def task(self, task_id: str) -> AsyncTaskHandle:
        """A handle on an existing task (e.g. one submitted by an earlier session)."""
        return AsyncTaskHandle(self._transport, task_id)

    async def submit(self, source: Source, **options: Unpack[TranscribeOptions]) -> AsyncTaskHandle:
        """Queue a task for ``source`` and return at once.

        ``source``: a URL (``http(s)://…``, downloaded by the server), a local path, or
        bytes. ``options``: see :class:`TranscribeOptions`; an unknown name raises
        ``TypeError`` before anything is sent.
        """
        params = query_params(options)
        if _sources.is_url(source):
            assert isinstance(source, str)
            accepted = await self._transport.submit_url(source, params)
        else:
            accepted = await self._transport.submit_upload(_sources.upload(source), params)
        return AsyncTaskHandle(self._transport, accepted.identifier)

    async def transcribe(self, source: Source, **options: Unpack[TranscribeOptions]) -> Transcript:
        """Submit ``source`` and wait for its transcript (see :meth:`submit`)."""
        handle = await self.submit(source, **options)
        return await handle.wait()

    async def list_tasks(
        self, *, status: TaskStatus | str | None = None, limit: int = 100, offset: int = 0
    ) -> list[TaskPublic]:
        """Tasks on the server, newest first (``GET /task/all``)."""
        params = [("limit", str(limit)), ("offset", str(offset))]
        if status is not None:
            params.append(("status", TaskStatus(status).value))
        return await self._transport.list_tasks(params)

    async def transcribe_many(
        self,
        sources: Iterable[Source],
        *,
        concurrency: int = 4,
        progress: bool = True,
        **options: Unpack[TranscribeOptions],
    ) -> BatchResult:
        """Transcribe every source, ``concurrency`` at a time, with progress bars.

        A source that fails (rejected upload, failed task, unreadable file) becomes an
        error item; the others go on. The same ``options`` apply to every source.
        """
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        query_params(options)  # unknown names fail now, not once per file
        items = list(sources)
        bars = BatchProgress(len(items), enabled=progress)
        gate = asyncio.Semaphore(concurrency)

        async def one(index: int, source: Source) -> BatchItem:
            name = _sources.label(source, index)
            async with gate:
                bar = bars.file(name)
                task_id: str | None = None
                outcome: Transcript | ClientError
                try:
                    handle = await self.submit(source, **options)
                    task_id = handle.id
                    async for event in handle.events():
                        bar.update(event)
                    outcome = await handle.outcome(settle=True)
                except ClientError as exc:
                    outcome = exc
                except Exception as exc:  # one broken source must not lose the others
                    logger.warning("source %s failed unexpectedly", name, exc_info=True)
                    outcome = ClientError(
                        "The client failed on this source.", f"{type(exc).__name__}: {exc}"
                    )
                finally:
                    bar.close()
            bars.finished(isinstance(outcome, Transcript))
            return BatchItem(index=index, source=name, outcome=outcome, task_id=task_id)

        try:
            done = await asyncio.gather(*(one(i, s) for i, s in enumerate(items)))
        finally:
            bars.close()
        return BatchResult(done)
