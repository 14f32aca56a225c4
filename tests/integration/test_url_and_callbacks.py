"""URL submissions and task callbacks on the deployed graph (real Ray, real models).

The app allowlists 127.0.0.1/32 (conftest), so it may download from and call back to
servers this test process runs on 127.0.0.1; every other non-public address stays refused.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import normalise
from tests.integration.conftest import Service
from tests.local_http import LocalHTTPServer, Recorded, reply
from tests.ports import free_port
from tests.streams import submit
from tests.waiting import wait_until

PHRASE = "ask not what your country can do for you"
FAST = {"align": "false", "diarize": "false"}  # transcription alone keeps these tests light


@pytest.fixture
def local() -> Iterator[LocalHTTPServer]:
    """Serves the audio and receives callbacks (answering 200)."""
    with LocalHTTPServer("127.0.0.1") as server:
        yield server


def _hook(server: LocalHTTPServer, path: str) -> str:
    def ok(h: BaseHTTPRequestHandler) -> None:
        reply(h, 200, b"thanks")

    server.routes[path] = ok
    return server.url(path)


def _final(service: Service, task_id: str, timeout: float = 300) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        body: dict[str, Any] = httpx.get(f"{service.base_url}/task/{task_id}", timeout=10).json()
        return body if body["status"] in ("completed", "failed", "cancelled") else None

    return wait_until(done, timeout=timeout, interval=0.5, what=f"task {task_id} to end")


def _posts(server: LocalHTTPServer, path: str, count: int = 1) -> list[Recorded]:
    def arrived() -> list[Recorded] | None:
        hits = [r for r in server.requests if r.path == path]
        return hits if len(hits) >= count else None

    return wait_until(arrived, timeout=300, what=f"{count} POST(s) to {path}")


def test_url_task_completes_with_transcript(
    service: Service, local: LocalHTTPServer, jfk_path: Path
) -> None:
    audio = jfk_path.read_bytes()

    def serve_audio(h: BaseHTTPRequestHandler) -> None:
        reply(h, 200, audio, {"Content-Type": "audio/flac"})

    local.routes["/media/jfk.flac"] = serve_audio
    r = httpx.post(
        f"{service.base_url}/speech-to-text-url",
        params=FAST,
        data={"url": local.url("/media/jfk.flac?sig=abc")},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    task = _final(service, r.json()["identifier"])
    assert task["status"] == "completed", task["error"]
    assert task["file_name"] == "jfk.flac"
    assert task["audio_duration"] == pytest.approx(11.0, abs=0.1)
    assert PHRASE in normalise(" ".join(s["text"] for s in task["result"]["segments"]))
    assert local.paths() == ["/media/jfk.flac"]


def test_url_to_a_refused_address_is_422(service: Service) -> None:
    for url in ("http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/a.flac"):
        r = httpx.post(f"{service.base_url}/speech-to-text-url", data={"url": url}, timeout=30)
        assert r.status_code == 422 and r.json()["error_code"] == "url_not_allowed", r.text


def test_callbacks_for_completed_and_failed_tasks(
    service: Service, local: LocalHTTPServer, jfk_path: Path
) -> None:
    done_hook = _hook(local, "/hooks/done")
    ok_id = submit(service.base_url, jfk_path, callback_url=done_hook, **FAST)
    [post] = _posts(local, "/hooks/done")
    assert post.method == "POST" and post.headers["Content-Type"] == "application/json"
    assert post.headers["X-WhisperX-Task-Id"] == ok_id
    assert post.headers["X-WhisperX-Task-Status"] == "completed"
    sent = json.loads(post.body)
    assert sent["identifier"] == ok_id and sent["status"] == "completed"
    assert sent["params"]["callback_url"] == done_hook
    assert PHRASE in normalise(" ".join(s["text"] for s in sent["result"]["segments"]))
    assert sent == _final(service, ok_id)  # the callback carries the stored final task

    fail_hook = _hook(local, "/hooks/failed")
    bad_id = submit(  # an aligner nobody serves: the task fails at its alignment stage
        # (a language tiny.en cannot do is now refused at the route, before any task)
        service.base_url,
        jfk_path,
        align_model="no-such-aligner",
        diarize="false",
        callback_url=fail_hook,
    )
    [failed] = _posts(local, "/hooks/failed")
    body = json.loads(failed.body)
    assert failed.headers["X-WhisperX-Task-Status"] == "failed"
    assert body["identifier"] == bad_id and body["status"] == "failed"
    assert body["error"]["error_code"] and body["error"]["user_message"] and body["result"] is None

    # The failed task ran and reported after the first one finished: had the first been
    # posted twice, the second POST would have arrived by now.
    assert [r.path for r in local.requests] == ["/hooks/done", "/hooks/failed"]


def test_unreachable_callback_leaves_the_task_completed(service: Service, jfk_path: Path) -> None:
    port = free_port()  # nothing listens on it
    unreachable = submit(
        service.base_url, jfk_path, callback_url=f"http://127.0.0.1:{port}/hook", **FAST
    )
    refused = submit(  # passes the syntax check, refused at delivery (private address)
        service.base_url, jfk_path, callback_url="http://10.0.0.1/hook", **FAST
    )
    for task_id in (unreachable, refused):
        task = _final(service, task_id)
        assert task["status"] == "completed" and task["error"] is None
        assert PHRASE in normalise(" ".join(s["text"] for s in task["result"]["segments"]))
    assert httpx.get(f"{service.base_url}/health/ready", timeout=10).status_code == 200


def test_cancelled_tasks_call_back_too(
    service: Service, jfk_path: Path, local: LocalHTTPServer
) -> None:
    """A task cancelled while queued never reaches a runner; its callback still comes."""
    busy = [submit(service.base_url, jfk_path) for _ in range(2)]  # both runner slots
    hook = _hook(local, "/cancelled")
    queued = submit(service.base_url, jfk_path, callback_url=hook, **FAST)
    r = httpx.post(f"{service.base_url}/task/{queued}/cancel", timeout=10)
    assert r.status_code == 200, r.text
    (post,) = _posts(local, "/cancelled")
    body = json.loads(post.body)
    assert body["identifier"] == queued and body["status"] == "cancelled"
    assert post.headers.get("X-WhisperX-Task-Status") == "cancelled"
    for task_id in busy:
        _final(service, task_id)
