"""A restarted ProgressTracker (a new incarnation rebuilt from the task row) numbers its
events after what a watcher already received, so the watcher's stream stays gap-free and
still ends with the terminal event. The tracker runs as a plain object: no Ray."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from common.schemas import (
    Segment,
    TaskParams,
    TaskProgressStage,
    TaskStatus,
    TaskType,
    Timings,
    Transcript,
)
from deployments.progress import ProgressTracker
from deployments.progress_state import Event
from ingress.app import create_app
from storage import repository
from storage.db import Database, migrate
from tests.fakes import FakeTracker, make_ingress_services

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


class ActorDiedError(Exception):
    """Stands in for ray.exceptions.ActorDiedError (matched by name and module)."""


ActorDiedError.__module__ = "ray.exceptions"


class DyingTracker(FakeTracker):
    """Its first wait ends with the actor's death, as when the tracker is SIGKILLed."""

    died = False

    async def events_after(
        self, task_id: str, after_seq: int, timeout_s: float
    ) -> list[Event] | None:
        if not self.died:
            self.died = True
            raise ActorDiedError("The actor died unexpectedly before finishing this task.")
        return await super().events_after(task_id, after_seq, timeout_s)


def test_a_websocket_waits_out_a_dead_tracker_and_ends_with_the_terminal_event(
    tmp_path: Path,
) -> None:
    services = make_ingress_services(tmp_path, tracker=DyingTracker, ws_wait_seconds=0.2)
    repository.create_task(
        services.db,
        task_id="t",
        task_type=TaskType.speech_to_text,
        params=TaskParams(),
        file_name=None,
        audio_path=None,
    )
    tracker: DyingTracker = services.progress  # type: ignore[assignment]
    state = tracker.state("t")
    assert state is not None
    state.start([TaskProgressStage.transcribing])
    with TestClient(create_app(services)) as tc, tc.websocket_connect("/ws/tasks/t") as ws:
        assert ws.receive_json()["type"] == "snapshot"
        state.report(TaskProgressStage.transcribing, 50)
        state.finish(TaskStatus.completed)
        tracker.changed.set()
        events = [ws.receive_json(), ws.receive_json()]
        assert [e["seq"] for e in events] == [2, 3] and events[-1]["status"] == "completed"
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == 1000
    assert tracker.died


async def test_reports_that_arrive_during_finish_never_take_the_rows_seq(tmp_path: Path) -> None:
    """After a replacement, the calls queued for the tracker arrive together: late in-stage
    reports must not number events between the row's terminal seq and the terminal event."""
    import asyncio

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
    first = ProgressTracker(url, mirror_interval_s=0)
    diarizing = TaskProgressStage.diarizing.value
    await first.start("t", STAGES)
    await first.enter_stage("t", diarizing)
    # The replacement: every call below finds the task uncached and reads its row first.
    tracker = ProgressTracker(url, mirror_interval_s=3600)
    result = Transcript(language="en", segments=[Segment(start=0, end=1, text=" hi")])
    early = [asyncio.create_task(tracker.report("t", diarizing, p)) for p in range(10, 30)]
    finishing = asyncio.create_task(tracker.finish("t", "completed", result=result))
    late = [asyncio.create_task(tracker.report("t", diarizing, p)) for p in range(30, 50)]
    await asyncio.gather(*early, *late)
    assert await finishing
    events = await tracker.events_after("t", 0, 0.0)
    assert events is not None and events[-1].status.terminal
    row = repository.get_task(db, task_id="t")
    assert row is not None and row.progress_seq == events[-1].seq
    db.dispose()
