"""``WS /ws/tasks/{task_id}``: a snapshot, then every event in seq order, then a normal close.

Events come from the task's Redis stream when Redis is configured and can serve them
gap-free (so the tracker actor is not asked once per event per watcher), else from the
tracker actor (``events_after``), which answers as soon as a new event exists. Either way
nothing here polls or sleeps, and a seq is sent at most once. All the sockets of one task
on this replica share one reader (``ingress.fanout``): one read and one serialisation per
event, however many watch. ``?after_seq=N`` resumes a
stream after a reconnect without gaps, on any ingress replica. A client that connects
after the task ended still receives the terminal event before the close.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable
from typing import Annotated, TypeVar

from fastapi import APIRouter, Query, WebSocket, WebSocketDisconnect, status

from common import metrics
from common.errors import TaskNotFoundError, is_replica_failure
from common.schemas import TaskSnapshot
from deployments.progress_state import Event
from ingress.auth import Caller, caller_of, visible_task, ws_subprotocol
from ingress.fanout import End, Frame, TaskChannel
from ingress.services import IngressServices

logger = logging.getLogger(__name__)
T = TypeVar("T")
router = APIRouter()

CLOSE_TASK_NOT_FOUND = 4404
CLOSE_BAD_REQUEST = 4400
CLOSE_TRACKER_UNAVAILABLE = 1011
TASK_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
"""Task ids are uuid hex (``new_task_id``); anything outside this is refused before lookup."""
MAX_SEQ = 2**53
"""Far above any real task's event count; larger ``after_seq`` values are refused."""
TRACKER_RETRY_S = 0.5
"""Wait before asking the tracker again after it died (Ray restarts it at once)."""
TRACKER_GIVE_UP_S = 60.0
"""A tracker unreachable this long closes open streams with 1011 (clients poll instead)."""


class TrackerUnavailable(Exception):
    """The tracker stayed unreachable for ``TRACKER_GIVE_UP_S``."""


def _bad_request(task_id: str, after_seq: str | None) -> str | None:
    """Why this handshake is refused (a close reason, at most 123 bytes), or ``None``."""
    if not TASK_ID.match(task_id):
        return "invalid task id"
    if after_seq is not None and not (
        after_seq.isascii() and after_seq.isdigit() and int(after_seq[:20]) <= MAX_SEQ
    ):
        return f"after_seq must be an integer 0..{MAX_SEQ}"
    return None


@router.websocket("/ws/tasks/{task_id}")
async def task_events(
    websocket: WebSocket,
    task_id: str,
    after_seq: Annotated[
        str | None, Query(description="Resume after this seq (an integer 0..2^53).")
    ] = None,
) -> None:
    services: IngressServices = websocket.app.state.services
    caller = caller_of(websocket)  # the middleware closed with 4401 if there was no key
    await websocket.accept(subprotocol=ws_subprotocol(websocket.scope))
    metrics.websocket_opened()
    try:
        await _serve(websocket, services, task_id, after_seq, caller)
    finally:
        metrics.websocket_closed()


async def _serve(
    websocket: WebSocket,
    services: IngressServices,
    task_id: str,
    after_seq: str | None,
    caller: Caller,
) -> None:
    refused = _bad_request(task_id, after_seq)
    if refused is not None:
        await websocket.close(CLOSE_BAD_REQUEST, refused)
        return
    if caller.owner_scope is not None:  # another key's task is "not found", like an unknown one
        try:
            await visible_task(services.db, caller, task_id)
        except TaskNotFoundError:
            await websocket.close(CLOSE_TASK_NOT_FOUND, "task not found")
            return
    try:
        snap = await services.progress.snapshot(task_id)
    except Exception:
        logger.warning("progress tracker unavailable for websocket", exc_info=True)
        await websocket.close(
            CLOSE_TRACKER_UNAVAILABLE, "progress tracker unavailable; poll /tasks/{id}/progress"
        )
        return
    if snap is None:
        await websocket.close(CLOSE_TASK_NOT_FOUND, "task not found")
        return
    await websocket.send_text(snap.model_dump_json())
    cursor = _start_cursor(snap, int(after_seq) if after_seq is not None else None)
    if snap.status.terminal and cursor >= snap.seq:
        # The client has seen the terminal event already: nothing more will come.
        await websocket.close(status.WS_1000_NORMAL_CLOSURE, snap.status.value)
        return
    try:
        await _stream(websocket, services, task_id, cursor, snap.seq)
    except WebSocketDisconnect:
        logger.debug("websocket client left", extra={"task_id": task_id})


def _start_cursor(snap: TaskSnapshot, after_seq: int | None) -> int:
    if after_seq is not None:
        return min(after_seq, snap.seq)
    # A new client has the snapshot; a finished task still owes it the terminal event.
    return snap.seq - 1 if snap.status.terminal else snap.seq


class EventFeed:
    """The next events of one task after a cursor: Redis first, the tracker actor when
    Redis is down, lacks the range (trimmed, expired, published before it came back) or
    lags behind what the tracker is known to have."""

    def __init__(self, services: IngressServices, task_id: str, *, known_seq: int) -> None:
        self._services = services
        self._task_id = task_id
        self._known = known_seq  # the highest seq known to exist (snapshot, events seen)
        self._down_since: float | None = None  # when the tracker last stopped answering

    async def after(self, cursor: int) -> list[Event] | None:
        wait = self._services.ws_wait_seconds
        reader = self._services.events
        if reader is not None and reader.usable():
            caught_up = cursor >= self._known
            # Behind: the events exist, so Redis must have them now or the actor serves them.
            events = await reader.read_after(self._task_id, cursor, wait if caught_up else 0.0)
            if events:
                return self._seen(events)
            if events is not None and caught_up:
                return self._seen(await self._actor_now(cursor))
        try:
            events = await self._services.progress.events_after(self._task_id, cursor, wait)
        except Exception as exc:
            if not is_replica_failure(exc):
                raise
            await self._tracker_away(exc)
            return []  # asked again: the restarted tracker continues after ``cursor``
        self._down_since = None
        return self._seen(events)

    async def _tracker_away(self, exc: BaseException) -> None:
        """The tracker died under a wait (Ray restarts it): back off briefly, then the
        caller asks again. Raises ``TrackerUnavailable`` once it has been gone too long."""
        loop = asyncio.get_running_loop()
        if self._down_since is None:
            self._down_since = loop.time()
            logger.warning(
                "progress tracker stopped under a websocket (%s); waiting for its restart",
                type(exc).__name__,
                extra={"task_id": self._task_id},
            )
        elif loop.time() - self._down_since > TRACKER_GIVE_UP_S:
            raise TrackerUnavailable(self._task_id) from exc
        await asyncio.sleep(TRACKER_RETRY_S)

    async def _actor_now(self, cursor: int) -> list[Event] | None:
        """After Redis had nothing new for a while: one non-waiting look at the tracker, so
        a publisher that lags or lost Redis cannot stall the stream (and a deleted task
        closes it)."""
        try:
            return await self._services.progress.events_after(self._task_id, cursor, 0.0)
        except Exception:
            logger.debug("tracker check failed; staying on Redis", exc_info=True)
            return []

    async def ended(self, cursor: int) -> bool:
        """True when the task is over and ``cursor`` is at or past its last event."""
        try:
            snap = await self._services.progress.snapshot(self._task_id)
        except Exception:  # the tracker is away: keep streaming; the next wait is bounded
            logger.debug("tracker snapshot failed", exc_info=True)
            return False
        return snap is None or (snap.status.terminal and cursor >= snap.seq)

    def _seen(self, events: list[Event] | None) -> list[Event] | None:
        if events:
            self._known = max(self._known, events[-1].seq)
        return events


async def _until_disconnect(websocket: WebSocket) -> None:
    """Read (and drop) whatever the client sends until it leaves: this endpoint takes no
    client messages, and a frame from the client must not end the stream abruptly."""
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return


class _Left(Exception):
    """The client went away while this handler waited."""


async def _unless_left(work: Awaitable[T], disconnected: asyncio.Future[None]) -> T:
    """``await work``, unless the client leaves first (``_Left``). A coroutine is cancelled
    then; a future is left alone, since it may be the channel's, shared by every watcher."""
    job = asyncio.ensure_future(work)
    pending: set[asyncio.Future[object]] = {job, disconnected}  # type: ignore[arg-type]
    await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
    if not job.done():
        if job is not work:
            job.cancel()
        raise _Left
    return job.result()


async def _stream(
    websocket: WebSocket,
    services: IngressServices,
    task_id: str,
    cursor: int,
    known_seq: int,
) -> None:
    """Send every event after ``cursor`` from the task's shared channel (``ingress.fanout``),
    then close with the reason the stream ended."""

    def feed() -> EventFeed:
        return EventFeed(services, task_id, known_seq=known_seq)

    disconnected = asyncio.ensure_future(_until_disconnect(websocket))
    channel = services.fanout.join(task_id, cursor, feed)
    own: EventFeed | None = None  # for the events before the channel's window, if any
    try:
        while True:
            if cursor < channel.base:
                own = own or feed()
                events = await _unless_left(own.after(cursor), disconnected)
                if events is None:
                    await websocket.close(CLOSE_TASK_NOT_FOUND, "task not found")
                    return
                frames = [Frame.of(e) for e in events if e.seq > cursor]
            else:
                await _unless_left(channel.news(cursor), disconnected)
                frames = channel.frames_after(cursor)
            for frame in frames:
                await websocket.send_text(frame.text)
                cursor = frame.seq
                if frame.terminal is not None:
                    await websocket.close(status.WS_1000_NORMAL_CLOSURE, frame.terminal)
                    return
            if channel.ended is not None and cursor >= channel.head:
                await _close_ended(websocket, channel)
                return
    except _Left:
        return
    finally:
        disconnected.cancel()
        services.fanout.leave(channel)


async def _close_ended(websocket: WebSocket, channel: TaskChannel) -> None:
    if channel.ended == End.NOT_FOUND:
        await websocket.close(CLOSE_TASK_NOT_FOUND, "task not found")
    elif channel.ended == End.OVER:
        # Nothing new and nothing to come (the terminal event is at or before the cursor).
        await websocket.close(status.WS_1000_NORMAL_CLOSURE, "task ended")
    else:
        if isinstance(channel.error, TrackerUnavailable):
            logger.warning(
                "progress tracker stayed unavailable", extra={"task_id": channel.task_id}
            )
        await websocket.close(
            CLOSE_TRACKER_UNAVAILABLE, "progress tracker unavailable; poll /tasks/{id}/progress"
        )
