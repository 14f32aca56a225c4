"""``AsyncClient``, and the sync client where an event loop is already running (Jupyter)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from whisperx_serve_client import (
    AsyncClient,
    Client,
    ProgressEvent,
    TaskCancelled,
    TaskNotFound,
    TaskStatus,
    Transcript,
)

from tests.client.harness import CANNED, Live


def _client(live: Live) -> AsyncClient:
    return AsyncClient(live.base_url, backoff=0.02, poll_interval=0.05, timeout=30)


async def test_transcribe_and_events(live: Live, jfk_path: Path) -> None:
    async with _client(live) as client:
        transcript = await client.transcribe(jfk_path, max_speakers=2)
        assert transcript.model_dump(mode="json") == CANNED.model_dump(mode="json")
        handle = await client.submit(jfk_path.read_bytes())
        events = [event async for event in handle.events()]
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert events[-1].status is TaskStatus.completed
        assert (await handle.wait(timeout=10)).text == CANNED.text
        assert (await handle.status()).progress_percentage == 100
        assert await handle.result("srt") == await _server_text(live, handle.id, "srt")


async def _server_text(live: Live, task_id: str, fmt: str) -> str:
    import httpx

    async with httpx.AsyncClient(base_url=live.base_url) as http:
        return (await http.get(f"/task/{task_id}/result", params={"format": fmt})).text


async def test_events_resume_from_a_given_seq(live: Live, jfk_path: Path) -> None:
    async with _client(live) as client:
        handle = await client.submit(jfk_path)
        await handle.wait(timeout=10)
        replayed = [e.seq async for e in handle.events(after_seq=3)]
        assert replayed[0] == 4 and replayed == list(range(4, replayed[-1] + 1))


async def test_cancel_and_delete(live: Live, jfk_path: Path) -> None:
    live.runner.hold.clear()
    async with _client(live) as client:
        handle = await client.submit(jfk_path)
        async for event in handle.events():
            if isinstance(event, ProgressEvent) and event.percentage >= 50:
                break
        await handle.cancel()
        live.runner.hold.set()
        with pytest.raises(TaskCancelled):
            await handle.wait(timeout=10)
        await handle.delete()
        with pytest.raises(TaskNotFound):
            await handle.info()


async def test_transcribe_many_async(live: Live, jfk_path: Path) -> None:
    async with _client(live) as client:
        batch = await client.transcribe_many(
            [jfk_path, b"not audio" * 100], concurrency=2, progress=False
        )
    assert [item.ok for item in batch] == [True, False]
    assert batch.failed[0].error is not None and batch.failed[0].error.error_code == "invalid_audio"


def test_async_client_survives_a_new_event_loop(live: Live, jfk_path: Path) -> None:
    # A notebook may call asyncio.run() once per cell with the same client.
    client = _client(live)
    handle = asyncio.run(client.submit(jfk_path))
    assert asyncio.run(handle.wait(timeout=10)).text == CANNED.text


async def test_sync_client_inside_a_running_event_loop(
    live: Live, jfk_path: Path, tmp_path: Path
) -> None:
    # What a Jupyter cell is: sync code on a thread whose event loop is running.
    asyncio.get_running_loop()
    with Client(live.base_url, backoff=0.02) as client:
        transcript = client.transcribe(jfk_path)
        assert isinstance(transcript, Transcript) and transcript.text == CANNED.text
        events = list(client.submit(jfk_path).events())
        assert events[-1].status is TaskStatus.completed
        # Server-rendered formats from a transcript, with this loop still running.
        srt = transcript.save(tmp_path / "t.srt").read_text(encoding="utf-8")
        assert srt == await _server_text(live, transcript.task_id or "", "srt")
        batch = client.transcribe_many([jfk_path], progress=False)
        assert len(batch.succeeded) == 1
