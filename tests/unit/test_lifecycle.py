"""storage.lifecycle: the status transitions, on SQLite here and on PostgreSQL through
tests/integration/test_postgres_storage.py, which runs the same ``CASES``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from common.schemas import (
    TaskError,
    TaskParams,
    TaskProgressStage,
    TaskStatus,
    TaskType,
    Timings,
    Transcript,
)
from storage import Database, lifecycle, migrate
from storage import repository as repo

pytestmark = pytest.mark.unit

RESULT = Transcript(language="en")
ERROR = TaskError(error_code="processing_failed", user_message="It failed.", technical_detail="x")


def _new(db: Database, *task_ids: str) -> None:
    for task_id in task_ids:
        repo.create_task(
            db,
            task_id=task_id,
            task_type=TaskType.speech_to_text,
            params=TaskParams(diarize=False),
            file_name=None,
            audio_key=None,
        )


def _status(db: Database, task_id: str) -> str:
    row = repo.get_task(db, task_id=task_id)
    assert row is not None
    return row.status


def cancel_queued_at_once_running_by_flag(db: Database) -> None:
    _new(db, "c0", "c1", "c2")
    lifecycle.claim(db, worker_id="w", limit=1, lease_seconds=30)  # c0 runs
    assert lifecycle.cancel(db, task_id="c1") == (TaskStatus.cancelled, True)
    assert _status(db, "c1") == "cancelled"
    assert lifecycle.claim(db, worker_id="w", limit=5, lease_seconds=30)[0].id == "c2"
    assert not lifecycle.cancel_requested(db, task_id="c0")
    assert lifecycle.cancel(db, task_id="c0") == (TaskStatus.processing, False)
    assert lifecycle.cancel_requested(db, task_id="c0")
    assert not lifecycle.cancel_requested(db, task_id="c2")
    assert not lifecycle.cancel_requested(db, task_id="nope")
    assert lifecycle.finish(db, task_id="c0", status=TaskStatus.cancelled, seq=7, worker_id="w")
    row = repo.get_task(db, task_id="c0")
    assert row is not None and (row.status, row.progress_seq, row.claimed_by) == (
        "cancelled",
        7,
        None,
    )
    assert not lifecycle.cancel_requested(db, task_id="c0")  # over: nothing left to stop
    assert not lifecycle.finish(db, task_id="c0", status=TaskStatus.cancelled)  # already final
    assert lifecycle.cancel(db, task_id="c0") == (TaskStatus.cancelled, False)
    assert lifecycle.cancel(db, task_id="c1") == (TaskStatus.cancelled, False)  # once only
    assert lifecycle.cancel(db, task_id="nope") is None


def finish_needs_the_lease_when_a_worker_is_named(db: Database) -> None:
    """A run that lost its lease to another runner cannot end the task that one now runs."""
    _new(db, "t")
    lifecycle.claim(db, worker_id="new", limit=1, lease_seconds=30)
    assert not lifecycle.finish(
        db, task_id="t", status=TaskStatus.completed, result=RESULT, worker_id="old"
    )
    assert _status(db, "t") == "processing"
    assert lifecycle.finish(
        db,
        task_id="t",
        status=TaskStatus.completed,
        result=RESULT,
        timings=Timings(total=1.5),
        seq=4,
        worker_id="new",
    )
    row = repo.get_task(db, task_id="t")
    assert row is not None and row.status == "completed" and row.completed_at is not None
    public = row.to_public()
    assert public.result == RESULT and public.timings.total == 1.5
    assert (row.progress_percentage, row.progress_stage, row.progress_seq) == (
        100.0,
        TaskProgressStage.complete.value,
        4,
    )


def a_failure_keeps_how_far_it_got(db: Database) -> None:
    _new(db, "f")
    lifecycle.claim(db, worker_id="w", limit=1, lease_seconds=30)
    stage = TaskProgressStage.transcribing
    assert repo.update_progress(db, task_id="f", stage=stage, percentage=40.0, seq=9)
    assert lifecycle.finish(db, task_id="f", status=TaskStatus.failed, error=ERROR, seq=3)
    row = repo.get_task(db, task_id="f")
    assert row is not None and row.to_public().error == ERROR
    assert (row.progress_percentage, row.progress_seq) == (40.0, 9)  # seq never goes back
    assert not lifecycle.finish(db, task_id="f", status=TaskStatus.completed, result=RESULT)


def finish_refuses_what_is_not_an_outcome(db: Database) -> None:
    _new(db, "x")
    with pytest.raises(ValueError, match="result"):
        lifecycle.finish(db, task_id="x", status=TaskStatus.completed)
    with pytest.raises(ValueError, match="error"):
        lifecycle.finish(db, task_id="x", status=TaskStatus.failed)
    with pytest.raises(ValueError, match="not a final status"):
        lifecycle.finish(db, task_id="x", status=TaskStatus.processing)
    assert _status(db, "x") == "queued"


def release_hands_back_only_what_the_worker_holds(db: Database) -> None:
    _new(db, "r")
    (claimed,) = lifecycle.claim(db, worker_id="a", limit=1, lease_seconds=30)
    assert claimed.attempts == 1
    assert lifecycle.renew(db, worker_id="b", task_ids=["r"], lease_seconds=30) == set()
    assert not lifecycle.release(db, task_id="r", worker_id="b")
    assert lifecycle.renew(db, worker_id="a", task_ids=["r", "r"], lease_seconds=30) == {"r"}
    assert lifecycle.release(db, task_id="r", worker_id="a")
    row = repo.get_task(db, task_id="r")
    assert row is not None and (row.status, row.attempts, row.claimed_by) == ("queued", 0, None)


CASES: list[Callable[[Database], None]] = [
    cancel_queued_at_once_running_by_flag,
    finish_needs_the_lease_when_a_worker_is_named,
    a_failure_keeps_how_far_it_got,
    finish_refuses_what_is_not_an_outcome,
    release_hands_back_only_what_the_worker_holds,
]


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    url = f"sqlite:///{tmp_path / 'tasks.db'}"
    migrate(url)
    database = Database(url)
    yield database
    database.dispose()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__)
def test_lifecycle_on_sqlite(db: Database, case: Callable[[Database], None]) -> None:
    case(db)
