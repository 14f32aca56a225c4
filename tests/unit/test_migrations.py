"""Alembic migrations of storage/: idempotent, concurrent-safe, and matching the models."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Column, Integer, MetaData, Table

from common.schemas import TaskError, TaskParams, TaskStatus, TaskType
from storage import Database, TaskRow, lifecycle, migrate
from storage import repository as repo
from storage.db import downgrade
from storage.models import Base

pytestmark = pytest.mark.unit

REPO_ROOT = Path(__file__).resolve().parents[2]


def _diff(db: Database, metadata: MetaData = Base.metadata) -> list[Any]:
    with db.engine.connect() as conn:
        ctx = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": True}
        )
        return list(compare_metadata(ctx, metadata))


def _tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


HEAD = "0006"


def _version(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [r[0] for r in conn.execute("SELECT version_num FROM alembic_version")]


def test_migrate_twice_is_a_noop(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "dir" / "db.sqlite"
    url = f"sqlite:///{path}"
    migrate(url)
    tables = {"tasks", "api_keys", "blobs", "blob_chunks", "alembic_version"}
    assert _tables(path) == tables and _version(path) == [HEAD]
    db = Database(url)
    repo.create_task(
        db,
        task_id="keep",
        task_type=TaskType.speech_to_text,
        params=TaskParams(),
        file_name=None,
        audio_key=None,
    )
    migrate(url)
    assert _version(path) == [HEAD]
    assert repo.get_task(db, task_id="keep") is not None
    db.dispose()


def test_models_match_migration(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    migrate(url)
    db = Database(url)
    assert _diff(db) == []
    # The comparison does see differences: a metadata with an extra column is reported.
    extra = MetaData()
    for table in Base.metadata.tables.values():
        table.to_metadata(extra)
    Table("extra", extra, Column("id", Integer, primary_key=True))
    assert [d[0] for d in _diff(db, extra)] == ["add_table"]
    db.dispose()


def test_downgrade_base_then_upgrade(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    url = f"sqlite:///{path}"
    migrate(url)
    downgrade(url, "base")
    assert "tasks" not in _tables(path) and _version(path) == []
    migrate(url)
    assert "tasks" in _tables(path) and _version(path) == [HEAD]


def test_concurrent_migrate_on_one_sqlite_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    barrier = threading.Barrier(3)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            barrier.wait()
            migrate(url)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert _version(tmp_path / "db.sqlite") == [HEAD]


RACE_SCRIPT = """
import sys, time
from storage import migrate
start = float(sys.argv[2])
while time.time() < start:
    time.sleep(0.001)
migrate(sys.argv[1])
"""


def test_concurrent_migrate_from_processes(tmp_path: Path) -> None:
    """Ray workers starting together each call migrate() on the same SQLite file."""
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    start = str(time.time() + 3)  # a wall-clock barrier once all three have imported
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACE_SCRIPT, url, start],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    assert _version(tmp_path / "db.sqlite") == [HEAD]


def test_in_memory_database_migrates() -> None:
    db = Database("sqlite://")
    migrate(db)
    assert _diff(db) == []
    with db.session() as session:
        assert session.query(TaskRow).count() == 0
    db.dispose()


def test_alembic_cli_reads_url_from_settings(tmp_path: Path) -> None:
    path = tmp_path / "cli.db"
    env = {
        **os.environ,
        "WHISPERX_SERVE_DATABASE_URL": f"sqlite:///{path}",
        "PYTHONPATH": str(REPO_ROOT),
    }
    cmd = [sys.executable, "-m", "alembic", "-c", "storage/alembic.ini", "upgrade", "head"]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert _version(path) == [HEAD]


def test_upgrade_from_0001_keeps_every_row(tmp_path: Path) -> None:
    """An existing 0001 database with rows in every status upgrades to head unchanged."""
    path = tmp_path / "old.sqlite"
    url = f"sqlite:///{path}"
    migrate(url, "0001")
    with sqlite3.connect(path) as conn:
        for i, status in enumerate(["queued", "processing", "completed", "failed"]):
            conn.execute(
                "INSERT INTO tasks (id, status, task_type, params, progress_percentage, "
                "progress_stage, progress_seq, timings, attempts, created_at, updated_at, result) "
                "VALUES (?, ?, 'speech-to-text', '{}', ?, 'queued', ?, '{}', 1, ?, ?, ?)",
                (
                    f"t{i}",
                    status,
                    25.0 * i,
                    i,
                    f"2026-01-0{i + 1} 00:00:00.000000",
                    "2026-01-01 00:00:00.000000",
                    '{"language": "en", "segments": []}',
                ),
            )
    migrate(url)
    assert _version(path) == [HEAD]
    db = Database(url)
    rows, total = repo.list_tasks(db, newest_first=False)
    assert total == 4
    assert [(r.id, r.status, r.progress_percentage, r.progress_seq) for r in rows] == [
        ("t0", "queued", 0.0, 0),
        ("t1", "processing", 25.0, 1),
        ("t2", "completed", 50.0, 2),
        ("t3", "failed", 75.0, 3),
    ]
    assert rows[2].to_public().result is not None
    assert all(r.inputs is None and r.cancel_requested_at is None for r in rows)
    assert all(r.owner_key_id is None for r in rows)  # 0003: existing tasks have no owner
    assert lifecycle.cancel(db, task_id="t0") == (TaskStatus.cancelled, True)  # new column works
    db.dispose()


def test_upgrade_from_0002_keeps_rows_and_adds_speaker_names(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    url = f"sqlite:///{path}"
    migrate(url, "0002")
    db = Database(url)
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO tasks (id, status, task_type, params, progress_percentage, "
            "progress_stage, progress_seq, timings, attempts, created_at, updated_at, result) "
            "VALUES ('old', 'completed', 'speech-to-text', '{}', 100, 'complete', 7, '{}', 1, "
            "'2026-01-01 00:00:00.000000', '2026-01-01 00:00:00.000000', "
            '\'{"language": "en", "segments": [], "speakers": ["SPEAKER_00"]}\')'
        )
    migrate(url)
    assert _version(path) == [HEAD]
    row = repo.get_task(db, task_id="old")
    assert row is not None and row.progress_seq == 7 and row.speaker_names is None
    assert row.to_public().speaker_names == {}
    updated = repo.set_speaker_names(db, task_id="old", names={"SPEAKER_00": "Ann"})
    assert updated is not None and updated.to_public().speaker_names == {"SPEAKER_00": "Ann"}
    db.dispose()
    downgrade(url, "0002")
    with sqlite3.connect(path) as conn:
        columns = {r[1] for r in conn.execute("PRAGMA table_info(tasks)")}
        assert [r[0] for r in conn.execute("SELECT id FROM tasks")] == ["old"]
    assert "speaker_names" not in columns and "inputs" in columns


OLD_ERROR_ROW = (
    "INSERT INTO tasks (id, status, task_type, params, progress_percentage, progress_stage, "
    "progress_seq, timings, attempts, created_at, updated_at, error_code, error_message, "
    "error_detail) VALUES (?, ?, 'speech-to-text', '{}', 40, 'aligning', 5, '{}', 1, "
    "'2026-01-01 00:00:00.000000', '2026-01-01 00:00:00.000000', ?, ?, ?)"
)


def test_0006_moves_the_error_columns_into_one_json_column_and_back(tmp_path: Path) -> None:
    """Rows the 0004 schema wrote keep their error across the upgrade (and the downgrade)."""
    path = tmp_path / "old.sqlite"
    url = f"sqlite:///{path}"
    migrate(url, "0004")
    with sqlite3.connect(path) as conn:
        conn.execute(OLD_ERROR_ROW, ("bad", "failed", "invalid_audio", "Bad file.", "ffmpeg: 1"))
        conn.execute(OLD_ERROR_ROW, ("terse", "failed", "internal", None, None))
        conn.execute(OLD_ERROR_ROW, ("fine", "completed", None, None, None))
    migrate(url)
    assert _version(path) == [HEAD]
    db = Database(url)
    errors = {r.id: r.to_public().error for r in repo.list_tasks(db)[0]}
    assert errors == {
        "bad": TaskError(
            error_code="invalid_audio", user_message="Bad file.", technical_detail="ffmpeg: 1"
        ),
        "terse": TaskError(error_code="internal", user_message=""),
        "fine": None,
    }
    with sqlite3.connect(path) as conn:
        columns = {r[1] for r in conn.execute("PRAGMA table_info(tasks)")}
    assert "error" in columns and not columns & {"error_code", "error_message", "error_detail"}
    db.dispose()

    downgrade(url, "0004")
    with sqlite3.connect(path) as conn:
        back = conn.execute(
            "SELECT id, error_code, error_message, error_detail FROM tasks ORDER BY id"
        ).fetchall()
        columns = {r[1] for r in conn.execute("PRAGMA table_info(tasks)")}
    assert back == [
        ("bad", "invalid_audio", "Bad file.", "ffmpeg: 1"),
        ("fine", None, None, None),
        ("terse", "internal", "", ""),
    ]
    assert "error" not in columns
