"""Admission of new tasks: per-key limits and the queue bound, counted from the database.

The counts come from the database (the tasks table; the per-minute token bucket on the
key's row), never from one replica's memory, so every ingress replica applies the same
limits. ``create_task`` checks again inside its insert
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

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from common.schemas import TaskStatus
from storage.models import ApiKeyRow, TaskRow

RATE_WINDOW = timedelta(minutes=1)
_ACTIVE = (TaskStatus.queued.value, TaskStatus.processing.value)


@dataclass(frozen=True)
class Quota:
    """What a new task must fit in; ``None`` fields are unlimited."""

    max_active: int | None = None
    """The owner's queued + running tasks."""
    max_per_minute: int | None = None
    """The owner's submissions per minute (a token bucket: bursts of this many, then this
    many a minute)."""
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
        tokens = _tokens(session, owner_key_id, quota.max_per_minute, now)
        if tokens < 1:
            wait = (1 - tokens) * RATE_WINDOW.total_seconds() / quota.max_per_minute
            used = quota.max_per_minute - math.floor(tokens)
            return Refusal("rate", used, quota.max_per_minute, max(1, math.ceil(wait)))
    return None


def take_token(session: Session, *, quota: Quota, owner_key_id: str | None, now: datetime) -> None:
    """Count one admitted submission against the owner's per-minute limit."""
    if quota.max_per_minute is None or owner_key_id is None:
        return
    tokens = _tokens(session, owner_key_id, quota.max_per_minute, now)
    session.execute(
        update(ApiKeyRow)
        .where(ApiKeyRow.id == owner_key_id)
        .values(rate_tokens=tokens - 1, rate_checked_at=now),
        execution_options={"synchronize_session": False},
    )


def _tokens(session: Session, owner_key_id: str, per_minute: int, now: datetime) -> float:
    """Submissions the owner has left now: a bucket of ``per_minute`` that refills at
    ``per_minute`` a minute. Kept on the key's row, so deleting tasks gives none back."""
    state = session.execute(
        select(ApiKeyRow.rate_tokens, ApiKeyRow.rate_checked_at).where(ApiKeyRow.id == owner_key_id)
    ).one_or_none()
    if state is None or state.rate_tokens is None or state.rate_checked_at is None:
        return float(per_minute)
    checked: datetime = state.rate_checked_at
    elapsed = max(0.0, (now - checked).total_seconds())
    refill = elapsed * per_minute / RATE_WINDOW.total_seconds()
    return min(float(per_minute), float(state.rate_tokens) + refill)


def _count(session: Session, *where: object) -> int:
    return int(session.scalar(select(func.count()).select_from(TaskRow).where(*where)) or 0)  # type: ignore[arg-type]
