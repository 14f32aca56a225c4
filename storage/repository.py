"""Task persistence: keyword-only functions, each in its own short transaction.

Creating, reading, listing and deleting tasks, the queue queries, and the mirror of live
progress. Status transitions (claim, renew, release, finish, cancel) are not here: they
live in :mod:`storage.lifecycle`, called by the TaskRunner alone.

Every change is a conditional ``UPDATE ... WHERE`` whose rowcount says whether it applied,
so concurrent workers, progress writers and Ray replicas need no row locks and the same
SQL runs on SQLite and PostgreSQL. Returned rows are detached snapshots.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    CursorResult,
    Integer,
    Table,
    and_,
    bindparam,
    func,
    or_,
    select,
    true,
    update,
)

from common.schemas import (
    TaskParams,
    TaskProgressStage,
    TaskStatus,
    TaskType,
    utcnow,
)
from storage import blobs
from storage.db import Database
from storage.models import TaskRow
from storage.quota import Quota, QuotaExceeded, owner_lock_key, refusal, take_token

_ACTIVE = (TaskStatus.queued.value, TaskStatus.processing.value)


def update_where(db: Database, task_id: str, where: ColumnElement[bool], **values: Any) -> bool:
    """Apply ``values`` to the task if ``where`` holds; True when a row changed."""
    stmt = update(TaskRow).where(TaskRow.id == task_id, where).values(**values)
    with db.session() as session:
        result: CursorResult[Any] = session.execute(  # type: ignore[assignment]
            stmt, execution_options={"synchronize_session": False}
        )
        return result.rowcount == 1


def at_least_seq(db: Database, seq: int) -> ColumnElement[int]:
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
    if not update_where(db, task_id, true(), speaker_names=names or None, updated_at=utcnow()):
        return None
    return get_task(db, task_id=task_id)


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


def _progress_applies(seq: Any, percentage: Any) -> ColumnElement[bool]:
    """A progress mirror write applies to a live task and never moves seq or % back.
    (``OR`` rather than ``IN``: an expanding ``IN`` cannot run in an executemany.)"""
    return and_(
        or_(*(TaskRow.status == status for status in _ACTIVE)),
        TaskRow.progress_seq <= seq,
        TaskRow.progress_percentage <= percentage,
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
    return update_where(
        db,
        task_id,
        _progress_applies(seq, percentage),
        progress_stage=stage.value,
        progress_percentage=percentage,
        progress_seq=seq,
        progress_message=message,
        updated_at=utcnow(),
    )


@dataclass(frozen=True)
class ProgressMirror:
    """One task's live progress, as ``update_progress`` takes it."""

    task_id: str
    stage: TaskProgressStage
    percentage: float
    seq: int
    message: str | None = None


def update_progress_many(db: Database, updates: Sequence[ProgressMirror]) -> None:
    """``update_progress`` for many tasks in one transaction and one executemany: the
    tracker's mirror of thousands of running tasks costs one commit per batch, not one
    per task. The same conditions apply row by row."""
    if not updates:
        return
    table = cast(Table, TaskRow.__table__)
    stmt = (
        update(table)
        .where(
            table.c.id == bindparam("t_id"),
            _progress_applies(bindparam("t_seq"), bindparam("t_pct")),
        )
        .values(
            progress_stage=bindparam("t_stage"),
            progress_percentage=bindparam("t_pct"),
            progress_seq=bindparam("t_seq"),
            progress_message=bindparam("t_msg"),
            updated_at=bindparam("t_at"),
        )
    )
    now = utcnow()
    rows = [
        {
            "t_id": u.task_id,
            "t_stage": u.stage.value,
            "t_pct": u.percentage,
            "t_seq": u.seq,
            "t_msg": u.message,
            "t_at": now,
        }
        for u in updates
    ]
    with db.session() as session:
        session.connection().execute(stmt, rows)


def set_audio_duration(db: Database, *, task_id: str, duration: float) -> None:
    update_where(db, task_id, true(), audio_duration=duration, updated_at=utcnow())


def count_by_status(db: Database) -> dict[TaskStatus, int]:
    """Number of tasks in each status (every status present, zero when none)."""
    counts = dict.fromkeys(TaskStatus, 0)
    with db.session() as session:
        for status, count in session.execute(
            select(TaskRow.status, func.count()).group_by(TaskRow.status)
        ):
            counts[TaskStatus(status)] = count
    return counts
