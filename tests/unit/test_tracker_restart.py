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
    TaskProgressStage,
    TaskStatus,
    Timings,
    Transcript,
)
from deployments.progress import ProgressTracker
from deployments.progress_state import Event
from ingress.app import create_app
from storage import lifecycle, repository
from tests.fakes import FakeTracker, add_task, make_ingress_services, task_database

STAGES = [TaskProgressStage.transcribing.value, TaskProgressStage.diarizing.value]


async def test_restart_continues_after_the_watchers_cursor(tmp_path: Path) -> None:
    db = task_database(tmp_path / "tasks.db", "t", claimed_by="w")
    url = str(db.engine.url)
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
    snap = await new.snapshot("t")  # what the runner reads for the terminal seq
    assert snap is not None
    assert lifecycle.finish(
        db,
        task_id="t",
        status=TaskStatus.completed,
        result=result,
        timings=Timings(),
        seq=snap.seq + 1,
        worker_id="w",
    )
    await new.finished("t", "completed")
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
    add_task(services.db, "t")
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
