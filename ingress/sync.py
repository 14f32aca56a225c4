"""Waiting for a task to end, for routes that answer synchronously (the OpenAI-style ones).

The wait is event-driven: ``events_after`` in the progress tracker returns as soon as the
task has a new event, and the row is read only when an event is terminal or nothing new
came. The tracker persists the terminal state before it publishes the terminal event, so
the row read then holds the result. If the tracker is unreachable the row is polled at a
bounded rate instead. The task itself is durable: giving up waiting never stops it.
"""

from __future__ import annotations

import asyncio
import logging

from common.errors import TaskNotFoundError
from common.schemas import TaskPublic
from ingress.services import IngressServices
from storage import repository

logger = logging.getLogger(__name__)

EVENT_WAIT_SLICE_S = 30.0
"""Longest single wait inside the tracker, so a lost wake-up costs at most this much."""
POLL_INTERVAL_S = 1.0
"""Row polling interval when the tracker is unavailable or has nothing new."""


async def _read(services: IngressServices, task_id: str) -> TaskPublic:
    row = await asyncio.to_thread(repository.get_task, services.db, task_id=task_id)
    if row is None:  # deleted while we waited
        raise TaskNotFoundError("The task was deleted before it finished.", f"task {task_id}")
    return row.to_public()


async def wait_for_task(
    services: IngressServices, task_id: str, timeout_s: float
) -> TaskPublic | None:
    """The task once it is terminal, or ``None`` if it is still running after ``timeout_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    cursor = 0
    use_tracker = True
    while (remaining := deadline - loop.time()) > 0:
        if use_tracker:
            try:
                events = await services.progress.events_after(
                    task_id, cursor, min(remaining, EVENT_WAIT_SLICE_S)
                )
            except Exception:
                logger.warning(
                    "progress tracker unavailable; polling the task row",
                    exc_info=True,
                    extra={"task_id": task_id},
                )
                use_tracker = False
                continue
            if events:
                cursor = max(cursor, *(e.seq for e in events))
                if not any(e.status.terminal for e in events):
                    continue
            task = await _read(services, task_id)
            if task.status.terminal:
                return task
            if events is None or not events:
                # Nothing new (slice over, or the tracker lost track): never spin.
                await asyncio.sleep(min(POLL_INTERVAL_S, max(deadline - loop.time(), 0)))
        else:
            await asyncio.sleep(min(POLL_INTERVAL_S, remaining))
            task = await _read(services, task_id)
            if task.status.terminal:
                return task
    task = await _read(services, task_id)  # it may have ended during the last wait
    return task if task.status.terminal else None
