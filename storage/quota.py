"""Admission of new tasks: per-key limits and the queue bound, counted from the database.

The counts come from the tasks table, never from one replica's memory, so every ingress
replica applies the same limits. ``create_task`` checks again inside its insert
transaction (PostgreSQL: under a per-key advisory lock; SQLite: under its write lock), so
concurrent submissions of one key cannot slip past its limits together. The queue bound
is checked the same way but without a global lock: concurrent submissions may pass it by
as many as are in flight at once.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from common.schemas import TaskStatus
from storage.models import TaskRow

RATE_WINDOW = timedelta(minutes=1)
_ACTIVE = (TaskStatus.queued.value, TaskStatus.processing.value)


@dataclass(frozen=True)
class Quota:
    """What a new task must fit in; ``None`` fields are unlimited."""

    max_active: int | None = None
    """The owner's queued + running tasks."""
    max_per_minute: int | None = None
    """The owner's tasks created in the last minute."""
    max_queued: int | None = None
    """Queued tasks of every owner."""
    busy_retry_after_s: int = 5
    overload_retry_after_s: int = 10


@dataclass(frozen=True)
class Refusal:
    kind: Literal["active", "rate", "queue"]
    count: int
    limit: int
    retry_after_s: int


class QuotaExceeded(Exception):
    """``create_task`` refused the task; nothing was stored."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal)
        self.refusal = refusal


def owner_lock_key(owner_key_id: str) -> int:
    """pg_advisory_xact_lock key serialising one owner's admissions (a signed int64)."""
    digest = hashlib.sha256(b"wxsquota:" + owner_key_id.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def refusal(
    session: Session,
    *,
    quota: Quota,
    owner_key_id: str | None,
    now: datetime,
    exclude_task_id: str | None = None,
) -> Refusal | None:
    """Why one more task would not fit, or ``None`` when it does (``exclude_task_id``: the
    task being inserted, not counted against itself)."""
    others = [TaskRow.id != exclude_task_id] if exclude_task_id else []
    if quota.max_queued is not None:
        queued = _count(session, TaskRow.status == TaskStatus.queued.value, *others)
        if queued >= quota.max_queued:
            return Refusal("queue", queued, quota.max_queued, quota.overload_retry_after_s)
    if owner_key_id is None:
        return None
    mine = [TaskRow.owner_key_id == owner_key_id, *others]
    if quota.max_active is not None:
        active = _count(session, TaskRow.status.in_(_ACTIVE), *mine)
        if active >= quota.max_active:
            return Refusal("active", active, quota.max_active, quota.busy_retry_after_s)
    if quota.max_per_minute is not None:
        since = now - RATE_WINDOW
        recent = _count(session, TaskRow.created_at > since, *mine)
        if recent >= quota.max_per_minute:
            # Room for one more once the (recent - limit + 1)-th oldest leaves the window.
            leaves = session.scalar(
                select(TaskRow.created_at)
                .where(TaskRow.created_at > since, *mine)
                .order_by(TaskRow.created_at)
                .offset(recent - quota.max_per_minute)
                .limit(1)
            )
            wait = (leaves + RATE_WINDOW - now).total_seconds() if leaves else 1.0
            return Refusal("rate", recent, quota.max_per_minute, max(1, math.ceil(wait)))
    return None


def _count(session: Session, *where: object) -> int:
    return int(session.scalar(select(func.count()).select_from(TaskRow).where(*where)) or 0)  # type: ignore[arg-type]
