"""Ingress routes through ASGI with real SQLite storage and a fake progress tracker."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from common.config import IngressConfig
from common.schemas import (
    TaskError,
    TaskParams,
    TaskProgress,
    TaskProgressStage,
    TaskSnapshot,
    TaskStatus,
    TaskType,
)
from deployments.progress_state import state_from_row
from ingress.app import create_app
from ingress.services import IngressServices
from storage import lifecycle, repository
from tests.fakes import FakeTracker, add_task, make_ingress_services

T = TaskProgressStage.transcribing


@pytest.fixture
def services(tmp_path: Path) -> IngressServices:
    return make_ingress_services(
        tmp_path,
        config=IngressConfig(max_upload_bytes=4 * 1024 * 1024),
        ready={"deployment:AsrDeployment": "ok"},
        ws_wait_seconds=0.5,
    )


@pytest.fixture
async def client(services: IngressServices) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(services))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


async def submit(
    client: httpx.AsyncClient, data: bytes, name: str = "a.flac", **params: object
) -> httpx.Response:
    return await client.post("/speech-to-text", params=params, files={"file": (name, data)})


async def test_upload_queues_task_and_wakes_runner(
    client: httpx.AsyncClient, services: IngressServices, jfk_path: Path
) -> None:
    r = await submit(client, jfk_path.read_bytes(), min_speakers=1, max_speakers=2)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "queued" and body["websocket_url"] == f"/ws/tasks/{body['identifier']}"
    assert services.runner.count == 1  # type: ignore[attr-defined]
    task = (await client.get(f"/task/{body['identifier']}")).json()
    assert task["status"] == "queued" and task["params"]["max_speakers"] == 2
    assert task["audio_duration"] == pytest.approx(11.0, abs=0.1)
    stored = list(services.settings.upload_dir().iterdir())
    assert [p.name for p in stored] == [f"{body['identifier']}.flac"]


async def test_hostile_filename_never_becomes_a_path(
    client: httpx.AsyncClient, services: IngressServices, jfk_path: Path
) -> None:
    r = await submit(client, jfk_path.read_bytes(), name="../../etc/passwd\x00.flac")
    assert r.status_code == 200, r.text
    task = (await client.get(f"/task/{r.json()['identifier']}")).json()
    assert "/" not in task["file_name"]
    assert all(
        p.parent == services.settings.upload_dir() for p in services.settings.upload_dir().iterdir()
    )


@pytest.mark.parametrize(
    ("data", "code"),
    [(b"", "empty_upload"), (b"this is not audio at all" * 100, "invalid_audio")],
    ids=["empty", "non-audio"],
)
async def test_bad_files_are_422_and_not_stored(
    client: httpx.AsyncClient, services: IngressServices, data: bytes, code: str
) -> None:
    r = await submit(client, data)
    assert r.status_code == 422, r.text
    assert r.json()["error_code"] == code and r.json()["user_message"]
    assert not list(services.settings.upload_dir().glob("*"))
    assert repository.list_tasks(services.db) == ([], 0)


async def test_oversize_upload_is_413(client: httpx.AsyncClient, services: IngressServices) -> None:
    r = await submit(client, b"\0" * (5 * 1024 * 1024))
    assert r.status_code == 413 and r.json()["error_code"] == "upload_too_large"
    assert not list(services.settings.upload_dir().glob("*"))


@pytest.mark.parametrize(
    "params",
    [{"min_speakers": 3, "max_speakers": 2}, {"task": "dance"}, {"beam_size": 0}, {"vad_onset": 2}],
    ids=["min>max", "task", "beam", "vad"],
)
async def test_bad_parameters_are_422(
    client: httpx.AsyncClient, jfk_path: Path, params: dict[str, object]
) -> None:
    r = await submit(client, jfk_path.read_bytes(), **params)
    assert r.status_code == 422, r.text
    assert r.json()["error_code"] == "invalid_request"


async def test_unknown_task_is_404_everywhere(client: httpx.AsyncClient) -> None:
    for url in ("/task/nope", "/tasks/nope/progress"):
        r = await client.get(url)
        assert r.status_code == 404 and r.json()["error_code"] == "task_not_found"


async def test_progress_polling_reads_tracker(
    client: httpx.AsyncClient, services: IngressServices, jfk_path: Path
) -> None:
    task_id = (await submit(client, jfk_path.read_bytes())).json()["identifier"]
    state = services.progress.state(task_id)  # type: ignore[attr-defined]
    state.start([T])
    state.report(T, 50)
    r = await client.get(f"/tasks/{task_id}/progress")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "processing" and body["progress_stage"] == "transcribing"
    assert 0 < body["progress_percentage"] < 100


async def test_a_failed_task_polls_as_its_snapshot_from_the_tracker_and_from_the_row(
    tmp_path: Path,
) -> None:
    """The polling body is the snapshot's projection, error fields included, whether the
    tracker answers or the route falls back to the task row."""

    class DownTracker(FakeTracker):
        async def snapshot(self, task_id: str) -> TaskSnapshot | None:
            raise ConnectionError("tracker away")

    error = TaskError(error_code="invalid_audio", user_message="Bad.", technical_detail="av: 1")
    bodies = []
    for name, tracker in (("up", FakeTracker), ("down", DownTracker)):
        services = make_ingress_services(tmp_path / name, tracker=tracker)
        repository.create_task(
            services.db,
            task_id="f1",
            task_type=TaskType.speech_to_text,
            params=TaskParams(),
            file_name="a.wav",
            audio_key=None,
        )
        assert lifecycle.finish(
            services.db, status=TaskStatus.failed, task_id="f1", error=error, seq=1
        )
        if name == "up":
            state = services.progress.state("f1")  # type: ignore[attr-defined]
            state.finish(TaskStatus.failed, error)
            snapshot = state.snapshot()
        else:
            row = repository.get_task(services.db, task_id="f1")
            snapshot = state_from_row(row).snapshot()
        transport = httpx.ASGITransport(app=create_app(services))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            r = await c.get("/tasks/f1/progress")
        assert r.status_code == 200, r.text
        assert r.json() == TaskProgress.from_snapshot(snapshot).model_dump(mode="json")
        bodies.append(r.json())
    for body in bodies:
        assert (body["status"], body["error_code"], body["error"], body["technical_detail"]) == (
            "failed",
            "invalid_audio",
            "Bad.",
            "av: 1",
        )


async def test_ready_reports_components(client: httpx.AsyncClient) -> None:
    r = await client.get("/health/ready")
    assert r.status_code == 200, r.text
    checks = r.json()["checks"]
    assert set(checks) == {"database", "progress_tracker", "deployment:AsrDeployment", "redis"}
    assert checks["redis"] == "not configured"
    assert (await client.get("/health/live")).status_code == 200


async def test_ready_does_not_wait_behind_busy_request_threads(tmp_path: Path) -> None:
    """Every default-executor thread blocked (uploads waiting on a SQLite write lock, say)
    must not read as a broken replica: the probes have threads of their own."""
    services = make_ingress_services(tmp_path, config=IngressConfig(ready_timeout_seconds=1))
    release = threading.Event()
    busy = [asyncio.ensure_future(asyncio.to_thread(release.wait, 30)) for _ in range(40)]
    try:
        transport = httpx.ASGITransport(app=create_app(services))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            r = await c.get("/health/ready")
        assert r.status_code == 200, r.text
    finally:
        release.set()
        await asyncio.gather(*busy)


async def test_ready_names_the_component_that_does_not_answer(tmp_path: Path) -> None:
    class StuckTracker(FakeTracker):
        async def ping(self) -> bool:
            await asyncio.sleep(30)
            return True

    services = make_ingress_services(
        tmp_path, config=IngressConfig(ready_timeout_seconds=0.2), tracker=StuckTracker
    )
    transport = httpx.ASGITransport(app=create_app(services))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        r = await c.get("/health/ready")
    assert r.status_code == 503
    body = r.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["progress_tracker"] == "no answer within 0.2 s"
    assert body["checks"]["database"] == "ok"


def test_websocket_snapshot_events_then_close(services: IngressServices) -> None:
    row = add_task(services.db, "ws1")
    tracker: FakeTracker = services.progress  # type: ignore[assignment]
    state = tracker.state(row.id)
    assert state is not None
    state.start([T])
    state.report(T, 30)
    with (
        TestClient(create_app(services)) as tc,
        tc.websocket_connect("/ws/tasks/ws1?after_seq=0") as ws,
    ):
        snap = ws.receive_json()
        assert snap["type"] == "snapshot" and snap["seq"] == 2
        replay = [ws.receive_json(), ws.receive_json()]
        assert [e["seq"] for e in replay] == [1, 2]
        state.finish(
            TaskStatus.failed,
            TaskError(error_code="invalid_audio", user_message="Bad.", technical_detail="x"),
        )
        tracker.changed.set()
        final = ws.receive_json()
        assert (
            final["type"] == "error"
            and final["error_code"] == "invalid_audio"
            and final["seq"] == 3
        )
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == 1000


def test_websocket_unknown_task_closes_with_4404(services: IngressServices) -> None:
    with TestClient(create_app(services)) as tc, tc.websocket_connect("/ws/tasks/missing") as ws:
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == 4404
