"""Progress events on real Redis servers.

The first tests use the shared deployed app, which publishes to the local Redis
(127.0.0.1:6379) under a prefix of its own session. The outage test runs its own
``redis-server`` on a free port, so killing it disturbs nobody, with the real
ProgressTracker (a plain object on this event loop) and the real ingress app on uvicorn.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import redis
import uvicorn
import websockets

from common.config import IngressConfig
from common.schemas import (
    ProgressEvent,
    TaskParams,
    TaskProgressStage,
    TaskStatus,
    TaskType,
    Transcript,
)
from common.settings import Settings
from deployments.events_bus import EventsBusConfig
from deployments.events_publisher import EventPublisher
from deployments.progress import ProgressTracker
from deployments.progress_state import Event
from ingress.app import create_app
from ingress.events_reader import RedisEventReader
from ingress.services import IngressServices
from storage import lifecycle, repository
from storage.blobs import LocalBlobStore
from storage.db import Database, migrate
from tests.conftest import REPO
from tests.fakes import Notifier, task_database
from tests.integration.conftest import APP, Service
from tests.ports import free_port
from tests.streams import Stream, assert_well_ordered, collect, submit
from tests.waiting import wait_until, wait_until_async

REDIS_URL = "redis://127.0.0.1:6379/0"
TERMINAL = ("completed", "failed", "cancelled")


# ------------------------------------------------------------------ the shared app


@pytest.fixture(scope="module")
def bus(service: Service) -> Iterator[EventsBusConfig]:
    """The shared app's Redis layout; its keys are deleted when this module ends."""
    import ray

    env = ray.get_runtime_context().runtime_env.env_vars()
    assert env.get("WHISPERX_SERVE_REDIS_URL") == REDIS_URL
    config = EventsBusConfig(url=REDIS_URL, app_name=APP, prefix=env["WHISPERX_SERVE_REDIS_PREFIX"])
    yield config
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{config.base}:*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def plain_redis() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    yield client
    client.close()


def stream_events(client: redis.Redis, key: str) -> list[dict[str, Any]]:
    return [json.loads(fields["event"]) for _, fields in client.xrange(key)]


async def test_events_in_redis_stream_and_ws_resume(
    service: Service, bus: EventsBusConfig, plain_redis: redis.Redis, jfk_path: Path
) -> None:
    ready = httpx.get(f"{service.base_url}/health/ready", timeout=30).json()
    assert ready["status"] == "ok" and ready["checks"]["redis"] == "ok", ready

    task_id = submit(service.base_url, jfk_path, diarize="false")
    first = await collect(service.ws_url, task_id, after_seq=0)
    assert_well_ordered(first)
    key = bus.stream_key(task_id)
    stored = wait_until(
        lambda: (e := stream_events(plain_redis, key)) and e[-1]["status"] in TERMINAL and e,
        timeout=30,
        what="the terminal event in the Redis stream",
    )
    seqs = [e["seq"] for e in stored]
    assert seqs == list(range(1, len(stored) + 1)), seqs
    assert stored == first.events  # the very same events, timestamps included
    ids = [entry_id for entry_id, _ in plain_redis.xrange(key)]
    assert ids == [f"{s}-0" for s in seqs]
    assert 0 < plain_redis.ttl(key) <= Settings().redis_ttl_seconds

    k = len(stored) // 2
    resumed = await collect(service.ws_url, task_id, after_seq=k)
    assert [e["seq"] for e in resumed.events] == seqs[k:]
    assert resumed.close_code == 1000


def _subscribe(channel: str, task_id: list[str], got: list[dict[str, Any]]) -> threading.Event:
    """A thread on a plain redis-py pub/sub (no Ray) collecting one task's live events."""
    subscribed, done = threading.Event(), threading.Event()

    def run() -> None:
        client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
        pubsub = client.pubsub()
        pubsub.subscribe(channel)
        while not done.is_set():
            message = pubsub.get_message(timeout=0.5)
            if message is None:
                continue
            if message["type"] == "subscribe":
                subscribed.set()
                continue
            event = json.loads(message["data"])
            if task_id and event["task_id"] == task_id[0]:
                got.append(event)
                if event["status"] in TERMINAL:
                    done.set()
        pubsub.close()
        client.close()

    threading.Thread(target=run, daemon=True).start()
    assert subscribed.wait(10), "pub/sub subscription not confirmed"
    return done


FOLLOW = """
import asyncio, sys
from ingress.events_reader import iter_task_events

async def main() -> None:
    url, task_id, app, prefix = sys.argv[1:5]
    async for event in iter_task_events(url, task_id, app_name=app, prefix=prefix):
        print(event.model_dump_json(), flush=True)

asyncio.run(asyncio.wait_for(main(), 120))
print("RAY_IMPORTED" if "ray" in sys.modules else "NO_RAY", flush=True)
"""


def test_outside_process_follows_a_task(
    service: Service, bus: EventsBusConfig, jfk_path: Path
) -> None:
    task_id: list[str] = []
    live: list[dict[str, Any]] = []
    done = _subscribe(bus.channel, task_id, live)
    task_id.append(submit(service.base_url, jfk_path, diarize="false"))
    follower = subprocess.run(
        [sys.executable, "-c", FOLLOW, REDIS_URL, task_id[0], APP, bus.prefix],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert follower.returncode == 0, follower.stderr[-2000:]
    *lines, last = follower.stdout.strip().splitlines()
    assert last == "NO_RAY"
    followed = [json.loads(line) for line in lines]
    assert [e["seq"] for e in followed] == list(range(1, len(followed) + 1))
    assert followed[-1]["status"] == "completed" and followed[-1]["percentage"] == 100

    assert done.wait(30), "the pub/sub subscriber did not see the terminal event"
    assert live == followed  # subscribed before submit: every event, live, in order


# ------------------------------------------------------------------ a Redis outage


class RedisServer:
    """A throwaway ``redis-server`` without persistence: killing it loses everything."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._workdir = workdir
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed"
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly"]
        args += ["no", "--dir", str(self._workdir)]
        self._proc = subprocess.Popen([binary, *args], stdout=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        wait_until(client.ping, timeout=10, interval=0.05, what=f"redis-server :{self.port}")
        client.close()

    def kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(10)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.kill()


async def eventually(probe: Callable[[], Any], *, timeout: float = 15, what: str = "") -> None:
    """``wait_until`` that yields to this event loop, where the tracker and the server run;
    ``probe`` may return a value or an awaitable."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                value = probe()
                if inspect.isawaitable(value):
                    value = await value
                if value:
                    return
                await asyncio.sleep(0.05)
    except TimeoutError:
        pytest.fail(f"timed out after {timeout}s waiting for {what}")


class Watcher:
    """A WebSocket client reading one task in the background."""

    def __init__(self, url: str) -> None:
        self.stream = Stream()
        self._task = asyncio.create_task(self._read(url))

    async def _read(self, url: str) -> None:
        async with websockets.connect(url) as ws:
            try:
                async for message in ws:
                    self.stream.frames.append(json.loads(message))
            except websockets.ConnectionClosed:
                pass
            self.stream.close_code = ws.close_code

    def seqs(self) -> list[int]:
        return [e["seq"] for e in self.stream.events]

    async def until_seq(self, seq: int) -> None:
        await eventually(lambda: self.seqs() and self.seqs()[-1] >= seq, what=f"seq {seq}")

    async def finished(self) -> Stream:
        await asyncio.wait_for(self._task, 15)
        return self.stream


@dataclass
class OutageApp:
    tracker: ProgressTracker
    reader: RedisEventReader
    db: Database
    host: str
    bus: EventsBusConfig


@pytest_asyncio.fixture(loop_scope="function")  # the test's own loop runs the server
async def outage_app(tmp_path: Path, own_redis: RedisServer) -> AsyncIterator[OutageApp]:
    """The real tracker and ingress app on this event loop, publishing to ``own_redis``."""
    db_url = f"sqlite:///{tmp_path / 'outage.db'}"
    migrate(db_url)
    bus = EventsBusConfig(url=own_redis.url, app_name="outage", prefix=f"t{uuid.uuid4().hex[:8]}")
    tracker = ProgressTracker(db_url, mirror_interval_s=0.0, events_bus=bus)
    reader = RedisEventReader(bus, publisher_state=tracker.redis_state, retry_s=0.3)

    async def deployments_ready() -> dict[str, str]:
        return {"deployment:TaskRunner": "ok"}

    services = IngressServices(
        settings=Settings(data_dir=tmp_path, database_url=db_url),
        config=IngressConfig(),
        db=Database(db_url),
        blobs=LocalBlobStore(tmp_path / "uploads"),
        progress=tracker,
        runner=Notifier(),
        deployments_ready=deployments_ready,
        ws_wait_seconds=1.0,
        events=reader,
    )
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(services), host="127.0.0.1", port=port, log_level="warning")
    )
    serving = asyncio.create_task(server.serve())
    await eventually(lambda: server.started, what="uvicorn")
    yield OutageApp(tracker, reader, services.db, f"127.0.0.1:{port}", bus)
    server.should_exit = True
    await asyncio.wait_for(serving, 10)
    await tracker.close()
    await reader.aclose()


async def test_redis_outage_falls_back_to_the_actor_and_recovers(
    outage_app: OutageApp, own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    tracker, reader, host, bus = (
        outage_app.tracker,
        outage_app.reader,
        outage_app.host,
        outage_app.bus,
    )
    task_id = "outage-1"
    repository.create_task(
        outage_app.db,
        task_id=task_id,
        task_type=TaskType.speech_to_text,
        params=TaskParams(),
        file_name="a.flac",
        audio_key=None,
    )
    direct = redis.Redis.from_url(own_redis.url, decode_responses=True)
    key = bus.stream_key(task_id)

    def stored() -> list[int]:
        return [json.loads(f["event"])["seq"] for _, f in direct.xrange(key)]

    async def ready() -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=f"http://{host}") as http:
            r = await http.get("/health/ready")
        assert r.status_code == 200, r.text  # Redis is optional: never a 503
        body: dict[str, Any] = r.json()
        return body

    async def ready_ok() -> bool:
        body = await ready()
        return bool(body["status"] == "ok" and body["checks"]["redis"] == "ok")

    await tracker.start(task_id, ["transcribing"])  # seq 1
    await eventually(lambda: stored() == [1], what="seq 1 in Redis")
    watcher = Watcher(f"ws://{host}/ws/tasks/{task_id}?after_seq=0")
    for pct in (10, 20, 30):  # seq 2-4
        await tracker.report(task_id, "transcribing", pct)
    await watcher.until_seq(4)
    assert stored() == [1, 2, 3, 4] and reader.stats["redis"] >= 1

    caplog.set_level(logging.INFO, logger="deployments.events_publisher")
    own_redis.kill()
    for pct in (40, 50, 60):  # seq 5-7, published nowhere but the actor's log
        await tracker.report(task_id, "transcribing", pct)
    await watcher.until_seq(7)
    body = await ready()
    assert body["status"] == "degraded", body
    assert body["checks"]["redis"].startswith("unavailable: "), body
    assert body["checks"]["redis"].endswith("falling back to the Ray actor"), body
    assert (await tracker.redis_state()).startswith("unavailable: ")
    outage_logs = [r for r in caplog.records if "Redis unavailable for progress" in r.message]
    assert len(outage_logs) == 1, [r.message for r in caplog.records]  # once per outage

    own_redis.start()  # same port, empty: nothing survived
    await eventually(lambda: ready_ok(), what="readiness ok again")
    await tracker.report(task_id, "transcribing", 70)  # seq 8
    # the runner writes the row, then the tracker publishes the terminal event (seq 9)
    done = Transcript(language="en")
    lifecycle.finish(outage_app.db, task_id=task_id, status=TaskStatus.completed, result=done)
    await tracker.finished(task_id, "completed")
    # the publisher backfilled what the outage missed: the new stream is whole again
    await eventually(lambda: stored() == list(range(1, 10)), what="backfilled stream")

    stream = await watcher.finished()
    assert watcher.seqs() == list(range(1, 10))  # gap-free and no duplicates, across both paths
    assert stream.events[-1]["status"] == "completed" and stream.close_code == 1000

    served = reader.stats["redis"]
    resumed = Watcher(f"ws://{host}/ws/tasks/{task_id}?after_seq=3")
    assert (await resumed.finished()).close_code == 1000
    assert resumed.seqs() == list(range(4, 10))
    assert reader.stats["redis"] > served  # served from the restored stream, not the actor
    direct.close()


async def test_fresh_publisher_continues_or_replaces_a_stream(own_redis: RedisServer) -> None:
    """A publisher that has not written a task yet (new tracker incarnation, or an outage
    mid-batch) skips the entries the stream already holds verbatim, and replaces a stream
    that an earlier incarnation numbered differently."""
    bus = EventsBusConfig(url=own_redis.url, app_name="fresh", prefix="t")
    log = [_event(s, f"first run {s}") for s in range(1, 8)]
    direct = redis.Redis.from_url(own_redis.url, decode_responses=True)

    def stored() -> list[dict[str, Any]]:
        return [json.loads(f["event"]) for _, f in direct.xrange(bus.stream_key("t"))]

    async def publish(events: Sequence[Event], expect: list[str]) -> None:
        publisher = EventPublisher(bus, lambda _, after: [e for e in events if e.seq > after])
        publisher.offer("t")
        await eventually(lambda: [e["message"] for e in stored()] == expect, what=str(expect))
        await publisher.aclose()

    await publish(log[:5], [e.message for e in log[:5]])
    await publish(log, [e.message for e in log])  # continues after 5, nothing written twice
    assert [entry_id for entry_id, _ in direct.xrange(bus.stream_key("t"))] == [
        f"{s}-0" for s in range(1, 8)
    ]
    renumbered = [_event(s, f"second run {s}") for s in range(4, 7)]
    await publish(renumbered, [e.message for e in renumbered])
    direct.close()


def _event(seq: int, message: str) -> ProgressEvent:
    return ProgressEvent(
        task_id="t",
        seq=seq,
        status=TaskStatus.processing,
        stage=TaskProgressStage.transcribing,
        percentage=float(seq),
        message=message,
    )


async def test_restarted_tracker_continues_seq_after_the_stream(
    own_redis: RedisServer, tmp_path: Path
) -> None:
    """The database mirror of seq lags inside a stage; a new tracker incarnation numbers its
    next event after the last one in Redis, so no client ever sees a seq reused."""
    db = task_database(tmp_path / "restart.db", "t", claimed_by="w")
    url = str(db.engine.url)
    stage = TaskProgressStage.transcribing
    repository.update_progress(db, task_id="t", stage=stage, percentage=2.0, seq=2)
    bus = EventsBusConfig(url=own_redis.url, app_name="restart", prefix="t")
    direct = redis.Redis.from_url(own_redis.url, decode_responses=True)
    for seq in range(1, 6):  # what the crashed incarnation had published
        direct.xadd(
            bus.stream_key("t"), {"event": _event(seq, "old").model_dump_json()}, id=f"{seq}-0"
        )

    tracker = ProgressTracker(url, events_bus=bus)
    try:
        snap = await tracker.snapshot("t")
        assert snap is not None and snap.seq == 5
        await tracker.start("t", [stage.value], 2)  # the re-run after its runner died
        events = await tracker.events_after("t", 5, 1.0)
        assert events and events[0].seq == 6

        def stream_seqs() -> list[int] | None:
            ids = [int(i.split("-")[0]) for i, _ in direct.xrange(bus.stream_key("t"))]
            return ids if ids and ids[-1] >= 6 else None

        # polled without blocking the loop: the tracker publishes from this very loop
        seqs = await wait_until_async(stream_seqs, timeout=10, what="new event in Redis")
        assert seqs[:6] == list(range(1, 7))
    finally:
        await tracker.close()
        direct.close()
        db.dispose()
