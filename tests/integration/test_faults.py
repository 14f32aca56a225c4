"""Faults cost nothing: killing a model replica or the tracker mid-task (real SIGKILLs of
the real processes) neither fails the task nor leaves a WebSocket watcher hanging."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import httpx
import psutil

from tests.conftest import normalise
from tests.integration.conftest import Service
from tests.integration.test_service import PHRASE, _finished, _long_clip, _replica_pids
from tests.streams import collect, submit
from tests.waiting import wait_until


def _stage(service: Service, task_id: str) -> str | None:
    r = httpx.get(f"{service.base_url}/tasks/{task_id}/progress", timeout=10)
    return str(r.json()["progress_stage"]) if r.status_code == 200 else None


def _wait_for_stage(service: Service, task_id: str, stage: str, timeout: float = 120) -> None:
    wait_until(lambda: _stage(service, task_id) == stage, timeout=timeout, interval=0.1, what=stage)


def _tracker_pid() -> int | None:
    """The ProgressTracker actor's worker process (Ray titles it ``ray::ProgressTracker``)."""
    for p in psutil.process_iter(["cmdline"]):
        if any(c.startswith("ray::ProgressTracker") for c in (p.info["cmdline"] or [])):
            return p.pid
    return None


def test_asr_replica_killed_mid_transcription_is_retried(
    service: Service, jfk_path: Path, tmp_path: Path
) -> None:
    task_id = submit(
        service.base_url, _long_clip(jfk_path, tmp_path / "long.wav", 4), diarize="false"
    )
    _wait_for_stage(service, task_id, "transcribing")
    pids = _replica_pids("AsrDeployment")
    assert pids, "AsrDeployment replica process not found"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    row = _finished(service, task_id, timeout=240)
    assert row.status == "completed", (row.error_code, row.error_detail)
    assert row.attempts == 1  # the stage was retried, not the whole task
    result = row.to_public().result
    assert result is not None and PHRASE in normalise(result.text)


async def test_ws_ends_with_the_terminal_event_across_tracker_restarts(
    service: Service, jfk_path: Path, tmp_path: Path
) -> None:
    """Seq continuity after a restart: the frames a watcher receives after the snapshot
    have strictly increasing seqs, each one more than the previous one (nothing skipped of
    what the tracker numbered after what the client had), the last is the terminal event,
    and the socket closes 1000."""
    clip = _long_clip(jfk_path, tmp_path / "long.wav", 3)
    task_id = submit(service.base_url, clip, align="false", min_speakers=1, max_speakers=2)
    watcher = asyncio.create_task(collect(service.ws_url, task_id, after_seq=0, timeout=240))
    try:
        for _ in range(2):
            await asyncio.to_thread(_wait_for_stage, service, task_id, "diarizing")
            pid = await asyncio.to_thread(
                wait_until, _tracker_pid, timeout=60, what="the tracker process"
            )
            os.kill(pid, signal.SIGKILL)
            await asyncio.to_thread(
                wait_until,
                lambda old=pid: (p := _tracker_pid()) is not None and p != old,
                timeout=60,
                what="the restarted tracker",
            )
        stream = await watcher
    finally:
        watcher.cancel()
    events = stream.events
    assert events, stream
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"seq gaps or repeats: {seqs}"
    assert events[-1]["status"] == "completed", events[-1]
    assert [e for e in events if e["status"] in ("completed", "failed", "cancelled")] == [
        events[-1]
    ]
    assert stream.close_code == 1000, (stream.close_code, stream.close_reason)
    row = _finished(service, task_id, timeout=30)
    assert row.status == "completed" and row.progress_seq == seqs[-1]
