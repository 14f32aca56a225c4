"""The client package against a server with API keys on: its key on HTTP and the WebSocket,
and the server's real 429 (a key's limit) and 503 (the queue bound) ridden out by waiting
the ``Retry-After`` the server sends."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from whisperx_serve_client import APIError, Client, TaskNotFound

from common.config import CallerLimits
from common.schemas import TaskParams, TaskStatus, TaskType
from ingress.auth import create_key
from storage import lifecycle, repository
from tests.client.harness import CANNED, Live, live_server
from tests.waiting import wait_until


@pytest.fixture
def limited(tmp_path: Path) -> Iterator[Live]:
    limits = CallerLimits(max_active_tasks=1, busy_retry_after_seconds=1)
    with live_server(tmp_path / "server", limits=limits, overload_retry_after_seconds=1) as live:
        yield live


def _posts(live: Live) -> int:
    return len(live.faults.requests("POST", "/speech-to-text"))


def test_key_works_on_http_and_websocket_and_tasks_stay_private(
    limited: Live, jfk_path: Path
) -> None:
    alice = create_key(limited.services.db, name="alice")[0].key
    bob = create_key(limited.services.db, name="bob")[0].key
    with Client(limited.base_url, api_key=alice, backoff=0.02) as client:
        handle = client.submit(jfk_path)
        events = list(handle.events())
        assert events[-1].terminal and handle.wait(timeout=30).text == CANNED.text
    assert limited.faults.websocket_headers[-1]["authorization"] == f"Bearer {alice}"
    with Client(limited.base_url, api_key=bob, retries=0) as other:
        with pytest.raises(TaskNotFound):
            other.task(handle.id).info()
        assert other.list_tasks() == []
    with Client(limited.base_url, retries=0) as stranger, pytest.raises(APIError) as refused:
        stranger.list_tasks()
    assert refused.value.status_code == 401 and refused.value.error_code == "unauthorized"


def test_client_waits_out_a_429_for_the_keys_active_limit(limited: Live, jfk_path: Path) -> None:
    key = create_key(limited.services.db, name="alice")[0].key
    limited.runner.hold.clear()  # the first task stays running: the key is at its limit
    with Client(limited.base_url, api_key=key, backoff=0.02, retries=5) as client:
        first = client.submit(jfk_path)

        def release_after_a_refusal() -> None:
            wait_until(lambda: _posts(limited) >= 2, timeout=30, what="a refused POST")
            limited.runner.hold.set()

        releaser = threading.Thread(target=release_after_a_refusal)
        releaser.start()
        started = time.monotonic()
        second = client.submit(jfk_path)  # 429 first, then accepted once the first ended
        waited = time.monotonic() - started
        releaser.join()
        assert second.wait(timeout=30).text == CANNED.text
        assert first.wait(timeout=30).text == CANNED.text
    assert _posts(limited) == 3  # one accepted, one refused with 429, its retry accepted
    assert waited >= 0.9  # the server's Retry-After (1 s), not the client's 0.02 s backoff
    assert repository.list_tasks(limited.services.db)[1] == 2


def test_client_waits_out_a_503_for_the_queue_bound(tmp_path: Path, jfk_path: Path) -> None:
    with live_server(tmp_path / "s", max_queued_tasks=1, overload_retry_after_seconds=1) as live:
        live.runner.hold.clear()
        repository.create_task(  # a queued task no runner takes: the queue is full
            live.services.db,
            task_id="blocker",
            task_type=TaskType.speech_to_text,
            params=TaskParams(),
            file_name=None,
            audio_key=None,
        )

        def drain() -> None:
            wait_until(lambda: _posts(live) >= 1, timeout=30, what="a refused POST")
            lifecycle.finish(live.services.db, status=TaskStatus.cancelled, task_id="blocker")
            live.runner.hold.set()

        drainer = threading.Thread(target=drain)
        drainer.start()
        with Client(live.base_url, backoff=0.02, retries=5) as client:
            handle = client.submit(jfk_path)
            drainer.join()
            assert handle.wait(timeout=30).text == CANNED.text
        assert _posts(live) == 2
