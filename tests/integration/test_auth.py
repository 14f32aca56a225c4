"""API keys on the deployed graph (real Ray, real models, real HTTP and WebSocket).

Keys come from the real ``whisperx-serve keys create`` (conftest ``keys``); the app runs
``ingress.auth: auto``, so auth is on while they exist. A key's task is invisible to
another key on every route; an admin key sees all; a key's limits answer 429 with
``Retry-After``, which the client package waits out; callbacks are signed with the owner
key's secret and verified by a real receiver.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from whisperx_serve_client import Client

from tests.conftest import normalise
from tests.integration.conftest import QUEUE_BOUND, Keys, Service
from tests.local_http import LocalHTTPServer, Recorded, reply, verify_signature
from tests.waiting import wait_until

PHRASE = "ask not what your country can do for you"
FAST = {"align": "false", "diarize": "false"}


def _submit(service: Service, path: Path, headers: dict[str, str], **params: Any) -> httpx.Response:
    with path.open("rb") as f:
        return httpx.post(
            f"{service.base_url}/speech-to-text",
            params={**FAST, **params},
            files={"file": (path.name, f)},
            headers=headers,
            timeout=60,
        )


def _final(service: Service, task_id: str, headers: dict[str, str]) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        r = httpx.get(f"{service.base_url}/task/{task_id}", headers=headers, timeout=10)
        body: dict[str, Any] = r.json()
        return body if body.get("status") in ("completed", "failed", "cancelled") else None

    return wait_until(done, timeout=300, interval=0.5, what=f"task {task_id} to end")


async def _ws(
    service: Service,
    task_id: str,
    *,
    headers: dict[str, str] | None = None,
    subprotocols: list[str] | None = None,
) -> tuple[list[dict[str, Any]], int | None, str | None]:
    """Frames, close code and accepted subprotocol of one WebSocket to the task."""
    frames: list[dict[str, Any]] = []
    async with (
        asyncio.timeout(120),
        websockets.connect(
            f"{service.ws_url}/ws/tasks/{task_id}",
            additional_headers=headers,
            subprotocols=subprotocols,  # type: ignore[arg-type]
        ) as ws,
    ):
        try:
            async for message in ws:
                frames.append(json.loads(message))
        except websockets.ConnectionClosed:
            pass
        return frames, ws.close_code, ws.subprotocol


def test_a_stranger_reaches_only_the_health_probes(
    service: Service, keys: Keys, jfk_path: Path
) -> None:
    base = service.base_url
    for path in ("/health", "/health/live", "/health/ready"):
        assert httpx.get(base + path, timeout=10).status_code == 200, path
    for path in ("/docs", "/openapi.json", "/task/all", "/task/x", "/tasks/x/progress"):
        r = httpx.get(base + path, timeout=10)
        assert r.status_code == 401 and r.json()["error_code"] == "unauthorized", path
    r = _submit(service, jfk_path, {})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    _, code, _ = asyncio.run(_ws(service, "x"))
    assert code == 4401


def test_a_keys_task_is_invisible_to_another_key_everywhere(
    service: Service, keys: Keys, jfk_path: Path
) -> None:
    alice, bob, root = keys.headers("alice"), keys.headers("bob"), keys.headers("root")
    r = _submit(service, jfk_path, alice)
    assert r.status_code == 200, r.text
    task_id = r.json()["identifier"]
    for method, path in (
        ("GET", f"/task/{task_id}"),
        ("GET", f"/task/{task_id}/result"),
        ("GET", f"/tasks/{task_id}/progress"),
        ("POST", f"/task/{task_id}/cancel"),
        ("DELETE", f"/task/{task_id}/delete"),
    ):
        r = httpx.request(method, service.base_url + path, headers=bob, timeout=10)
        assert r.status_code == 404 and r.json()["error_code"] == "task_not_found", path
    _, code, _ = asyncio.run(_ws(service, task_id, headers=bob))
    assert code == 4404
    bobs = httpx.get(f"{service.base_url}/task/all", headers=bob, timeout=10).json()
    assert bobs["tasks"] == [] and bobs["total"] == 0

    # Its owner follows it from a browser (the key as a subprotocol) to the end.
    frames, code, protocol = asyncio.run(
        _ws(service, task_id, subprotocols=["whisperx-serve", f"bearer.{keys.secrets['alice']}"])
    )
    assert protocol == "whisperx-serve" and code == 1000
    assert frames[0]["type"] == "snapshot" and frames[-1]["status"] == "completed"
    task = _final(service, task_id, alice)
    assert PHRASE in normalise(" ".join(s["text"] for s in task["result"]["segments"]))
    mine = httpx.get(f"{service.base_url}/task/all", headers=alice, timeout=10).json()
    assert [t["identifier"] for t in mine["tasks"]] == [task_id] and mine["total"] == 1

    r = _submit(service, jfk_path, bob)  # bob's own task: he sees it alone, the admin both
    bobs_id = r.json()["identifier"]
    httpx.post(f"{service.base_url}/task/{bobs_id}/cancel", headers=bob, timeout=10)
    bobs = httpx.get(f"{service.base_url}/task/all", headers=bob, timeout=10).json()
    assert [t["identifier"] for t in bobs["tasks"]] == [bobs_id] and bobs["total"] == 1
    everything = httpx.get(
        f"{service.base_url}/task/all", params={"limit": 1000}, headers=root, timeout=30
    ).json()
    assert {task_id, bobs_id} <= {t["identifier"] for t in everything["tasks"]}
    assert everything["total"] >= 2
    r = httpx.get(f"{service.base_url}/task/{task_id}/result", headers=root, timeout=10)
    assert r.status_code == 200
    r = httpx.delete(f"{service.base_url}/task/{task_id}/delete", headers=alice, timeout=10)
    assert r.status_code == 200


@pytest.fixture
def receiver() -> Iterator[LocalHTTPServer]:
    with LocalHTTPServer("127.0.0.1") as server:
        yield server


def test_url_task_is_private_and_its_callback_is_signed(
    service: Service, keys: Keys, receiver: LocalHTTPServer, jfk_path: Path
) -> None:
    audio = jfk_path.read_bytes()

    def media(h: BaseHTTPRequestHandler) -> None:
        reply(h, 200, audio, {"Content-Type": "audio/flac"})

    def hook(h: BaseHTTPRequestHandler) -> None:
        reply(h, 200, b"ok")

    receiver.routes["/jfk.flac"] = media
    receiver.routes["/hook"] = hook
    r = httpx.post(
        f"{service.base_url}/speech-to-text-url",
        params={**FAST, "callback_url": receiver.url("/hook")},
        data={"url": receiver.url("/jfk.flac")},
        headers=keys.headers("alice"),
        timeout=60,
    )
    assert r.status_code == 200, r.text
    task_id = r.json()["identifier"]
    r = httpx.get(f"{service.base_url}/task/{task_id}", headers=keys.headers("bob"), timeout=10)
    assert r.status_code == 404

    def posted() -> Recorded | None:
        return next((q for q in receiver.requests if q.path == "/hook"), None)

    post = wait_until(posted, timeout=300, what="the callback")
    assert json.loads(post.body)["identifier"] == task_id
    signature, stamp = post.headers["X-WhisperX-Signature"], post.headers["X-WhisperX-Timestamp"]
    assert verify_signature(keys.signing["alice"], post.body, signature, stamp)
    assert not verify_signature(keys.signing["bob"], post.body, signature, stamp)


def test_the_active_limit_is_429_and_the_client_waits_it_out(
    service: Service, keys: Keys, jfk_path: Path
) -> None:
    carol = keys.headers("carol")  # at most one task queued or running
    first = _submit(service, jfk_path, carol)
    assert first.status_code == 200, first.text
    refused = _submit(service, jfk_path, carol)
    assert refused.status_code == 429 and refused.json()["error_code"] == "rate_limited"
    assert int(refused.headers["retry-after"]) >= 1
    assert _submit(service, jfk_path, keys.headers("alice")).status_code == 200  # per key

    started = time.monotonic()
    with Client(service.base_url, api_key=keys.secrets["carol"], retries=20) as client:
        transcript = client.transcribe(jfk_path, **FAST)  # 429 until the first task ends
    assert PHRASE in normalise(transcript.text)
    first_task = _final(service, first.json()["identifier"], carol)
    assert first_task["status"] == "completed"
    assert first_task["completed_at"] is not None and time.monotonic() - started < 300


def test_the_per_minute_limit_is_429_with_the_wait(
    service: Service, keys: Keys, jfk_path: Path
) -> None:
    dave = keys.headers("dave")  # two submissions per minute
    accepted = [_submit(service, jfk_path, dave) for _ in range(2)]
    assert [r.status_code for r in accepted] == [200, 200]
    refused = _submit(service, jfk_path, dave)
    assert refused.status_code == 429 and "per minute" in refused.json()["user_message"]
    assert 25 <= int(refused.headers["retry-after"]) <= 30  # one more every 30 s
    for r in accepted:  # they need not run; and deleting them gives no submission back
        gone = httpx.delete(
            f"{service.base_url}/task/{r.json()['identifier']}/delete", headers=dave, timeout=10
        )
        assert gone.status_code == 200
    assert _submit(service, jfk_path, dave).status_code == 429


def test_a_full_queue_is_503_and_keeps_what_it_holds(
    service: Service, keys: Keys, jfk_path: Path
) -> None:
    """The queue bound on the real service: the queue is filled past it at once by rows
    written straight to the database (standing in for a long backlog; real uploads would
    take minutes), then a real submission is refused with 503 and Retry-After, and is
    accepted again once the queue is back under the bound."""
    import sqlalchemy as sa

    from common.schemas import TaskParams, TaskType, utcnow
    from storage.db import Database
    from storage.models import TaskRow

    alice = keys.headers("alice")
    db = Database(service.database_url)
    ids = [f"backlog-{i:05d}" for i in range(QUEUE_BOUND)]
    try:
        now = utcnow()
        with db.session() as session:
            session.add_all(
                TaskRow(
                    id=task_id,
                    status="queued",
                    task_type=TaskType.combine.value,
                    params=TaskParams().model_dump(mode="json"),
                    timings={},
                    created_at=now,
                    updated_at=now,
                )
                for task_id in ids
            )
        refused = _submit(service, jfk_path, alice)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error_code"] == "overloaded"
        assert refused.headers["retry-after"] == "2"
        with db.session() as session:  # nothing of the backlog was dropped
            kept = session.scalar(
                sa.select(sa.func.count()).select_from(TaskRow).where(TaskRow.id.in_(ids))
            )
        assert kept == QUEUE_BOUND
    finally:
        with db.session() as session:
            session.execute(sa.delete(TaskRow).where(TaskRow.id.in_(ids)))
        db.dispose()
    accepted = _submit(service, jfk_path, alice)
    assert accepted.status_code == 200, accepted.text
    httpx.post(
        f"{service.base_url}/task/{accepted.json()['identifier']}/cancel", headers=alice, timeout=10
    )
