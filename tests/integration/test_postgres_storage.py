"""storage on the local PostgreSQL server, each test in a fresh schema (fails if it is down)."""

from __future__ import annotations

import os
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

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
from storage.db import downgrade
from storage.models import Base
from tests.unit.test_lifecycle import CASES as LIFECYCLE_CASES

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

HEAD = "0006"
BASE_URL = os.environ.get(
    "WHISPERX_SERVE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def _admin(sql: str) -> None:
    conninfo = BASE_URL.replace("postgresql+psycopg://", "postgresql://", 1)
    try:
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql)  # type: ignore[arg-type,unused-ignore]
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL at {BASE_URL} is unreachable: {exc}")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A URL whose connections live in a new, empty schema; dropped afterwards."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    _admin(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in BASE_URL else "?"
    yield f"{BASE_URL}{sep}options={quote(f'-csearch_path={schema}')}"
    _admin(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def db(pg_url: str) -> Iterator[Database]:
    migrate(pg_url)
    database = Database(pg_url)
    yield database
    database.dispose()


def _new(db: Database, task_id: str) -> None:
    repo.create_task(
        db,
        task_id=task_id,
        task_type=TaskType.speech_to_text,
        params=TaskParams(diarize=False),
        file_name="a.wav",
        audio_key=None,
    )


def _in_threads(n: int, fn: Callable[[int], Any]) -> list[BaseException]:
    barrier, errors = threading.Barrier(n), []

    def run(k: int) -> None:
        try:
            barrier.wait()
            fn(k)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_concurrent_migrate_on_empty_schema(pg_url: str) -> None:
    assert _in_threads(3, lambda _: migrate(pg_url)) == []
    db = Database(pg_url)
    db.ping()
    with db.engine.connect() as conn:
        ctx = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": True}
        )
        assert compare_metadata(ctx, Base.metadata) == []
        assert ctx.get_current_revision() == HEAD
    migrate(pg_url)  # at head already: no-op
    _new(db, "x")
    downgrade(pg_url, "base")
    migrate(pg_url)
    assert repo.list_tasks(db) == ([], 0)
    db.dispose()


def test_lifecycle_and_public_round_trip(db: Database) -> None:
    _new(db, "t")
    row = repo.get_task(db, task_id="t")
    assert row is not None and row.created_at.tzinfo is not None
    (claimed,) = lifecycle.claim(db, worker_id="w", limit=5, lease_seconds=30)
    assert claimed.status == "processing" and claimed.attempts == 1
    assert claimed.started_at is not None and claimed.started_at.utcoffset() == timedelta(0)
    stage = TaskProgressStage.transcribing
    assert repo.update_progress(db, task_id="t", stage=stage, percentage=30, seq=3)
    assert not repo.update_progress(db, task_id="t", stage=stage, percentage=20, seq=4)
    assert not repo.update_progress(db, task_id="t", stage=stage, percentage=40, seq=2)
    repo.set_audio_duration(db, task_id="t", duration=3.5)
    transcript = Transcript.model_validate({"language": "en", "segments": []})
    timings = Timings(total=2.0)
    assert lifecycle.finish(
        db, status=TaskStatus.completed, task_id="t", result=transcript, timings=timings, seq=5
    )
    assert not lifecycle.finish(
        db, status=TaskStatus.failed, task_id="t", error=TaskError(error_code="x", user_message="y")
    )
    assert not repo.update_progress(db, task_id="t", stage=stage, percentage=50, seq=6)
    done = repo.get_task(db, task_id="t")
    assert done is not None
    public = done.to_public()
    assert public.status is TaskStatus.completed and public.progress_percentage == 100
    assert public.result == transcript and public.timings == timings
    assert public.audio_duration == 3.5 and done.progress_seq == 5

    _new(db, "f")
    error = TaskError(error_code="invalid_audio", user_message="Bad", technical_detail="d")
    assert lifecycle.finish(db, status=TaskStatus.failed, task_id="f", error=error)
    failed = repo.get_task(db, task_id="f")
    assert failed is not None and failed.to_public().error == error
    assert failed.progress_stage == "queued"
    counts = repo.count_by_status(db)
    assert counts[TaskStatus.completed] == 1 and counts[TaskStatus.failed] == 1
    assert [r.id for r in repo.list_tasks(db)[0]] == ["f", "t"]


def test_leases_reclaim_renew_release(db: Database) -> None:
    _new(db, "a")
    _new(db, "b")
    t0 = datetime.now(UTC)
    lifecycle.claim(db, worker_id="dead", limit=1, lease_seconds=10, now=t0)
    lifecycle.claim(db, worker_id="live", limit=1, lease_seconds=10, now=t0)
    soon = t0 + timedelta(seconds=5)
    assert lifecycle.claim(db, worker_id="x", limit=5, lease_seconds=10, now=soon) == []
    assert lifecycle.renew(db, worker_id="live", task_ids=["a", "b"], lease_seconds=60) == {"b"}
    later = t0 + timedelta(seconds=11)
    (again,) = lifecycle.claim(db, worker_id="new", limit=5, lease_seconds=10, now=later)
    assert again.id == "a" and again.attempts == 2 and again.started_at == t0
    assert not lifecycle.release(db, task_id="a", worker_id="dead")
    assert lifecycle.release(db, task_id="a", worker_id="new")
    row = repo.get_task(db, task_id="a")
    assert row is not None and row.status == "queued" and row.claimed_by is None


def test_claim_race_each_task_claimed_exactly_once(db: Database, pg_url: str) -> None:
    for i in range(20):
        _new(db, f"task-{i:02d}")
    claims: list[str] = []
    lock = threading.Lock()

    def worker(k: int) -> None:
        own = Database(pg_url)
        try:
            while rows := lifecycle.claim(own, worker_id=f"w{k}", limit=3, lease_seconds=60):
                with lock:
                    claims.extend(r.id for r in rows)
        finally:
            own.dispose()

    assert _in_threads(4, worker) == []
    counts = Counter(claims)
    assert len(counts) == 20 and set(counts.values()) == {1}
    assert repo.count_by_status(db)[TaskStatus.processing] == 20


def test_upgrade_from_0001_keeps_rows(pg_url: str) -> None:
    """A production database at 0001 with live rows upgrades in place, nothing lost."""
    migrate(pg_url, "0001")
    db = Database(pg_url)
    with db.engine.begin() as conn:  # rows as the 0001 code wrote them (no newer columns)
        for i, (status, result) in enumerate(
            [
                ("completed", '{"language": "en", "segments": []}'),
                ("queued", None),
                ("queued", None),
            ]
        ):
            conn.execute(
                sa.text(
                    "INSERT INTO tasks (id, status, task_type, params, result, progress_percentage,"
                    " progress_stage, progress_seq, timings, attempts, created_at, updated_at)"
                    " VALUES (:id, :status, 'speech-to-text', '{}', CAST(:result AS JSONB), 0,"
                    " 'queued', :seq, '{}', 0, :created, :created)"
                ),
                {
                    "id": f"old-{i}",
                    "status": status,
                    "result": result,
                    "seq": 4 if status == "completed" else 0,
                    "created": datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=i),
                },
            )
    db.dispose()

    migrate(pg_url)
    db = Database(pg_url)
    rows, total = repo.list_tasks(db, newest_first=False)
    assert total == 3
    assert [(r.id, r.status) for r in rows] == [
        ("old-0", "completed"),
        ("old-1", "queued"),
        ("old-2", "queued"),
    ]
    transcript = Transcript.model_validate({"language": "en", "segments": []})
    assert rows[0].to_public().result == transcript and rows[0].progress_seq == 4
    assert lifecycle.cancel(db, task_id="old-1") == (TaskStatus.cancelled, True)
    kind = repo.TaskFilter(task_type=TaskType.speech_to_text)
    assert repo.list_tasks(db, filters=kind)[1] == 3
    db.dispose()


def test_concurrent_progress_terminal_and_cancel_writes(db: Database, pg_url: str) -> None:
    """Progress mirrors, a completion and a cancellation racing on the same rows: each row
    ends in exactly one terminal state, and progress never goes backwards."""
    n = 12
    for i in range(n):
        _new(db, f"r{i}")
    lifecycle.claim(db, worker_id="w", limit=n, lease_seconds=60)
    stage = TaskProgressStage.transcribing
    transcript = Transcript.model_validate({"language": "en", "segments": []})
    outcomes: dict[str, list[str]] = {f"r{i}": [] for i in range(n)}
    lock = threading.Lock()

    def writer(k: int) -> None:
        own = Database(pg_url)
        try:
            for i in range(n):
                task_id = f"r{i}"
                if k == 0 and lifecycle.finish(
                    own,
                    status=TaskStatus.completed,
                    task_id=task_id,
                    result=transcript,
                    timings=Timings(),
                    seq=100,
                ):
                    with lock:
                        outcomes[task_id].append("completed")
                elif k == 1 and lifecycle.finish(
                    own, status=TaskStatus.cancelled, task_id=task_id, seq=100
                ):
                    with lock:
                        outcomes[task_id].append("cancelled")
                elif k == 2:
                    lifecycle.cancel(own, task_id=task_id)
                else:
                    for seq in range(1, 30):
                        repo.update_progress(
                            own, task_id=task_id, stage=stage, percentage=seq * 3.0, seq=seq
                        )
        finally:
            own.dispose()

    assert _in_threads(6, writer) == []
    for i in range(n):
        row = repo.get_task(db, task_id=f"r{i}")
        assert row is not None
        assert len(outcomes[row.id]) == 1 and row.status == outcomes[row.id][0]
        assert row.progress_seq == 100 and row.lease_expires_at is None
        if row.status == "completed":
            assert row.progress_percentage == 100.0 and row.result is not None


def test_0006_keeps_the_errors_of_rows_the_old_schema_wrote(pg_url: str) -> None:
    """Failed rows written under 0004 (three error columns) keep their error in the JSON
    column, and get the columns back on downgrade."""
    migrate(pg_url, "0004")
    db = Database(pg_url)
    with db.engine.begin() as conn:
        for task_id, status, code, message, detail in [
            ("bad", "failed", "invalid_audio", "Bad file.", "ffmpeg: 1"),
            ("fine", "completed", None, None, None),
        ]:
            conn.execute(
                sa.text(
                    "INSERT INTO tasks (id, status, task_type, params, progress_percentage,"
                    " progress_stage, progress_seq, timings, attempts, created_at, updated_at,"
                    " error_code, error_message, error_detail) VALUES (:id, :status,"
                    " 'speech-to-text', '{}', 40, 'aligning', 5, '{}', 1, :at, :at, :code,"
                    " :message, :detail)"
                ),
                {
                    "id": task_id,
                    "status": status,
                    "at": datetime(2026, 1, 1, tzinfo=UTC),
                    "code": code,
                    "message": message,
                    "detail": detail,
                },
            )
    db.dispose()

    migrate(pg_url)
    db = Database(pg_url)
    bad, fine = repo.get_task(db, task_id="bad"), repo.get_task(db, task_id="fine")
    assert bad is not None and fine is not None and fine.to_public().error is None
    assert bad.to_public().error == TaskError(
        error_code="invalid_audio", user_message="Bad file.", technical_detail="ffmpeg: 1"
    )
    db.dispose()

    downgrade(pg_url, "0004")
    db = Database(pg_url)
    with db.engine.connect() as conn:
        back = conn.execute(
            sa.text("SELECT id, error_code, error_message, error_detail FROM tasks ORDER BY id")
        ).all()
        names = {c["name"] for c in sa.inspect(conn).get_columns("tasks")}
    assert [tuple(r) for r in back] == [
        ("bad", "invalid_audio", "Bad file.", "ffmpeg: 1"),
        ("fine", None, None, None),
    ]
    assert "error" not in names
    db.dispose()


@pytest.mark.parametrize("case", LIFECYCLE_CASES, ids=lambda c: c.__name__)
def test_lifecycle_on_postgres(db: Database, case: Callable[[Database], None]) -> None:
    """The same transitions as tests/unit/test_lifecycle.py, on PostgreSQL."""
    case(db)
