"""One event reader per watched task per ingress replica (``ingress.fanout``)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from common.schemas import TaskProgressStage, TaskStatus
from deployments.progress_state import Event, TaskProgressState
from ingress.app import create_app
from ingress.fanout import End, TaskChannel, TaskFanout
from tests.fakes import FakeTracker, add_task, make_ingress_services
from tests.waiting import wait_until, wait_until_async

T = TaskProgressStage.transcribing


class LogFeed:
    """A task's log, read the way ``EventFeed`` reads it: waits when nothing is new."""

    def __init__(self) -> None:
        self.state = TaskProgressState(task_id="t")
        self.state.start([T])
        self.reads = 0
        self._changed = asyncio.Event()

    def emit(self, percentage: float) -> None:
        self.state.report(T, percentage)
        self._changed.set()

    def finish(self) -> None:
        self.state.finish(TaskStatus.completed)
        self._changed.set()

    async def after(self, cursor: int) -> list[Event] | None:
        self.reads += 1
        while self.state.seq <= cursor and not self.state.status.terminal:
            self._changed.clear()
            await self._changed.wait()
        return self.state.events_after(cursor)

    async def ended(self, cursor: int) -> bool:
        return self.state.status.terminal and cursor >= self.state.seq


async def follow(channel: TaskChannel, cursor: int) -> list[int]:
    """What one watcher receives: the seqs after ``cursor``, up to the terminal one."""
    seen: list[int] = []
    while True:
        await channel.news(cursor)
        for frame in channel.frames_after(cursor):
            seen.append(frame.seq)
            cursor = frame.seq
            if frame.terminal is not None:
                return seen
        if channel.ended is not None and cursor >= channel.head:
            return seen


async def test_every_watcher_gets_every_event_from_one_read_each() -> None:
    feed, fanout = LogFeed(), TaskFanout()
    channels = [fanout.join("t", 1, lambda: feed) for _ in range(100)]
    assert len({id(c) for c in channels}) == 1 and len(fanout) == 1
    watchers = [asyncio.ensure_future(follow(c, 1)) for c in channels]
    for pct in (10, 20, 30):
        feed.emit(pct)
        await asyncio.sleep(0)
    feed.finish()
    got = await asyncio.wait_for(asyncio.gather(*watchers), 5)
    assert all(seqs == [2, 3, 4, 5] for seqs in got)
    # One read per batch of news, not one per watcher (that was 100 per event).
    assert feed.reads <= 5
    for channel in channels:
        fanout.leave(channel)
    assert len(fanout) == 0


async def test_the_frame_text_is_made_once_and_shared() -> None:
    feed, fanout = LogFeed(), TaskFanout()
    a, b = fanout.join("t", 0, lambda: feed), fanout.join("t", 0, lambda: feed)
    await a.news(0)
    assert a.frames_after(0)[0] is b.frames_after(0)[0]
    assert a.frames_after(0)[0].text == feed.state.events[0].model_dump_json()
    fanout.leave(a), fanout.leave(b)


async def test_a_watcher_behind_the_window_sees_where_it_must_catch_up() -> None:
    feed, fanout = LogFeed(), TaskFanout(keep=4)
    channel = fanout.join("t", 1, lambda: feed)
    for pct in range(1, 11):
        feed.emit(pct)
        await channel.news(channel.head)
    await wait_until_async(lambda: channel.head == 11, timeout=5)
    # Only the newest frames are kept; what is older than ``base`` is read separately.
    assert channel.base > 1 and channel.frames_after(0)[0].seq == channel.base + 1
    assert [f.seq for f in channel.frames_after(channel.base)] == list(range(channel.base + 1, 12))
    fanout.leave(channel)


async def test_the_last_watcher_leaving_stops_the_read() -> None:
    feed, fanout = LogFeed(), TaskFanout()
    channel = fanout.join("t", 1, lambda: feed)
    await wait_until_async(lambda: feed.reads == 1, timeout=5)  # waiting for news
    fanout.leave(channel)
    await asyncio.sleep(0)
    assert channel._pump.cancelled() and len(fanout) == 0
    again = fanout.join("t", 1, lambda: feed)
    assert again is not channel  # a new watcher starts a new read
    fanout.leave(again)


async def test_an_unknown_task_ends_the_channel_and_a_failed_read_is_not_reused() -> None:
    class Gone:
        async def after(self, cursor: int) -> list[Event] | None:
            return None

        async def ended(self, cursor: int) -> bool:
            return True

    class Broken(Gone):
        async def after(self, cursor: int) -> list[Event] | None:
            raise RuntimeError("down")

    fanout = TaskFanout()
    gone = fanout.join("g", 0, Gone)
    await gone.news(0)
    assert gone.ended == End.NOT_FOUND
    broken = fanout.join("b", 0, Broken)
    await broken.news(0)
    assert broken.ended == "RuntimeError" and isinstance(broken.error, RuntimeError)
    assert fanout.join("b", 0, Gone) is not broken
    assert fanout.join("g", 0, Broken) is not gone


class CountingTracker(FakeTracker):
    def __init__(self, db: object) -> None:
        super().__init__(db)  # type: ignore[arg-type]
        self.waits = 0

    async def events_after(
        self, task_id: str, after_seq: int, timeout_s: float
    ) -> list[Event] | None:
        self.waits += 1
        return await super().events_after(task_id, after_seq, timeout_s)


@pytest.mark.parametrize("watchers", [8])
def test_websockets_of_one_task_share_one_tracker_read(tmp_path: Path, watchers: int) -> None:
    services = make_ingress_services(tmp_path, tracker=CountingTracker, ws_wait_seconds=5.0)
    tracker: CountingTracker = services.progress  # type: ignore[assignment]
    add_task(services.db, "ws1")
    state = tracker.state("ws1")
    assert state is not None
    state.start([T])
    with TestClient(create_app(services)) as tc:
        sockets = [tc.websocket_connect("/ws/tasks/ws1") for _ in range(watchers)]
        opened = [s.__enter__() for s in sockets]
        try:
            assert all(ws.receive_json()["seq"] == 1 for ws in opened)
            wait_until(lambda: len(services.fanout) == 1 and tracker.waits >= 1, timeout=5)
            state.report(T, 50)
            tc.portal.call(tracker.changed.set)  # on the app's loop, as the tracker would
            assert all(ws.receive_json()["seq"] == 2 for ws in opened)
            state.finish(TaskStatus.completed)
            tc.portal.call(tracker.changed.set)
            for ws in opened:
                assert ws.receive_json()["status"] == "completed"
                with pytest.raises(WebSocketDisconnect) as closed:
                    ws.receive_json()
                assert closed.value.code == 1000
        finally:
            for s in sockets:
                s.__exit__(None, None, None)
        # Each socket used to long-poll the tracker itself: ``watchers`` waits per event.
        assert tracker.waits <= 4
        wait_until(lambda: len(services.fanout) == 0, timeout=5)


def test_a_watcher_leaving_does_not_end_the_stream_of_the_others(tmp_path: Path) -> None:
    """The watchers of a task wait on one shared future: the one that leaves must not
    cancel it under the others."""
    services = make_ingress_services(tmp_path, tracker=CountingTracker, ws_wait_seconds=5.0)
    tracker: CountingTracker = services.progress  # type: ignore[assignment]
    add_task(services.db, "ws1")
    state = tracker.state("ws1")
    assert state is not None
    state.start([T])
    with TestClient(create_app(services)) as tc, tc.websocket_connect("/ws/tasks/ws1") as stays:
        assert stays.receive_json()["seq"] == 1
        with tc.websocket_connect("/ws/tasks/ws1") as leaves:
            assert leaves.receive_json()["seq"] == 1
            wait_until(lambda: len(services.fanout) == 1 and tracker.waits >= 1, timeout=5)
        # ``leaves`` closed while both waited for news.
        state.report(T, 50)
        tc.portal.call(tracker.changed.set)
        assert stays.receive_json()["seq"] == 2
        state.finish(TaskStatus.completed)
        tc.portal.call(tracker.changed.set)
        assert stays.receive_json()["status"] == "completed"
