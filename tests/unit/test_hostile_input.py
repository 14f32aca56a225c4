"""Hostile input through ASGI: no 500, no hang, no busy loop (issue 11, part 5).

Each case is what an attacker without credentials can send: WebSockets that ask for
nothing more, malformed ids and cursors, client frames on a server-push socket, uploads
over the limit or stalled mid-body, audio longer than allowed, deep or huge JSON, oversize
headers, and the HTTP details schemathesis checks (405 ``Allow``, dates that are numbers).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from common.config import IngressConfig
from common.schemas import TaskProgressStage, TaskStatus
from deployments.progress_state import Event
from ingress.app import create_app
from ingress.services import IngressServices
from storage.db import Database
from tests.fakes import FakeTracker, add_task, make_ingress_services

LIMIT = 2 * 1024 * 1024
T = TaskProgressStage.transcribing


class CountingTracker(FakeTracker):
    """A FakeTracker that counts how often the WebSocket asks it for events."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self.asked = 0

    async def events_after(
        self, task_id: str, after_seq: int, timeout_s: float
    ) -> list[Event] | None:
        self.asked += 1
        return await super().events_after(task_id, after_seq, timeout_s)


@pytest.fixture
def services(tmp_path: Path) -> IngressServices:
    return make_ingress_services(
        tmp_path,
        config=IngressConfig(
            max_upload_bytes=LIMIT,
            max_audio_seconds=5.0,
            body_idle_timeout_seconds=0.3,
            max_header_bytes=8 * 1024,
        ),
        tracker=CountingTracker,
        ws_wait_seconds=0.2,
    )


@pytest.fixture
async def client(services: IngressServices) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(services))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


def _task(services: IngressServices, task_id: str, *, finished: bool) -> CountingTracker:
    add_task(services.db, task_id)
    tracker: CountingTracker = services.progress  # type: ignore[assignment]
    state = tracker.state(task_id)
    assert state is not None
    state.start([T])
    state.report(T, 50)
    if finished:
        state.finish(TaskStatus.completed)
    return tracker


# ------------------------------------------------------------------ WebSocket


@pytest.mark.parametrize("after_seq", ["3", "4", "999999"])
def test_ws_on_a_finished_task_past_its_last_event_closes(
    services: IngressServices, after_seq: str
) -> None:
    tracker = _task(services, "done1", finished=True)  # seq 1 start, 2 report, 3 completed
    with (
        TestClient(create_app(services)) as tc,
        tc.websocket_connect(f"/ws/tasks/done1?after_seq={after_seq}") as ws,
    ):
        assert ws.receive_json()["type"] == "snapshot"
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == 1000
    assert tracker.asked <= 1  # closed at once, never asked again and again


def test_ws_finished_task_without_cursor_still_gets_the_terminal_event(
    services: IngressServices,
) -> None:
    _task(services, "done2", finished=True)
    with TestClient(create_app(services)) as tc, tc.websocket_connect("/ws/tasks/done2") as ws:
        assert ws.receive_json()["type"] == "snapshot"
        final = ws.receive_json()
        assert final["seq"] == 3 and final["status"] == "completed"
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == 1000


def test_ws_stream_that_finds_nothing_more_closes_instead_of_spinning(
    services: IngressServices,
) -> None:
    """A tracker that answers "nothing new" at once for an ended task must not be asked
    in a tight loop (the Ingress and tracker sat at ~50% CPU per idle socket)."""
    tracker = _task(services, "done3", finished=False)
    state = tracker.state("done3")
    assert state is not None
    with (
        TestClient(create_app(services)) as tc,
        tc.websocket_connect("/ws/tasks/done3?after_seq=2") as ws,
    ):
        assert ws.receive_json()["type"] == "snapshot"
        state.finish(TaskStatus.completed)  # seq 3 exists, the cursor then passes it
        tracker.changed.set()
        assert ws.receive_json()["seq"] == 3
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == 1000
    assert tracker.asked <= 3


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/ws/tasks/" + "a" * 10_000, "invalid task id"),
        ("/ws/tasks/bad%20id", "invalid task id"),
        ("/ws/tasks/ok1?after_seq=" + "9" * 30, "after_seq"),
        ("/ws/tasks/ok1?after_seq=" + "9" * 500, "after_seq"),
        ("/ws/tasks/ok1?after_seq=-1", "after_seq"),
        ("/ws/tasks/ok1?after_seq=abc", "after_seq"),
        ("/ws/tasks/ok1?after_seq=1.5", "after_seq"),
    ],
)
def test_ws_bad_id_or_cursor_closes_4400_with_a_reason(
    services: IngressServices, path: str, reason: str
) -> None:
    _task(services, "ok1", finished=False)
    with (
        TestClient(create_app(services)) as tc,
        tc.websocket_connect(path) as ws,
        pytest.raises(WebSocketDisconnect) as closed,
    ):
        ws.receive_json()
    assert closed.value.code == 4400 and reason in (closed.value.reason or "")


@pytest.mark.parametrize(
    "frame", [("text", "hello"), ("bytes", b"\x00\x01"), ("bytes", b"x" * (1024 * 1024))]
)
def test_ws_client_frames_are_ignored_and_the_stream_goes_on(
    services: IngressServices, frame: tuple[str, Any]
) -> None:
    tracker = _task(services, "live1", finished=False)
    state = tracker.state("live1")
    assert state is not None
    with TestClient(create_app(services)) as tc, tc.websocket_connect("/ws/tasks/live1") as ws:
        assert ws.receive_json()["type"] == "snapshot"
        kind, data = frame
        for _ in range(3):
            ws.send_text(data) if kind == "text" else ws.send_bytes(data)
        state.finish(TaskStatus.completed)
        tracker.changed.set()
        assert ws.receive_json()["status"] == "completed"
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == 1000


# ------------------------------------------------------------------ request bodies


class Body:
    """An ASGI ``receive`` that streams a multipart upload in chunks, counting what the
    app took; ``stall_after`` chunks it stops sending (and never ends)."""

    def __init__(self, total: int, *, chunk: int = 64 * 1024, stall_after: int | None = None):
        self.head = (
            b'--B\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
            b"Content-Type: application/octet-stream\r\n\r\n"
        )
        self.total, self.chunk, self.stall_after = total, chunk, stall_after
        self.sent = 0
        self.chunks = 0

    async def __call__(self) -> dict[str, Any]:
        if self.stall_after is not None and self.chunks >= self.stall_after:
            await asyncio.Event().wait()  # a client that stops sending
        data = self.head if self.chunks == 0 else b"\0" * self.chunk
        self.chunks += 1
        self.sent += len(data)
        return {"type": "http.request", "body": data, "more_body": self.sent < self.total}


async def _call(app: Any, body: Body, headers: list[tuple[bytes, bytes]]) -> tuple[int, bytes]:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/speech-to-text",
        "raw_path": b"/speech-to-text",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"test"),
            (b"content-type", b"multipart/form-data; boundary=B"),
            *headers,
        ],
        "client": ("127.0.0.1", 1),
        "server": ("test", 80),
    }
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await asyncio.wait_for(app(scope, body, send), 10)
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], b"".join(m.get("body", b"") for m in sent[1:])


async def test_oversize_upload_is_refused_while_streaming(services: IngressServices) -> None:
    body = Body(50 * LIMIT)  # chunked: no Content-Length to refuse up front
    status, answer = await _call(create_app(services), body, [])
    assert status == 413 and json.loads(answer)["error_code"] == "upload_too_large"
    assert body.sent < LIMIT + 256 * 1024  # stopped just past the limit, not at 50 MiB
    assert not list(services.settings.upload_dir().glob("*"))


async def test_declared_oversize_upload_is_refused_before_reading(
    services: IngressServices,
) -> None:
    body = Body(2 * LIMIT)
    status, _ = await _call(create_app(services), body, [(b"content-length", b"1099511627776")])
    assert status == 413 and body.chunks == 0


async def test_stalled_body_gets_408(services: IngressServices) -> None:
    body = Body(LIMIT // 2, stall_after=2)
    status, answer = await _call(create_app(services), body, [(b"content-length", b"500000")])
    assert status == 408 and json.loads(answer)["error_code"] == "request_timeout"


async def test_oversize_headers_get_431(client: httpx.AsyncClient) -> None:
    r = await client.get("/health/live", headers={"X-Big": "a" * 10_000})
    assert r.status_code == 431 and r.json()["error_code"] == "headers_too_large"


async def test_audio_longer_than_allowed_is_refused_at_upload(
    client: httpx.AsyncClient, services: IngressServices, jfk_path: Path
) -> None:
    r = await client.post("/speech-to-text", files={"file": ("jfk.flac", jfk_path.read_bytes())})
    assert r.status_code == 422 and r.json()["error_code"] == "audio_too_long"  # 11 s > 5 s
    assert not list(services.settings.upload_dir().glob("*"))


# ------------------------------------------------------------------ JSON inputs

DEEP = b"[" * 100_000 + b"]" * 100_000
HUGE_INT = b'{"segments": [{"start": ' + b"9" * 5000 + b', "end": 1, "text": "a"}]}'
TURNS = b'[{"start": 0, "end": 1, "speaker": "A"}]'
TRANSCRIPT = b'{"segments": [{"start": 0, "end": 1, "text": "a"}], "language": "en"}'


@pytest.mark.parametrize("hostile", [DEEP, HUGE_INT, b'{"a": "' + b"[" * 1000 + b'"} x'])
async def test_combine_refuses_deep_or_huge_json_with_422(
    client: httpx.AsyncClient, hostile: bytes
) -> None:
    for files in (
        {"aligned_transcript": ("t.json", hostile), "diarization_result": ("d.json", TURNS)},
        {"aligned_transcript": ("t.json", TRANSCRIPT), "diarization_result": ("d.json", hostile)},
    ):
        r = await client.post("/service/combine", files=files)
        assert r.status_code == 422, r.text
        assert r.json()["error_code"] == "invalid_request"


async def test_align_refuses_deep_json_with_422(client: httpx.AsyncClient, jfk_path: Path) -> None:
    r = await client.post(
        "/service/align",
        files={"transcript": ("t.json", DEEP), "file": ("a.flac", jfk_path.read_bytes())},
    )
    assert r.status_code == 422 and "nested" in r.json()["user_message"]


async def test_brackets_inside_strings_do_not_count_as_nesting(client: httpx.AsyncClient) -> None:
    text = b'{"segments": [{"start": 0, "end": 1, "text": "' + b"[" * 500 + b'"}]}'
    r = await client.post(
        "/service/combine",
        files={"aligned_transcript": ("t.json", text), "diarization_result": ("d.json", TURNS)},
    )
    assert r.status_code == 200, r.text


# ------------------------------------------------------------------ HTTP details


async def test_405_carries_allow(client: httpx.AsyncClient) -> None:
    r = await client.put("/task/all")
    assert r.status_code == 405 and r.headers["allow"] == "GET"
    r = await client.get("/speech-to-text")
    assert r.status_code == 405 and r.headers["allow"] == "POST"


@pytest.mark.parametrize("value", ["0.5", "0", "1700000000", "-3"])
async def test_created_before_must_be_a_date(client: httpx.AsyncClient, value: str) -> None:
    r = await client.get("/task/all", params={"created_before": value})
    assert r.status_code == 422, r.text


async def test_created_before_takes_iso_dates(client: httpx.AsyncClient) -> None:
    r = await client.get("/task/all", params={"created_before": "2030-01-01T00:00:00Z"})
    assert r.status_code == 200


async def test_openapi_documents_content_refusals_and_timeouts(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    for path in ("/speech-to-text", "/service/transcribe", "/service/align", "/service/combine"):
        responses = spec["paths"][path]["post"]["responses"]
        assert "invalid_audio" in responses["422"]["description"], path
        assert "408" in responses and "413" in responses
    schemas = spec["components"]["schemas"]
    for path in ("/v1/audio/transcriptions", "/v1/audio/translations", "/speech-to-text-url"):
        content = spec["paths"][path]["post"]["requestBody"]["content"]
        ref = next(iter(content.values()))["schema"]["$ref"].rsplit("/", 1)[-1]
        for name, prop in schemas[ref]["properties"].items():  # a form field cannot be null
            assert {"type": "null"} not in prop.get("anyOf", []), (path, name)
            assert prop.get("type") != "null", (path, name)


async def test_proxy_middlewares_apply_the_same_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from ingress.limits import proxy_middlewares

    monkeypatch.setenv("WHISPERX_SERVE_PROXY_MAX_UPLOAD_BYTES", str(LIMIT))

    async def echo(request: Any) -> PlainTextResponse:
        return PlainTextResponse(str(len(await request.body())))

    app = Starlette(routes=[Route("/speech-to-text", echo, methods=["POST"])])
    app.user_middleware = proxy_middlewares()  # what Serve's proxy installs
    body = Body(50 * LIMIT)
    status, _ = await _call(app, body, [])
    assert status == 413 and body.sent < LIMIT + 256 * 1024
