"""The tracker's database mirror of live progress: batched, and complete once flushed."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from common.schemas import TaskProgressStage
from deployments.progress import ProgressTracker
from storage import repository
from storage.db import Database
from tests.fakes import task_database

STAGES = [TaskProgressStage.transcribing.value, TaskProgressStage.diarizing.value]


async def test_progress_of_many_tasks_is_mirrored_in_a_few_transactions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = [f"t{i}" for i in range(50)]
    db = task_database(tmp_path / "tasks.db", *ids, claimed_by="w")
    tracker = ProgressTracker(str(db.engine.url), mirror_interval_s=3600)
    written = repository.update_progress_many
    batches: list[int] = []
    first_may_finish = threading.Event()

    def counting(db: Database, updates: Sequence[repository.ProgressMirror]) -> None:
        batches.append(len(updates))
        if len(batches) == 1:  # hold the first commit while the other tasks start
            assert first_may_finish.wait(10)
        written(db, updates)

    monkeypatch.setattr(repository, "update_progress_many", counting)
    for task_id in ids:
        await tracker.start(task_id, STAGES)
    first_may_finish.set()
    await tracker.flush_mirror()
    # One write per task was one commit per task; here the first task's write is one
    # batch and everything queued behind it is the next.
    assert batches == [1, 49]
    for task_id in ids:
        row = repository.get_task(db, task_id=task_id)
        assert row is not None and row.progress_stage == "transcribing" and row.progress_seq == 1
    await tracker.close()


async def test_a_failed_mirror_write_is_logged_and_later_ones_still_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = task_database(tmp_path / "tasks.db", "a", "b", claimed_by="w")
    tracker = ProgressTracker(str(db.engine.url), mirror_interval_s=3600)
    written = repository.update_progress_many
    calls = 0

    def flaky(db: Database, updates: Sequence[repository.ProgressMirror]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("database is locked")
        written(db, updates)

    monkeypatch.setattr(repository, "update_progress_many", flaky)
    await tracker.start("a", STAGES)
    await tracker.flush_mirror()
    await tracker.start("b", STAGES)
    await tracker.flush_mirror()
    a, b = repository.get_task(db, task_id="a"), repository.get_task(db, task_id="b")
    assert a is not None and a.progress_seq == 0  # its one write failed
    assert b is not None and b.progress_seq == 1
    await tracker.close()
