"""Redis event layout and the WebSocket's choice between Redis and the tracker (no Redis:
the reader here is a fake; tests/integration/test_redis_events.py uses real servers)."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.schemas import ProgressEvent, TaskProgressStage, TaskSnapshot, TaskStatus
from common.settings import Settings
from deployments.events_bus import EventsBusConfig, describe, entry_seq
from deployments.progress_state import Event
from ingress.ws import EventFeed
from tests.fakes import make_ingress_services


def event(seq: int, status: TaskStatus = TaskStatus.processing) -> ProgressEvent:
    return ProgressEvent(
        task_id="t",
        seq=seq,
        status=status,
        stage=TaskProgressStage.transcribing,
        percentage=float(seq),
    )


def test_config_from_settings_keys_name_prefix_and_app() -> None:
    assert EventsBusConfig.from_settings(Settings(redis_url=None), "app") is None
    settings = Settings(redis_url="redis://r:6379/1", redis_prefix="px", redis_stream_maxlen=50)
    config = EventsBusConfig.from_settings(settings, "app")
    assert config is not None and config.stream_maxlen == 50 and config.ttl_seconds == 86_400
    assert config.stream_key("abc") == "px:app:task:abc:events"
    assert config.channel == "px:app:events"
    other = EventsBusConfig.from_settings(settings, "other-app")
    assert other is not None and other.stream_key("abc") != config.stream_key("abc")


def test_entry_ids_and_error_lines() -> None:
    assert entry_seq(b"12-0") == 12 and entry_seq("7-0") == 7
    assert (
        describe(ConnectionError("Error 111\nconnecting."))
        == "ConnectionError: Error 111 connecting"
    )
    assert describe(TimeoutError()) == "TimeoutError"


class FakeReader:
    """Serves what ``stream`` holds, like the real reader: a gap-free run or None."""

    def __init__(self, stream: list[Event], *, up: bool = True) -> None:
        self.stream, self.up, self.waits = stream, up, list[float]()

    def usable(self) -> bool:
        return self.up

    async def read_after(self, task_id: str, after_seq: int, wait_s: float) -> list[Event] | None:
        self.waits.append(wait_s)
        run = [e for e in self.stream if e.seq > after_seq]
        if run and run[0].seq != after_seq + 1:
            return None
        return run

    async def health(self) -> str:
        return "ok"


class FakeActor:
    def __init__(self, log: list[Event]) -> None:
        self.log, self.calls = log, list[tuple[int, float]]()

    async def snapshot(self, task_id: str) -> TaskSnapshot | None:
        return None

    async def events_after(
        self, task_id: str, after_seq: int, timeout_s: float
    ) -> list[Event] | None:
        self.calls.append((after_seq, timeout_s))
        return [e for e in self.log if e.seq > after_seq]

    async def ping(self) -> bool:
        return True

    async def cancel(self, task_id: str) -> TaskStatus | None:
        return None


def feed(tmp_path: Path, reader: FakeReader | None, actor: FakeActor, known: int) -> EventFeed:
    services = make_ingress_services(
        tmp_path, db_name="x.db", tracker=lambda db: actor, ws_wait_seconds=3.0, events=reader
    )
    return EventFeed(services, "t", known_seq=known)


LOG: list[Event] = [event(s) for s in range(1, 6)]


async def test_contiguous_redis_run_is_served_without_the_actor(tmp_path: Path) -> None:
    reader, actor = FakeReader(LOG), FakeActor(LOG)
    got = await feed(tmp_path, reader, actor, known=5).after(2)
    assert [e.seq for e in got or []] == [3, 4, 5] and actor.calls == []
    assert reader.waits == [0.0]  # behind the known seq: no waiting on Redis


@pytest.mark.parametrize(
    "stream",
    [[], LOG[3:]],  # not published yet / trimmed or published only after an outage
    ids=["missing", "gap"],
)
async def test_missing_or_gapped_range_comes_from_the_actor(
    tmp_path: Path, stream: list[Event]
) -> None:
    actor = FakeActor(LOG)
    got = await feed(tmp_path, FakeReader(stream), actor, known=5).after(1)
    assert [e.seq for e in got or []] == [2, 3, 4, 5] and actor.calls == [(1, 3.0)]


async def test_caught_up_waits_on_redis_then_checks_the_actor_once(tmp_path: Path) -> None:
    reader, actor = FakeReader(LOG[:3]), FakeActor(LOG)  # Redis lags two events behind
    got = await feed(tmp_path, reader, actor, known=3).after(3)
    assert reader.waits == [3.0] and actor.calls == [(3, 0.0)]
    assert [e.seq for e in got or []] == [4, 5]


async def test_redis_down_uses_the_actor(tmp_path: Path) -> None:
    actor = FakeActor(LOG)
    got = await feed(tmp_path, FakeReader(LOG, up=False), actor, known=5).after(4)
    assert [e.seq for e in got or []] == [5] and actor.calls == [(4, 3.0)]
    got = await feed(tmp_path, None, actor, known=5).after(0)  # Redis not configured
    assert len(got or []) == 5


@pytest.mark.timeout(20)  # the old close hung here for ever
async def test_closing_the_publisher_ends_a_worker_that_lost_its_cancel(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A cancellation can be swallowed inside a Redis call; close still ends the worker
    (one ``cancel()`` and a wait for the worker used to wait for ever)."""
    import asyncio
    import contextlib

    from deployments.events_publisher import EventPublisher

    publisher = EventPublisher(
        EventsBusConfig(url="redis://127.0.0.1:1/0", app_name="t"), lambda *_: []
    )
    flushing = asyncio.Event()

    async def swallowing_flush() -> None:
        flushing.set()
        with contextlib.suppress(asyncio.CancelledError):  # as a library might: the worker
            await asyncio.sleep(30)  # goes back to waiting for work

    monkeypatch.setattr(publisher, "_flush", swallowing_flush)
    publisher.offer("t")
    await asyncio.wait_for(flushing.wait(), 5)
    await asyncio.wait_for(publisher.aclose(), 5)
