"""Task persistence: keyword-only functions, each in its own short transaction.

Every state change is a conditional ``UPDATE ... WHERE`` whose rowcount says whether it
applied, so concurrent workers, progress writers and Ray replicas need no row locks and
the same SQL runs on SQLite and PostgreSQL. Returned rows are detached snapshots.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
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
from storage import blobs
from storage.coltypes import UtcDateTime
from storage.db import Database
from storage.models import TaskRow
from storage.quota import Quota, QuotaExceeded, owner_lock_key, refusal, take_token

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
    audio_key: str | None,
    audio_duration: float | None = None,
    inputs: dict[str, Any] | None = None,
    owner_key_id: str | None = None,
    quota: Quota | None = None,
) -> TaskRow:
    """Insert a queued task at 0 %, owned by ``owner_key_id``.

    With a ``quota`` the task is inserted only if it fits (raises :class:`QuotaExceeded`
    otherwise, storing nothing); see :mod:`storage.quota`.
    """
    now = utcnow()
    row = TaskRow(
        id=task_id,
        status=TaskStatus.queued.value,
        task_type=task_type.value,
        file_name=file_name,
        audio_key=audio_key,
        audio_duration=audio_duration,
        params=params.model_dump(mode="json"),
        inputs=inputs,
        progress_percentage=0.0,
        progress_stage=TaskProgressStage.queued.value,
        progress_seq=0,
        timings={},
        attempts=0,
        created_at=now,
        updated_at=now,
        owner_key_id=owner_key_id,
    )
    with db.session() as session:
        if quota is not None and owner_key_id is not None and db.backend == "postgresql":
            session.execute(select(func.pg_advisory_xact_lock(owner_lock_key(owner_key_id))))
        session.add(row)
        session.flush()  # SQLite: the INSERT takes the write lock, so the count below is exact
        if quota is not None:
            refused = refusal(
                session, quota=quota, owner_key_id=owner_key_id, now=now, exclude_task_id=task_id
            )
            if refused is not None:
                raise QuotaExceeded(refused)  # the session rolls the insert back
            take_token(session, quota=quota, owner_key_id=owner_key_id, now=now)
    return row


def check_quota(db: Database, *, owner_key_id: str | None, quota: Quota) -> None:
    """Raise :class:`QuotaExceeded` if one more task of this owner would not fit now.

    A cheap early answer before an upload is read; ``create_task`` decides for good.
    """
    with db.session() as session:
        refused = refusal(session, quota=quota, owner_key_id=owner_key_id, now=utcnow())
    if refused is not None:
        raise QuotaExceeded(refused)


def get_task(db: Database, *, task_id: str) -> TaskRow | None:
    with db.session() as session:
        return session.get(TaskRow, task_id)


@dataclass(frozen=True)
class TaskFilter:
    """``GET /task/all`` filters; unset fields match everything."""

    status: TaskStatus | None = None
    task_type: TaskType | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    owner_key_id: str | None = None
    """Only the tasks of this API key; ``None``: every owner's."""

    def where(self) -> list[ColumnElement[bool]]:
        clauses: list[ColumnElement[bool]] = []
        if self.owner_key_id is not None:
            clauses.append(TaskRow.owner_key_id == self.owner_key_id)
        if self.status is not None:
            clauses.append(TaskRow.status == self.status.value)
        if self.task_type is not None:
            clauses.append(TaskRow.task_type == self.task_type.value)
        if self.created_after is not None:
            clauses.append(TaskRow.created_at >= self.created_after)
        if self.created_before is not None:
            clauses.append(TaskRow.created_at < self.created_before)
        return clauses


def list_tasks(
    db: Database,
    *,
    filters: TaskFilter = TaskFilter(),
    limit: int = 100,
    offset: int = 0,
    newest_first: bool = True,
) -> tuple[list[TaskRow], int]:
    """One page of tasks matching ``filters``, and how many match in all."""
    order = (
        (TaskRow.created_at.desc(), TaskRow.id.desc())
        if newest_first
        else (TaskRow.created_at.asc(), TaskRow.id.asc())
    )
    where = filters.where()
    with db.session() as session:
        total = session.scalar(select(func.count()).select_from(TaskRow).where(*where)) or 0
        rows = session.scalars(
            select(TaskRow).where(*where).order_by(*order).limit(limit).offset(offset)
        )
        return list(rows), total


def delete_task(db: Database, *, task_id: str) -> TaskRow | None:
    """Delete the task's row and, in the same transaction, its audio if the database is
    the blob store; returns what was deleted (another store's file is the caller's)."""
    with db.session() as session:
        row = session.get(TaskRow, task_id)
        if row is not None:
            session.delete(row)
            if row.audio_key:
                blobs.delete_rows(session, row.audio_key)
        return row


def set_speaker_names(db: Database, *, task_id: str, names: dict[str, str]) -> TaskRow | None:
    """Replace the task's speaker display names; returns the updated row (None: unknown)."""
    if not _update(db, task_id, true(), speaker_names=names or None, updated_at=utcnow()):
        return None
    return get_task(db, task_id=task_id)


def request_cancel(db: Database, *, task_id: str) -> TaskStatus | None:
    """Cancel a task: at once if it is still queued, else flag it for its runner.

    Returns the status the task has afterwards (``cancelled`` for a queued task,
    ``processing`` while its runner gets to a safe point, or the terminal status it already
    had), or ``None`` for an unknown task.
    """
    now = utcnow()
    if _update(
        db,
        task_id,
        TaskRow.status == TaskStatus.queued.value,
        status=TaskStatus.cancelled.value,
        cancel_requested_at=now,
        completed_at=now,
        updated_at=now,
    ):
        return TaskStatus.cancelled
    _update(
        db,
        task_id,
        and_(TaskRow.status == TaskStatus.processing.value, TaskRow.cancel_requested_at.is_(None)),
        cancel_requested_at=now,
        updated_at=now,
    )
    row = get_task(db, task_id=task_id)
    return TaskStatus(row.status) if row is not None else None


def cancel_requested(db: Database, *, task_ids: Sequence[str]) -> set[str]:
    """Of ``task_ids``, those with a pending cancellation request."""
    if not task_ids:
        return set()
    with db.session() as session:
        return set(
            session.scalars(
                select(TaskRow.id).where(
                    TaskRow.id.in_(list(task_ids)), TaskRow.cancel_requested_at.is_not(None)
                )
            )
        )


def cancel_task(
    db: Database, *, task_id: str, timings: Timings | None = None, seq: int | None = None
) -> bool:
    """Mark a task cancelled, unless it is already terminal (its runner stopped it)."""
    return _finish(db, task_id, TaskStatus.cancelled, timings, seq)


def _finish(
    db: Database,
    task_id: str,
    status: TaskStatus,
    timings: Timings | None,
    seq: int | None,
    **values: Any,
) -> bool:
    """End a task in ``status`` with ``values``, unless it is already terminal."""
    now = utcnow()
    values.update(
        status=status.value,
        claimed_by=None,
        lease_expires_at=None,
        completed_at=now,
        updated_at=now,
    )
    if timings is not None:
        values["timings"] = timings.model_dump(mode="json")
    if seq is not None:
        values["progress_seq"] = _at_least_seq(db, seq)
    return _update(db, task_id, TaskRow.status.not_in(_TERMINAL), **values)


def queue_stats(db: Database) -> tuple[int, datetime | None]:
    """How many tasks are queued, and when the oldest of them was created."""
    with db.session() as session:
        count, oldest = session.execute(
            select(func.count(), func.min(TaskRow.created_at)).where(
                TaskRow.status == TaskStatus.queued.value
            )
        ).one()
        if isinstance(oldest, str):  # SQLite's min() of a typed column comes back as text
            oldest = datetime.fromisoformat(oldest)
        if oldest is not None and oldest.tzinfo is None:
            oldest = oldest.replace(tzinfo=UTC)
        return int(count or 0), oldest


def queue_position(db: Database, *, task_id: str) -> int | None:
    """1 for the next queued task to be claimed; ``None`` unless the task is queued."""
    with db.session() as session:
        row = session.get(TaskRow, task_id)
        if row is None or row.status != TaskStatus.queued.value:
            return None
        ahead = session.scalar(
            select(func.count())
            .select_from(TaskRow)
            .where(
                TaskRow.status == TaskStatus.queued.value,
                or_(
                    TaskRow.created_at < row.created_at,
                    and_(TaskRow.created_at == row.created_at, TaskRow.id < row.id),
                ),
            )
        )
        return int(ahead or 0) + 1


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
    return _finish(
        db,
        task_id,
        TaskStatus.failed,
        timings,
        seq,
        error=error.model_dump(mode="json"),
    )


def count_by_status(db: Database) -> dict[TaskStatus, int]:
    """Number of tasks in each status (every status present, zero when none)."""
    counts = dict.fromkeys(TaskStatus, 0)
    with db.session() as session:
        for status, count in session.execute(
            select(TaskRow.status, func.count()).group_by(TaskRow.status)
        ):
            counts[TaskStatus(status)] = count
    return counts
