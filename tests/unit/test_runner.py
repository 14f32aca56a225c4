"""TaskRunner's lifecycle and cancel paths without Serve or Ray: real SQLite, the real
ProgressTracker class behind an in-process stand-in for its actor handle, fake models."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from ray.exceptions import ActorDiedError
from sqlalchemy.exc import OperationalError

from common.config import RunnerConfig
from common.schemas import TaskStatus
from common.settings import Settings
from deployments import runner as runner_module
from deployments.clients import ProgressClient
from deployments.pipeline import TaskPipeline
from deployments.progress import ProgressTracker
from storage import Database, lifecycle, repository
from storage.models import TaskRow
from tests.fakes import add_task, task_database
from tests.unit.test_pipeline import FakeAlign, FakeAsr, FakeDiarize, fixed_decode

pytestmark = [
    pytest.mark.unit,
    # runners built without Serve are dropped without Serve awaiting their async __del__
    pytest.mark.filterwarnings("ignore:coroutine 'TaskRunner.__del__':RuntimeWarning"),
]


class LocalTracker:
    """``tracker.method.remote(...)`` on an in-process ProgressTracker. ``restart()`` ends
    every call in flight with ``ActorDiedError`` and continues on a fresh incarnation, as
    Ray does when the actor dies."""

    def __init__(self, url: str) -> None:
        self._url = url
        self.tracker = ProgressTracker(url, mirror_interval_s=0.0)
        self._pending: set[asyncio.Task[Any]] = set()
        self._killed: set[asyncio.Task[Any]] = set()
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        outer = self

        class _Method:
            def remote(self, *args: Any, **kwargs: Any) -> Any:
                return outer._call(name, *args, **kwargs)

        return _Method()

    async def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(name)
        task = asyncio.ensure_future(getattr(self.tracker, name)(*args, **kwargs))
        self._pending.add(task)
        try:
            return await task
        except asyncio.CancelledError:
            if task in self._killed:
                raise ActorDiedError() from None
            raise
        finally:
            self._pending.discard(task)

    def restart(self) -> None:
        for task in self._pending:
            self._killed.add(task)
            task.cancel()
        self.tracker = ProgressTracker(self._url, mirror_interval_s=0.0)


def _runner(
    db: Database, tracker: LocalTracker, diarize: FakeDiarize, worker_id: str, tmp: Path
) -> Any:
    deployment: Any = runner_module.TaskRunner  # a Serve Deployment; the class inside it
    cls = deployment.func_or_class
    runner = cls.__new__(cls)
    settings = Settings(data_dir=tmp, database_url=str(db.engine.url))
    runner._setup(db, RunnerConfig(), ProgressClient(tracker), worker_id, settings)
    runner._pipeline = TaskPipeline(
        asr=FakeAsr(),
        align=FakeAlign({"en"}),
        diarize=diarize,
        progress=runner._progress,
        outcomes=runner._outcomes,
        decode=fixed_decode,
        default_language="en",
        record_backoff_s=0.0,
        cancelled_by_user=runner._stopping.__contains__,
    )
    return runner


class Setup:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.db = task_database(tmp / "tasks.db")
        self.url = str(self.db.engine.url)
        self.tracker = LocalTracker(self.url)
        self.diarize = FakeDiarize()
        self.diarize.block = asyncio.Event()  # runs stay in diarization until released

    def runner(self, worker_id: str) -> Any:
        return _runner(self.db, self.tracker, self.diarize, worker_id, self.tmp)

    def submit(self, task_id: str = "t") -> None:
        add_task(self.db, task_id)

    def start_on(self, runner: Any, task_id: str = "t") -> asyncio.Task[None]:
        (row,) = lifecycle.claim(self.db, worker_id=runner._worker_id, limit=1, lease_seconds=60)
        assert row.id == task_id
        runner._start(row)
        run: asyncio.Task[None] = runner._inflight[task_id]
        return run

    def status(self, task_id: str = "t") -> str:
        row = repository.get_task(self.db, task_id=task_id)
        assert row is not None
        return row.status


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    s = Setup(tmp_path)
    yield s
    s.diarize.block.set()  # type: ignore[union-attr]
    s.db.dispose()


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def _in_diarization(setup: Setup) -> None:
    await until(lambda: bool(setup.diarize.requests))


async def test_a_completed_task_is_written_once_by_the_runner_then_published(
    setup: Setup,
) -> None:
    setup.submit()
    setup.diarize.block.set()  # type: ignore[union-attr]
    runner = setup.runner("a")
    run = setup.start_on(runner)
    await run
    row = repository.get_task(setup.db, task_id="t")
    assert row is not None and row.status == "completed" and row.result is not None
    snap = await setup.tracker.tracker.snapshot("t")
    assert snap is not None and snap.status is TaskStatus.completed
    assert row.progress_seq == snap.seq  # the row stores the terminal event's number
    assert "finish" not in setup.tracker.calls  # the tracker writes no outcome
    assert setup.tracker.calls.count("finished") == 1
    assert not runner._inflight
    await until(lambda: not runner._background)  # its cancel watch ended with it


async def test_a_cancel_on_the_replica_holding_the_task_stops_it_at_once(setup: Setup) -> None:
    setup.submit()
    runner = setup.runner("a")
    run = setup.start_on(runner)
    await _in_diarization(setup)
    # stopped before the flag is written: the run may already have ended when it answers
    assert await runner.cancel("t") in (TaskStatus.processing, TaskStatus.cancelled)
    await asyncio.wait_for(asyncio.shield(run), 2)  # no polling interval to wait out
    assert setup.status() == "cancelled"
    snap = await setup.tracker.tracker.snapshot("t")
    assert snap is not None and snap.status is TaskStatus.cancelled
    assert "request_cancel" not in setup.tracker.calls  # held here: no signal needed


async def test_a_cancel_taken_by_another_replica_reaches_the_holder(setup: Setup) -> None:
    setup.submit()
    holder, other = setup.runner("a"), setup.runner("b")
    run = setup.start_on(holder)
    await _in_diarization(setup)
    await until(lambda: "wait_cancelled" in setup.tracker.calls)  # the holder's held call
    assert await other.cancel("t") is TaskStatus.processing
    await asyncio.wait_for(asyncio.shield(run), 2)
    assert setup.status() == "cancelled" and "t" not in holder._inflight
    assert setup.tracker.calls.count("wait_cancelled") == 1  # one held call, no polling


async def test_a_cancel_whose_signal_died_with_the_tracker_still_arrives(setup: Setup) -> None:
    setup.submit()
    holder = setup.runner("a")
    run = setup.start_on(holder)
    await _in_diarization(setup)
    await until(lambda: "wait_cancelled" in setup.tracker.calls)
    lifecycle.cancel(setup.db, task_id="t")  # flagged by another replica; its signal is lost
    setup.tracker.restart()
    await asyncio.wait_for(asyncio.shield(run), 5)
    assert setup.status() == "cancelled"
    snap = await setup.tracker.tracker.snapshot("t")  # the new incarnation
    assert snap is not None and snap.status is TaskStatus.cancelled


async def test_a_database_hiccup_during_the_users_cancel_is_not_a_runner_stop(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    setup.submit()
    runner = setup.runner("a")
    run = setup.start_on(runner)
    await _in_diarization(setup)

    def hiccup(db: Database, *, task_id: str) -> Any:
        raise OperationalError("UPDATE tasks", {}, Exception("database is locked"))

    monkeypatch.setattr(lifecycle, "cancel", hiccup)
    assert await runner.cancel("t") is TaskStatus.processing
    await asyncio.wait_for(asyncio.shield(run), 2)
    row = repository.get_task(setup.db, task_id="t")
    assert row is not None and row.status == "cancelled"  # not released to run again
    assert row.attempts == 1


async def test_a_queued_task_ends_cancelled_with_its_event_and_callback(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    setup.submit()
    runner = setup.runner("b")
    called: list[str] = []

    async def send_callback(task_id: str) -> None:
        called.append(task_id)

    monkeypatch.setattr(runner, "_send_callback", send_callback)
    assert await runner.cancel("t") is TaskStatus.cancelled
    assert setup.status() == "cancelled"
    snap = await setup.tracker.tracker.snapshot("t")
    assert snap is not None and snap.status is TaskStatus.cancelled
    await until(lambda: called == ["t"])
    assert await runner.cancel("t") is TaskStatus.cancelled  # again: nothing more happens
    await asyncio.sleep(0.05)
    assert called == ["t"]
    assert await runner.cancel("nope") is None


async def test_a_run_that_does_not_stop_is_abandoned_as_cancelled(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner_module, "CANCEL_GRACE_SECONDS", 0.2)
    setup.submit()
    runner = setup.runner("a")
    stubborn = asyncio.Event()

    async def diarize(audio: Any, req: Any, *, progress: Any = None) -> Any:
        setup.diarize.requests.append(req)
        while not stubborn.is_set():  # swallows cancellation, as a stuck library might
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                continue
        raise AssertionError("unreachable")

    monkeypatch.setattr(setup.diarize, "diarize", diarize)
    run = setup.start_on(runner)
    await _in_diarization(setup)
    await runner.cancel("t")
    await until(lambda: setup.status() == "cancelled", timeout=3)
    assert "t" not in runner._inflight  # the slot is free again
    assert not run.done()
    stubborn.set()
    run.cancel()


class SlowFinished:
    """Holds the tracker's ``finished`` until released: the window in which a run's row is
    final but its terminal event is not yet published."""

    def __init__(self, setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        tracker = setup.tracker.tracker
        publish = tracker.finished

        async def finished(*args: Any, **kwargs: Any) -> None:
            self.entered.set()
            await self.release.wait()
            await publish(*args, **kwargs)

        monkeypatch.setattr(tracker, "finished", finished)


async def _completed_run_publishing(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> tuple[SlowFinished, Any, asyncio.Task[None]]:
    """A run that completed and wrote its row, held inside the tracker's ``finished``."""
    slow = SlowFinished(setup, monkeypatch)
    setup.submit()
    setup.diarize.block.set()  # type: ignore[union-attr]
    runner = setup.runner("a")
    run = setup.start_on(runner)
    await asyncio.wait_for(slow.entered.wait(), 5)
    return slow, runner, run


async def test_a_run_cancelled_while_it_publishes_its_outcome_still_publishes_it(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow, _, run = await _completed_run_publishing(setup, monkeypatch)
    assert setup.status() == "completed"  # the row is final, the event not yet out
    run.cancel()  # as a shutdown, or a second cancel, would
    await asyncio.wait_for(run, 2)  # the run ends (its outcome is written) ...
    slow.release.set()  # ... and the terminal event still reaches the tracker
    snap: Any = None

    async def published() -> bool:
        nonlocal snap
        snap = await setup.tracker.tracker.snapshot("t")
        return snap is not None and snap.status is TaskStatus.completed

    deadline = asyncio.get_running_loop().time() + 5
    while not await published():
        assert asyncio.get_running_loop().time() < deadline, f"tracker still shows {snap}"
        await asyncio.sleep(0.01)


async def test_a_run_whose_row_is_final_is_not_stopped_as_a_lost_lease(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow, runner, run = await _completed_run_publishing(setup, monkeypatch)
    await runner._renew_once()  # the row is final: no lease to renew, and nothing lost
    assert not run.cancelled() and not run.done()
    slow.release.set()
    await asyncio.wait_for(run, 5)
    snap = await setup.tracker.tracker.snapshot("t")
    assert snap is not None and snap.status is TaskStatus.completed
    assert not runner._outcomes.finishing


async def test_a_run_whose_lease_another_runner_took_is_stopped(setup: Setup) -> None:
    setup.submit()
    runner = setup.runner("a")
    run = setup.start_on(runner)
    await _in_diarization(setup)
    taken = repository.update_where(setup.db, "t", TaskRow.claimed_by == "a", claimed_by="b")
    assert taken  # another runner holds it now
    await runner._renew_once()
    await asyncio.wait_for(run, 2)
    assert "t" not in runner._inflight
    assert setup.status() == "processing"  # the other runner's to finish, not ours
