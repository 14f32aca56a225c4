"""The task lifecycle: every status transition of a task, and nothing else.

::

    create (ingress) ─► queued ──claim──► processing ──finish──► completed | failed | cancelled
                          ▲    │             │  ▲ renew
                          │    └──cancel─────┼──┴──────────────► cancelled (queued: at once)
                          └──────release─────┘   cancel of a running task: flagged, and its
                                                 runner finishes it ``cancelled``

The TaskRunner is the only caller. It is the one component that holds a lease on the task
(``claimed_by`` + ``lease_expires_at``), so it is the only one that knows whether a
transition is still valid: a run whose lease was lost must not complete a task another
runner now holds, and only the holder can stop the run before it writes ``cancelled``.
The ingress only creates rows (``repository.create_task``) and asks the runner to cancel;
the ProgressTracker keeps live progress and publishes the terminal event after the runner
wrote the row, so whoever sees ``completed`` can read the result at once.

Each transition is one conditional ``UPDATE ... WHERE`` whose rowcount says whether it
applied, so racing runners, progress mirrors and cancels need no row locks and the same
SQL runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import ColumnElement, CursorResult, and_, func, literal, or_, select, update

from common.schemas import (
    TaskError,
    TaskProgressStage,
    TaskStatus,
    Timings,
    Transcript,
    utcnow,
)
from storage.coltypes import UtcDateTime
from storage.db import Database
from storage.models import TaskRow
from storage.repository import at_least_seq, get_task, update_where

_TERMINAL = tuple(s.value for s in TaskStatus if s.terminal)


def _claimable(now: datetime) -> ColumnElement[bool]:
    """Queued, or processing under an expired lease (its runner died)."""
    return or_(
        TaskRow.status == TaskStatus.queued.value,
        and_(
            TaskRow.status == TaskStatus.processing.value,
            TaskRow.lease_expires_at.is_not(None),
            TaskRow.lease_expires_at < now,
        ),
    )


def claim(
    db: Database,
    *,
    worker_id: str,
    limit: int,
    lease_seconds: float,
    now: datetime | None = None,
) -> list[TaskRow]:
    """queued (or processing under an expired lease) → processing, held by ``worker_id``:
    up to ``limit`` tasks, oldest first, never one claimed twice.

    Each candidate is taken by its own conditional UPDATE (the candidate predicate again,
    plus the id), so of two racing workers only one sees rowcount 1.
    """
    if limit <= 0:
        return []
    now = now or utcnow()
    lease_until = now + timedelta(seconds=lease_seconds)
    with db.session() as session:
        candidates = session.scalars(
            select(TaskRow.id)
            .where(_claimable(now))
            .order_by(TaskRow.created_at, TaskRow.id)
            .limit(limit)
        ).all()
    claimed: list[str] = []
    for task_id in candidates:
        if update_where(
            db,
            task_id,
            _claimable(now),
            status=TaskStatus.processing.value,
            claimed_by=worker_id,
            lease_expires_at=lease_until,
            attempts=TaskRow.attempts + 1,
            started_at=func.coalesce(TaskRow.started_at, literal(now, UtcDateTime)),
            updated_at=now,
        ):
            claimed.append(task_id)
    if not claimed:
        return []
    with db.session() as session:
        rows = session.scalars(select(TaskRow).where(TaskRow.id.in_(claimed))).all()
    return sorted(rows, key=lambda r: claimed.index(r.id))


def renew(
    db: Database, *, worker_id: str, task_ids: Sequence[str], lease_seconds: float
) -> set[str]:
    """Extend the leases ``worker_id`` still holds; returns the ids renewed."""
    now = utcnow()
    until = now + timedelta(seconds=lease_seconds)
    renewed: set[str] = set()
    with db.session() as session:
        for task_id in dict.fromkeys(task_ids):
            result: CursorResult[Any] = session.execute(  # type: ignore[assignment]
                update(TaskRow)
                .where(
                    TaskRow.id == task_id,
                    TaskRow.status == TaskStatus.processing.value,
                    TaskRow.claimed_by == worker_id,
                )
                .values(lease_expires_at=until, updated_at=now),
                execution_options={"synchronize_session": False},
            )
            if result.rowcount == 1:
                renewed.add(task_id)
    return renewed


def release(db: Database, *, task_id: str, worker_id: str) -> bool:
    """processing → queued: hand a task this worker holds back (graceful shutdown).

    The interrupted run does not count towards ``max_attempts``: nothing failed.
    """
    return update_where(
        db,
        task_id,
        and_(TaskRow.status == TaskStatus.processing.value, TaskRow.claimed_by == worker_id),
        status=TaskStatus.queued.value,
        attempts=TaskRow.attempts - 1,
        claimed_by=None,
        lease_expires_at=None,
        updated_at=utcnow(),
    )


def finish(
    db: Database,
    *,
    task_id: str,
    status: TaskStatus,
    result: Transcript | None = None,
    error: TaskError | None = None,
    timings: Timings | None = None,
    seq: int | None = None,
    worker_id: str | None = None,
) -> bool:
    """End a task: ``completed`` with its ``result``, ``failed`` with its ``error``, or
    ``cancelled``; True when this call wrote it.

    Nothing changes if the task is already terminal, or (with ``worker_id``) if that
    worker no longer holds it: a run that lost its lease must not end a task another
    runner has taken over. ``seq`` is the terminal event's number (the row's copy of it
    never goes backwards). A failed task keeps its stage and percentage, to show how far
    it got; a completed one is at 100 %.
    """
    now = utcnow()
    values: dict[str, Any] = {
        "status": status.value,
        "claimed_by": None,
        "lease_expires_at": None,
        "completed_at": now,
        "updated_at": now,
    }
    if status is TaskStatus.completed:
        if result is None:
            raise ValueError("a completed task needs its result")
        values.update(
            result=result.model_dump(mode="json"),
            progress_percentage=100.0,
            progress_stage=TaskProgressStage.complete.value,
            progress_message=None,
        )
    elif status is TaskStatus.failed:
        if error is None:
            raise ValueError("a failed task needs its error")
        values["error"] = error.model_dump(mode="json")
    elif status is not TaskStatus.cancelled:
        raise ValueError(f"{status.value} is not a final status")
    if timings is not None:
        values["timings"] = timings.model_dump(mode="json")
    if seq is not None:
        values["progress_seq"] = at_least_seq(db, seq)
    where: ColumnElement[bool] = TaskRow.status.not_in(_TERMINAL)
    if worker_id is not None:
        where = and_(where, TaskRow.claimed_by == worker_id)
    return update_where(db, task_id, where, **values)


class Cancel(NamedTuple):
    status: TaskStatus
    """The task's status after the cancel: ``cancelled`` for a queued task, ``processing``
    while its runner stops it, or the final status it already had."""
    ended_now: bool
    """This call ended the (queued) task: no runner will, so the caller publishes it."""


def cancel(db: Database, *, task_id: str) -> Cancel | None:
    """A user's cancel: a queued task ends ``cancelled`` now; a running one is flagged
    (``cancel_requested_at``) for its runner, which stops the run and finishes it.
    ``None`` for an unknown task."""
    now = utcnow()
    if update_where(
        db,
        task_id,
        TaskRow.status == TaskStatus.queued.value,
        status=TaskStatus.cancelled.value,
        cancel_requested_at=now,
        completed_at=now,
        updated_at=now,
    ):
        return Cancel(TaskStatus.cancelled, ended_now=True)
    update_where(
        db,
        task_id,
        and_(TaskRow.status == TaskStatus.processing.value, TaskRow.cancel_requested_at.is_(None)),
        cancel_requested_at=now,
        updated_at=now,
    )
    row = get_task(db, task_id=task_id)
    return Cancel(TaskStatus(row.status), ended_now=False) if row is not None else None


def cancel_requested(db: Database, *, task_id: str) -> bool:
    """Whether the running task was flagged by :func:`cancel`: what a runner that (re)starts
    watching a task reads once, so a cancel survives a restart of the signal's carrier."""
    with db.session() as session:
        flagged = session.scalar(
            select(TaskRow.id).where(
                TaskRow.id == task_id,
                TaskRow.status == TaskStatus.processing.value,
                TaskRow.cancel_requested_at.is_not(None),
            )
        )
    return flagged is not None
