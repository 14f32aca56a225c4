"""Task persistence: keyword-only functions, each in its own short transaction.

Every state change is a conditional ``UPDATE ... WHERE`` whose rowcount says whether it
applied, so concurrent workers, progress writers and Ray replicas need no row locks and
the same SQL runs on SQLite and PostgreSQL. Returned rows are detached snapshots.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    CursorResult,
    Integer,
    and_,
    func,
    literal,
    or_,
    select,
    true,
    update,
)

from common.schemas import (
    TaskError,
    TaskParams,
    TaskProgressStage,
    TaskStatus,
    TaskType,
    Timings,
    Transcript,
    utcnow,
)
from storage.coltypes import UtcDateTime
from storage.db import Database
from storage.models import TaskRow

_ACTIVE = (TaskStatus.queued.value, TaskStatus.processing.value)
_TERMINAL = tuple(s.value for s in TaskStatus if s.terminal)


def _update(db: Database, task_id: str, where: ColumnElement[bool], **values: Any) -> bool:
    """Apply ``values`` to the task if ``where`` holds; True when a row changed."""
    stmt = update(TaskRow).where(TaskRow.id == task_id, where).values(**values)
    with db.session() as session:
        result: CursorResult[Any] = session.execute(  # type: ignore[assignment]
            stmt, execution_options={"synchronize_session": False}
        )
        return result.rowcount == 1


def _at_least_seq(db: Database, seq: int) -> ColumnElement[int]:
    """``max(progress_seq, seq)``: a terminal write never moves seq backwards."""
    fn = func.max if db.backend == "sqlite" else func.greatest
    return fn(TaskRow.progress_seq, seq, type_=Integer)


def create_task(
    db: Database,
    *,
    task_id: str,
    task_type: TaskType,
    params: TaskParams,
    file_name: str | None,
    audio_path: str | None,
    audio_duration: float | None = None,
) -> TaskRow:
    """Insert a queued task at 0 %."""
    now = utcnow()
    row = TaskRow(
        id=task_id,
        status=TaskStatus.queued.value,
        task_type=task_type.value,
        file_name=file_name,
        audio_path=audio_path,
        audio_duration=audio_duration,
        params=params.model_dump(mode="json"),
        progress_percentage=0.0,
        progress_stage=TaskProgressStage.queued.value,
        progress_seq=0,
        timings={},
        attempts=0,
        created_at=now,
        updated_at=now,
    )
    with db.session() as session:
        session.add(row)
    return row


def get_task(db: Database, *, task_id: str) -> TaskRow | None:
    with db.session() as session:
        return session.get(TaskRow, task_id)


def list_tasks(
    db: Database, *, status: TaskStatus | None = None, limit: int = 100, offset: int = 0
) -> list[TaskRow]:
    """Tasks, newest first."""
    stmt = select(TaskRow).order_by(TaskRow.created_at.desc(), TaskRow.id.desc())
    if status is not None:
        stmt = stmt.where(TaskRow.status == status.value)
    with db.session() as session:
        return list(session.scalars(stmt.limit(limit).offset(offset)))


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


def claim_tasks(
    db: Database,
    *,
    worker_id: str,
    limit: int,
    lease_seconds: float,
    now: datetime | None = None,
) -> list[TaskRow]:
    """Claim up to ``limit`` tasks for ``worker_id``, oldest first; never one claimed twice.

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
        if _update(
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


def renew_leases(
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


def release_task(db: Database, *, task_id: str, worker_id: str) -> bool:
    """Hand a task this worker holds back to the queue (graceful shutdown).

    The interrupted run does not count towards ``max_attempts``: nothing failed.
    """
    return _update(
        db,
        task_id,
        and_(TaskRow.status == TaskStatus.processing.value, TaskRow.claimed_by == worker_id),
        status=TaskStatus.queued.value,
        attempts=TaskRow.attempts - 1,
        claimed_by=None,
        lease_expires_at=None,
        updated_at=utcnow(),
    )


def update_progress(
    db: Database,
    *,
    task_id: str,
    stage: TaskProgressStage,
    percentage: float,
    seq: int,
    message: str | None = None,
) -> bool:
    """Mirror live progress; stale or out-of-order updates (lower seq or %) are ignored."""
    return _update(
        db,
        task_id,
        and_(
            TaskRow.status.in_(_ACTIVE),
            TaskRow.progress_seq <= seq,
            TaskRow.progress_percentage <= percentage,
        ),
        progress_stage=stage.value,
        progress_percentage=percentage,
        progress_seq=seq,
        progress_message=message,
        updated_at=utcnow(),
    )


def set_audio_duration(db: Database, *, task_id: str, duration: float) -> None:
    _update(db, task_id, true(), audio_duration=duration, updated_at=utcnow())


def complete_task(
    db: Database, *, task_id: str, result: Transcript, timings: Timings, seq: int
) -> bool:
    """Store the transcript and mark the task completed, unless it is already terminal."""
    now = utcnow()
    return _update(
        db,
        task_id,
        TaskRow.status.not_in(_TERMINAL),
        status=TaskStatus.completed.value,
        result=result.model_dump(mode="json"),
        timings=timings.model_dump(mode="json"),
        progress_percentage=100.0,
        progress_stage=TaskProgressStage.complete.value,
        progress_seq=_at_least_seq(db, seq),
        progress_message=None,
        claimed_by=None,
        lease_expires_at=None,
        completed_at=now,
        updated_at=now,
    )


def fail_task(
    db: Database,
    *,
    task_id: str,
    error: TaskError,
    timings: Timings | None = None,
    seq: int | None = None,
) -> bool:
    """Mark the task failed with ``error``, unless it is already terminal.

    Progress stage and percentage stay where they were, to show how far it got.
    """
    now = utcnow()
    values: dict[str, Any] = {
        "status": TaskStatus.failed.value,
        "error_code": error.code,
        "error_message": error.user_message,
        "error_detail": error.technical_detail,
        "claimed_by": None,
        "lease_expires_at": None,
        "completed_at": now,
        "updated_at": now,
    }
    if timings is not None:
        values["timings"] = timings.model_dump(mode="json")
    if seq is not None:
        values["progress_seq"] = _at_least_seq(db, seq)
    return _update(db, task_id, TaskRow.status.not_in(_TERMINAL), **values)


def count_by_status(db: Database) -> dict[TaskStatus, int]:
    """Number of tasks in each status (every status present, zero when none)."""
    counts = dict.fromkeys(TaskStatus, 0)
    with db.session() as session:
        for status, count in session.execute(
            select(TaskRow.status, func.count()).group_by(TaskRow.status)
        ):
            counts[TaskStatus(status)] = count
    return counts
