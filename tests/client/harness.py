"""A real HTTP + WebSocket server for the client tests, without Ray.

The server's own FastAPI app (``ingress.app.create_app``) runs under uvicorn in a thread,
on real SQLite, with an in-process progress tracker built on the server's
``TaskProgressState`` and a fake runner that walks each task through its stages and
completes it with a canned transcript. Around it: an ASGI layer that injects faults
(503 answers, refused WebSocket upgrades, canned replies) and a TCP proxy whose open
connections a test can cut, as a network drop would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn

from common.config import IngressConfig
from common.schemas import (
    Segment,
    SpeakerTurn,
    TaskError,
    TaskParams,
    TaskProgressStage,
    TaskSnapshot,
    TaskStatus,
    TaskType,
    Timings,
    Transcript,
    Word,
)
from deployments.progress_state import Event, TaskProgressState, state_from_row
from ingress.app import create_app
from ingress.services import IngressServices
from storage import lifecycle, repository
from storage.db import Database
from tests.fakes import FakeTracker, make_ingress_services
from tests.ports import free_port
from tests.waiting import wait_until

Scope = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]


def _words(text: str, start: float, speaker: str) -> list[Word]:
    return [
        Word(word=w, start=start + 0.3 * i, end=start + 0.3 * i + 0.25, score=0.9, speaker=speaker)
        for i, w in enumerate(text.split())
    ]


CANNED = Transcript(
    language="en",
    segments=[
        Segment(
            start=0.0,
            end=2.5,
            text=" And so, my fellow Americans,",
            speaker="SPEAKER_00",
            words=_words("And so, my fellow Americans,", 0.0, "SPEAKER_00"),
        ),
        Segment(
            start=3.0,
            end=6.0,
            text=" ask not what your country can do for you.",
            speaker="SPEAKER_01",
            words=_words("ask not what your country can do for you.", 3.0, "SPEAKER_01"),
        ),
    ],
    word_timestamps="wav2vec2",
    alignment_model="fake",
    speakers=["SPEAKER_00", "SPEAKER_01"],
    speaker_turns=[
        SpeakerTurn(start=0.0, end=2.5, speaker="SPEAKER_00"),
        SpeakerTurn(start=3.0, end=6.0, speaker="SPEAKER_01"),
    ],
)
CANNED_WORDS = sum(len(s.words) for s in CANNED.segments)


# ---------------------------------------------------------------- tracker and runner


class Tracker(FakeTracker):
    """The unit tests' tracker for a server on its own thread: database calls leave the
    event loop, waiters sleep on a condition, and states are rebuilt from their rows."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self._changed: asyncio.Condition | None = None
        self.down = False
        """When set, snapshots fail as an unreachable actor's would."""

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    def state(self, task_id: str) -> TaskProgressState | None:
        """The live state, rebuilt from the row the first time (runs in worker threads:
        ``setdefault`` keeps the runner's state if it registered one meanwhile)."""
        state = self.states.get(task_id)
        if state is None:
            row = repository.get_task(self.db, task_id=task_id)
            if row is None:
                return None
            state = self.states.setdefault(task_id, state_from_row(row))
        return state

    async def publish(self) -> None:
        async with self._condition():
            self._condition().notify_all()

    async def snapshot(self, task_id: str) -> TaskSnapshot | None:
        if self.down:
            raise ConnectionError("progress tracker unreachable (test)")
        state = await asyncio.to_thread(self.state, task_id)
        return state.snapshot() if state else None

    async def events_after(
        self, task_id: str, after_seq: int, timeout_s: float
    ) -> list[Event] | None:
        state = await asyncio.to_thread(self.state, task_id)
        if state is None:
            return None
        async with self._condition():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._condition().wait_for(
                        lambda: state.seq > after_seq or state.status.terminal
                    ),
                    timeout_s,
                )
        return state.events_after(after_seq)

    async def finished(self, task_id: str, status: TaskStatus, error: Any = None) -> None:
        """The terminal event, after the (fake) runner wrote the row."""
        state = await asyncio.to_thread(self.state, task_id)
        if state is not None and state.finish(status, error) is not None:
            await self.publish()


class FakeRunner:
    """Claims queued tasks and walks them through their stages in small steps.

    A task whose file name contains ``fail`` fails after transcribing. While ``hold`` is
    clear, tasks stop after the ``hold_after`` stage until it is set (tests use this to
    act while a task is mid-way).
    """

    def __init__(self, db: Database, tracker: Tracker, step_s: float = 0.01) -> None:
        self.db = db
        self.tracker = tracker
        self.step_s = step_s
        self.hold = threading.Event()
        self.hold.set()
        self.hold_after = TaskProgressStage.transcribing
        self._running: set[asyncio.Task[None]] = set()
        self._stopping: set[str] = set()  # running tasks the user cancelled

    async def cancel(self, task_id: str) -> TaskStatus | None:
        """As the real runner: a queued task ends now, a running one stops at its next step
        (the real one is cancelled at once; this one checks between steps, from memory)."""
        outcome = await asyncio.to_thread(lifecycle.cancel, self.db, task_id=task_id)
        if outcome is None:
            return None
        if outcome.ended_now:
            await self.tracker.finished(task_id, TaskStatus.cancelled)
        elif outcome.status is TaskStatus.processing:
            self._stopping.add(task_id)
        return outcome.status

    def notify(self) -> None:  # called by the ingress, on the server's loop
        task = asyncio.get_running_loop().create_task(self._claim())
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _claim(self) -> None:
        rows = await asyncio.to_thread(
            lifecycle.claim, self.db, worker_id="fake", limit=100, lease_seconds=600
        )
        for row in rows:
            task = asyncio.get_running_loop().create_task(self._run(row.id, row.file_name))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run(self, task_id: str, file_name: str | None) -> None:
        tracker, db = self.tracker, self.db
        row = await asyncio.to_thread(repository.get_task, db, task_id=task_id)
        assert row is not None
        state = tracker.states.setdefault(task_id, TaskProgressState(task_id=task_id))
        stages = TaskParams.model_validate(row.params).stages(TaskType(row.task_type))
        state.start(stages)
        await tracker.publish()
        for stage in stages:
            state.enter_stage(stage)
            await tracker.publish()
            for local in (25, 50, 75, 100):
                await asyncio.sleep(self.step_s)
                if await self._cancelled(task_id, state):
                    return
                state.report(stage, local)
                await tracker.publish()
            if "fail" in (file_name or "") and stage is TaskProgressStage.transcribing:
                error = TaskError(
                    error_code="processing_failed",
                    user_message="Transcription failed.",
                    technical_detail="RuntimeError: fake runner told to fail",
                )
                await asyncio.to_thread(
                    lifecycle.finish,
                    db,
                    status=TaskStatus.failed,
                    task_id=task_id,
                    error=error,
                    seq=state.seq + 1,
                )
                state.finish(TaskStatus.failed, error)
                await tracker.publish()
                return
            if stage is self.hold_after:
                await asyncio.to_thread(self.hold.wait)
        await asyncio.to_thread(
            lifecycle.finish,
            db,
            status=TaskStatus.completed,
            task_id=task_id,
            result=CANNED,
            timings=Timings(total=0.1),
            seq=state.seq + 1,
        )
        state.finish(TaskStatus.completed)
        await tracker.publish()

    async def _cancelled(self, task_id: str, state: TaskProgressState) -> bool:
        if task_id not in self._stopping and not state.status.terminal:
            return False
        if not state.status.terminal:
            await asyncio.to_thread(
                lifecycle.finish,
                self.db,
                status=TaskStatus.cancelled,
                task_id=task_id,
                seq=state.seq + 1,
            )
            state.finish(TaskStatus.cancelled)
            await self.tracker.publish()
        return True


# ---------------------------------------------------------------- fault injection


@dataclass
class Reply:
    status: int
    body: dict[str, Any]


@dataclass
class Seen:
    """One HTTP request as it reached the server."""

    method: str
    path: str
    query: str
    body: bytes
    headers: dict[str, str]


@dataclass
class Faults:
    """What the ASGI layer in front of the app does to requests."""

    refuse_websocket: bool = False
    websocket_closes: list[int] = field(default_factory=list)
    """Close codes for the next WebSocket connections: accepted, then closed at once."""
    replies: list[tuple[str, re.Pattern[str], Reply]] = field(default_factory=list)
    log: list[Seen] = field(default_factory=list)
    websocket_headers: list[dict[str, str]] = field(default_factory=list)

    def reply(
        self, method: str, path: str, status: int, body: dict[str, Any], times: int = 1
    ) -> None:
        """Answer the next ``times`` requests matching ``method`` and the ``path`` regex."""
        for _ in range(times):
            self.replies.append((method, re.compile(path), Reply(status, body)))

    def requests(self, method: str, path: str) -> list[Seen]:
        pattern = re.compile(path)
        return [s for s in self.log if s.method == method and pattern.fullmatch(s.path)]


class FaultInjector:
    def __init__(self, app: Any, faults: Faults) -> None:
        self.app = app
        self.faults = faults

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = {k.decode().lower(): v.decode() for k, v in scope.get("headers", [])}
        if scope["type"] == "websocket":
            self.faults.websocket_headers.append(headers)
        if scope["type"] == "websocket" and self.faults.refuse_websocket:
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1008})  # uvicorn answers 403
            return
        if scope["type"] == "websocket" and self.faults.websocket_closes:
            code = self.faults.websocket_closes.pop(0)
            await receive()
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.close", "code": code})
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        query = scope.get("query_string", b"").decode()
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        self.faults.log.append(Seen(method, path, query, body, headers))
        for i, (m, pattern, reply) in enumerate(self.faults.replies):
            if m == method and pattern.fullmatch(path):
                del self.faults.replies[i]
                payload = json.dumps(reply.body).encode()
                await send(
                    {
                        "type": "http.response.start",
                        "status": reply.status,
                        "headers": [(b"content-type", b"application/json")],
                    }
                )
                await send({"type": "http.response.body", "body": payload})
                return
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            message: dict[str, Any] = await receive()
            return message

        await self.app(scope, replay, send)


# ---------------------------------------------------------------- servers


class ServerThread:
    """uvicorn serving ``app`` on 127.0.0.1 from a background thread."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        wait_until(lambda: self.server.started, timeout=30, interval=0.02, what="uvicorn")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


class DroppingProxy:
    """A TCP forwarder to ``port``; :meth:`drop_all` cuts every open connection (RST)."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.port = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="proxy", daemon=True)
        self._transports: set[asyncio.WriteTransport] = set()
        self._server: asyncio.AbstractServer | None = None
        self.connections = 0

    def __enter__(self) -> DroppingProxy:
        self.thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0), self.loop
        ).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        self.drop_all()

        async def stop() -> None:
            if self._server is not None:
                self._server.close()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        self._transports |= {writer.transport, up_writer.transport}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, RuntimeError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(OSError, RuntimeError):
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._transports -= {writer.transport, up_writer.transport}

    def drop_all(self) -> None:
        def cut() -> None:
            for transport in list(self._transports):
                transport.abort()
            self._transports.clear()

        self.loop.call_soon_threadsafe(cut)


@dataclass
class Live:
    """The running server, and the knobs a test turns."""

    base_url: str
    services: IngressServices
    tracker: Tracker
    runner: FakeRunner
    faults: Faults
    app: Any

    def has_route(self, path: str) -> bool:
        return any(getattr(r, "path", None) == path for r in self.app.routes)


@contextlib.contextmanager
def live_server(
    tmp_path: Path, *, max_upload_bytes: int = 8 * 1024 * 1024, **config: Any
) -> Iterator[Live]:
    """``config``: more :class:`IngressConfig` fields (auth, limits, queue bound)."""
    services = make_ingress_services(
        tmp_path,
        db_name="client.db",
        config=IngressConfig(max_upload_bytes=max_upload_bytes, **config),
        tracker=Tracker,
        runner=FakeRunner,
        ws_wait_seconds=0.5,
    )
    tracker, runner = services.progress, services.runner
    assert isinstance(tracker, Tracker) and isinstance(runner, FakeRunner)
    app = create_app(services)
    faults = Faults()
    with ServerThread(FaultInjector(app, faults)) as server:
        yield Live(f"http://127.0.0.1:{server.port}", services, tracker, runner, faults, app)
    runner.hold.set()
