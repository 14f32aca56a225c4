"""``WS /ws/tasks/{task_id}``: a snapshot, then every event in seq order, then a normal close.

The handler waits inside the tracker actor (``events_after``), which answers as soon as a
new event exists, so nothing here polls or sleeps. ``?after_seq=N`` resumes a stream after
a reconnect without gaps (within the tracker's bounded log). A client that connects after
the task ended still receives the terminal event before the close.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

from fastapi import APIRouter, Query, WebSocket, WebSocketDisconnect, status

from common.schemas import TaskSnapshot
from ingress.services import IngressServices

logger = logging.getLogger(__name__)
router = APIRouter()

CLOSE_TASK_NOT_FOUND = 4404
CLOSE_TRACKER_UNAVAILABLE = 1011


@router.websocket("/ws/tasks/{task_id}")
async def task_events(
    websocket: WebSocket,
    task_id: str,
    after_seq: Annotated[int | None, Query(ge=0, description="Resume after this seq.")] = None,
) -> None:
    services: IngressServices = websocket.app.state.services
    await websocket.accept()
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
    cursor = _start_cursor(snap, after_seq)
    try:
        await _stream(websocket, services, task_id, cursor)
    except WebSocketDisconnect:
        logger.debug("websocket client left", extra={"task_id": task_id})


def _start_cursor(snap: TaskSnapshot, after_seq: int | None) -> int:
    if after_seq is not None:
        return min(after_seq, snap.seq)
    # A new client has the snapshot; a finished task still owes it the terminal event.
    return snap.seq - 1 if snap.status.terminal else snap.seq


async def _stream(
    websocket: WebSocket, services: IngressServices, task_id: str, cursor: int
) -> None:
    disconnected = asyncio.ensure_future(websocket.receive())
    try:
        while True:
            fetch = asyncio.ensure_future(
                services.progress.events_after(task_id, cursor, services.ws_wait_seconds)
            )
            done, _ = await asyncio.wait({fetch, disconnected}, return_when=asyncio.FIRST_COMPLETED)
            if disconnected in done:
                fetch.cancel()
                return
            events = fetch.result()
            if events is None:
                await websocket.close(CLOSE_TASK_NOT_FOUND, "task not found")
                return
            for event in events:
                await websocket.send_text(event.model_dump_json())
                cursor = event.seq
                if event.status.terminal:
                    await websocket.close(status.WS_1000_NORMAL_CLOSURE, event.status.value)
                    return
    finally:
        disconnected.cancel()
