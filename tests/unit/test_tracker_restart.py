"""A restarted ProgressTracker (a new incarnation rebuilt from the task row) numbers its
events after what a watcher already received, so the watcher's stream stays gap-free and
still ends with the terminal event. The tracker runs as a plain object: no Ray."""

from __future__ import annotations

from pathlib import Path

from common.schemas import Segment, TaskParams, TaskProgressStage, TaskType, Timings, Transcript
from deployments.progress import ProgressTracker
from storage import repository
from storage.db import Database, migrate

STAGES = [TaskProgressStage.transcribing.value, TaskProgressStage.diarizing.value]


async def test_restart_continues_after_the_watchers_cursor(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tasks.db'}"
    migrate(url)
    db = Database(url)
    repository.create_task(
        db,
        task_id="t",
        task_type=TaskType.speech_to_text,
        params=TaskParams(),
        file_name=None,
        audio_path=None,
    )
    repository.claim_tasks(db, worker_id="w", limit=1, lease_seconds=60)
    old = ProgressTracker(url, mirror_interval_s=3600)  # in-stage progress never mirrored
    await old.start("t", STAGES)
    await old.enter_stage("t", TaskProgressStage.diarizing.value)
    for pct in (10, 20, 30, 40):
        await old.report("t", TaskProgressStage.diarizing.value, pct)
    seen = await old.events_after("t", 0, 0.0)
    assert seen is not None
    cursor = seen[-1].seq  # what a watcher received before the crash
    mirrored = repository.get_task(db, task_id="t")
    assert mirrored is not None and mirrored.progress_seq < cursor  # the mirror lags

    new = ProgressTracker(url, mirror_interval_s=3600)  # the restarted incarnation
    assert await new.events_after("t", cursor, 0.0) == []  # the watcher asks again
    await new.report("t", TaskProgressStage.diarizing.value, 50)
    result = Transcript(language="en", segments=[Segment(start=0, end=1, text=" hi")])
    assert await new.finish("t", "completed", result=result, timings=Timings())
    after = await new.events_after("t", cursor, 0.0)
    assert after is not None
    assert [e.seq for e in after] == [cursor + 1, cursor + 2]
    assert after[-1].status.terminal
    row = repository.get_task(db, task_id="t")
    assert row is not None and row.progress_seq == cursor + 2
    db.dispose()
