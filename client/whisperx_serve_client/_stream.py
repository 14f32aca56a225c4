"""Following one task's progress: WebSocket first, resumed by seq, polling as the fallback.

The server sends a snapshot frame, then every event with a per-task ``seq``, and closes
with 1000 after the terminal event (4404: unknown task; 1011: its progress tracker is
unavailable). A dropped connection is reopened with ``?after_seq=<last seen>``, so the
stream goes on without gaps; events are deduplicated by ``seq``. When the WebSocket cannot
be used at all (refused handshake, 1011, or ``retries`` failed reconnects in a row) the
stream switches to ``GET /tasks/{id}/progress`` polling, which reports the latest state
only (events between two polls are not replayed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncGenerator

from websockets.asyncio.client import connect
from websockets.exceptions import (
    ConnectionClosedError,
    InvalidHandshake,
    InvalidMessage,
    InvalidStatus,
    InvalidURI,
)

from whisperx_serve_client._transport import AsyncTransport
from whisperx_serve_client.errors import TaskNotFound
from whisperx_serve_client.models import (
    ErrorEvent,
    ProgressEvent,
    TaskEvent,
    TaskProgress,
    TaskSnapshot,
    TaskStatus,
    parse_frame,
)

logger = logging.getLogger(__name__)

CLOSE_TASK_NOT_FOUND = 4404
CLOSE_TRACKER_UNAVAILABLE = 1011


class _Unusable(Exception):
    """The WebSocket will not work for this task: poll instead."""


class _Transient(Exception):
    """This connection attempt failed; another one may work."""


_TRANSIENT = (OSError, asyncio.TimeoutError, ConnectionClosedError, InvalidMessage, _Transient)


async def follow(
    transport: AsyncTransport, task_id: str, after_seq: int = 0
) -> AsyncGenerator[TaskEvent, None]:
    """Events with ``seq > after_seq`` in order, ending after the task's terminal event.

    The stream may also end without a terminal event when the task is terminal but its
    final event was no longer available (e.g. the server restarted); the caller reads the
    task to learn how it ended.
    """
    cursor = after_seq
    config = transport.config
    failures = 0
    while config.websocket:
        try:
            async with contextlib.aclosing(_frames(transport, task_id, cursor)) as frames:
                async for frame in frames:
                    if isinstance(frame, TaskSnapshot) or frame.seq <= cursor:
                        continue
                    cursor = frame.seq
                    failures = 0  # a connection that delivers new events resets the budget
                    yield frame
                    if frame.terminal:
                        return
        except _Unusable as exc:
            logger.info("task %s: WebSocket unusable (%s); polling instead", task_id, exc)
            break
        except _TRANSIENT as exc:
            failures += 1
            if failures > config.retries:
                logger.info("task %s: WebSocket keeps failing (%r); polling", task_id, exc)
                break
            logger.debug(
                "task %s: WebSocket dropped (%r); resuming after seq %d", task_id, exc, cursor
            )
            await _pause(config.backoff, config.max_backoff, failures - 1)
            continue
        # A normal close without the terminal event (e.g. a replica going away): the task
        # may be over, else reconnect, and poll if this keeps happening.
        progress = await transport.progress(task_id)
        if progress.status.terminal:
            if progress.seq > cursor:
                yield event_from_progress(progress)
            return
        failures += 1
        if failures > config.retries:
            break
        await _pause(config.backoff, config.max_backoff, failures - 1)
    async for event in poll(transport, task_id, cursor):
        yield event


async def _frames(
    transport: AsyncTransport, task_id: str, after_seq: int
) -> AsyncGenerator[TaskSnapshot | TaskEvent, None]:
    config = transport.config
    url = config.ws_url(f"/ws/tasks/{task_id}?after_seq={after_seq}")
    try:
        ws_context = connect(
            url, additional_headers=config.headers(), open_timeout=config.timeout, max_size=None
        )
        async with ws_context as ws:
            try:
                async for raw in ws:
                    frame = parse_frame(raw)
                    if frame is not None:
                        yield frame
            except ConnectionClosedError as exc:
                code = exc.rcvd.code if exc.rcvd is not None else None
                if code == CLOSE_TASK_NOT_FOUND:
                    raise TaskNotFound(task_id, "WebSocket closed with 4404") from None
                if code == CLOSE_TRACKER_UNAVAILABLE:
                    raise _Unusable(
                        f"closed with 1011: {exc.rcvd.reason if exc.rcvd else ''}"
                    ) from None
                raise
    except InvalidMessage:
        raise  # the connection broke during the handshake: transient
    except InvalidStatus as exc:
        if exc.response.status_code >= 500:
            raise _Transient(f"upgrade answered HTTP {exc.response.status_code}") from exc
        raise _Unusable(f"upgrade refused with HTTP {exc.response.status_code}") from exc
    except (InvalidHandshake, InvalidURI) as exc:
        # No WebSocket support on the way (a proxy, no such route): not transient.
        raise _Unusable(f"{type(exc).__name__}: {exc}") from exc


async def poll(
    transport: AsyncTransport, task_id: str, after_seq: int = 0
) -> AsyncGenerator[TaskEvent, None]:
    """The polling fallback: one event per observed change of ``seq``."""
    cursor = after_seq
    while True:
        progress = await transport.progress(task_id)
        if progress.seq > cursor:
            cursor = progress.seq
            yield event_from_progress(progress)
        if progress.status.terminal:
            return
        await asyncio.sleep(transport.config.poll_interval)


def event_from_progress(progress: TaskProgress) -> TaskEvent:
    """The event a polled state stands for."""
    if progress.status is TaskStatus.failed:
        return ErrorEvent(
            task_id=progress.identifier,
            seq=progress.seq,
            error_code=progress.error_code or "failed",
            user_message=progress.error or "The task failed.",
            technical_detail=progress.technical_detail or "",
        )
    return ProgressEvent(
        task_id=progress.identifier,
        seq=progress.seq,
        status=progress.status,
        stage=progress.progress_stage,
        percentage=progress.progress_percentage,
        message=progress.message,
        eta_seconds=progress.eta_seconds,
    )


async def _pause(backoff: float, max_backoff: float, attempt: int) -> None:
    await asyncio.sleep(min(backoff * 2**attempt, max_backoff) * random.uniform(0.5, 1.0))
