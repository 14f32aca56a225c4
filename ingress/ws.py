"""``WS /ws/tasks/{task_id}``: a snapshot, then every event in seq order, then a normal close.

Events come from the task's Redis stream when Redis is configured and can serve them
gap-free (so the tracker actor is not asked once per event per watcher), else from the
tracker actor (``events_after``), which answers as soon as a new event exists. Either way
nothing here polls or sleeps, and a seq is sent at most once. ``?after_seq=N`` resumes a
stream after a reconnect without gaps, on any ingress replica. A client that connects
after the task ended still receives the terminal event before the close.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

from fastapi import APIRouter, Query, WebSocket, WebSocketDisconnect, status

from common.schemas import TaskSnapshot
from deployments.progress_state import Event
from ingress.services import IngressServices

logger = logging.getLogger(__name__)
router = APIRouter()

CLOSE_TASK_NOT_FOUND = 4404
CLOSE_TRACKER_UNAVAILABLE = 1011
SUBPROTOCOL = "whisperx-serve"
"""Browsers cannot set headers on a WebSocket, so they offer ``["whisperx-serve",
"bearer.<key>"]``; a browser drops a connection whose answer names none of its offers."""


@router.websocket("/ws/tasks/{task_id}")
async def task_events(
    websocket: WebSocket,
    task_id: str,
    after_seq: Annotated[int | None, Query(ge=0, description="Resume after this seq.")] = None,
) -> None:
    services: IngressServices = websocket.app.state.services
    offered = websocket.scope.get("subprotocols") or []
    await websocket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
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
    feed = EventFeed(services, task_id, known_seq=snap.seq)
    try:
        await _stream(websocket, feed, _start_cursor(snap, after_seq))
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
        return self._seen(await self._services.progress.events_after(self._task_id, cursor, wait))

    async def _actor_now(self, cursor: int) -> list[Event] | None:
        """After Redis had nothing new for a while: one non-waiting look at the tracker, so
        a publisher that lags or lost Redis cannot stall the stream (and a deleted task
        closes it)."""
        try:
            return await self._services.progress.events_after(self._task_id, cursor, 0.0)
        except Exception:
            logger.debug("tracker check failed; staying on Redis", exc_info=True)
            return []

    def _seen(self, events: list[Event] | None) -> list[Event] | None:
        if events:
            self._known = max(self._known, events[-1].seq)
        return events


async def _stream(websocket: WebSocket, feed: EventFeed, cursor: int) -> None:
    disconnected = asyncio.ensure_future(websocket.receive())
    try:
        while True:
            fetch = asyncio.ensure_future(feed.after(cursor))
            done, _ = await asyncio.wait({fetch, disconnected}, return_when=asyncio.FIRST_COMPLETED)
            if disconnected in done:
                fetch.cancel()
                return
            events = fetch.result()
            if events is None:
                await websocket.close(CLOSE_TASK_NOT_FOUND, "task not found")
                return
            for event in events:
                if event.seq <= cursor:
                    continue  # already sent (the two sources overlap when switching)
                await websocket.send_text(event.model_dump_json())
                cursor = event.seq
                if event.status.terminal:
                    await websocket.close(status.WS_1000_NORMAL_CLOSURE, event.status.value)
                    return
    finally:
        disconnected.cancel()
