"""Faults cost nothing: killing a model replica or the tracker mid-task (real SIGKILLs of
the real processes) neither fails the task nor leaves a WebSocket watcher hanging."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import uuid
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import normalise
from tests.integration.conftest import APP, Service
from tests.integration.test_service import (
    PHRASE,
    _finished,
    _long_clip,
    _replica_pids,
    _sigkill_tracker_and_wait_replaced,
    _tracker_pid,
)
from tests.streams import collect, submit
from tests.waiting import wait_until


def _stage(service: Service, task_id: str) -> str | None:
    r = httpx.get(f"{service.base_url}/tasks/{task_id}/progress", timeout=10)
    return str(r.json()["progress_stage"]) if r.status_code == 200 else None


def _transcribing_in_progress(service: Service, task_id: str) -> bool:
    """The ASR replica is executing the request: it has reported progress inside the stage
    (the stage is entered before the audio is decoded and the request sent)."""
    r = httpx.get(f"{service.base_url}/tasks/{task_id}/progress", timeout=10)
    body = r.json() if r.status_code == 200 else {}
    return body.get("progress_stage") == "transcribing" and body["progress_percentage"] > 0


def _wait_for_stage(service: Service, task_id: str, stage: str, timeout: float = 120) -> None:
    wait_until(lambda: _stage(service, task_id) == stage, timeout=timeout, interval=0.1, what=stage)


def _progress(service: Service, task_id: str, key: str) -> tuple[str | None, float]:
    """The task's ``key`` (``progress_stage``, ``status``) and percentage, as polled."""
    r = httpx.get(f"{service.base_url}/tasks/{task_id}/progress", timeout=10)
    body = r.json() if r.status_code == 200 else {}
    return body.get(key), float(body.get("progress_percentage") or 0)


def _wait_for_progress_in(service: Service, task_id: str, stage: str) -> None:
    """Until the task has reported progress inside ``stage`` (past the stage's entry)."""

    def progress() -> tuple[str | None, float]:
        return _progress(service, task_id, "progress_stage")

    wait_until(lambda: progress()[0] == stage, timeout=120, interval=0.1, what=stage)
    entered = progress()[1]
    wait_until(
        lambda: (p := progress())[0] == stage and p[1] > entered,
        timeout=120,
        interval=0.1,
        what=f"progress inside {stage}",
    )


def _wait_for_new_progress(service: Service, task_id: str) -> None:
    """Until the running task reports progress past what it showed on the call, in any
    stage."""

    def progress() -> tuple[str | None, float]:
        return _progress(service, task_id, "status")

    _, before = progress()
    wait_until(
        lambda: (p := progress())[0] == "processing" and p[1] > before,
        timeout=120,
        interval=0.1,
        what="new progress of the running task",
    )


def _tracker_pid_when_up() -> int:
    pid: int = wait_until(_tracker_pid, timeout=60, what="the tracker replica")
    return pid


def _assert_ends_in_order(frames: list[dict[str, Any]], close_code: int | None) -> list[int]:
    """Seq continuity after a restart: each event a watcher receives after the snapshot has
    the seq one more than the one before it (none skipped, none repeated), exactly one
    terminal event closes the stream, and the socket closes 1000."""
    events = frames[1:]
    assert events, frames
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"seq gaps or repeats: {seqs}"
    terminal = [e for e in events if e["status"] in ("completed", "failed", "cancelled")]
    assert terminal == [events[-1]], events[-3:]
    assert close_code == 1000, close_code
    return seqs


def test_asr_replica_killed_mid_transcription_is_retried(
    service: Service, jfk_path: Path, tmp_path: Path
) -> None:
    task_id = submit(
        service.base_url, _long_clip(jfk_path, tmp_path / "long.wav", 4), diarize="false"
    )
    wait_until(
        lambda: _transcribing_in_progress(service, task_id),
        timeout=120,
        interval=0.05,
        what="ASR mid-request",
    )
    pids = _replica_pids("AsrDeployment")
    assert pids, "AsrDeployment replica process not found"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    row = _finished(service, task_id, timeout=240)
    assert row.status == "completed", row.error
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
    clip = _long_clip(jfk_path, tmp_path / "long.wav", 40)
    task_id = submit(service.base_url, clip, align="false", min_speakers=1, max_speakers=2)
    watcher = asyncio.create_task(collect(service.ws_url, task_id, after_seq=0, timeout=300))
    try:
        # The first kill once the ASR replica reports inside transcribing, the second once
        # the task has reported to the replacement (in whichever stage it then is: with
        # diarization beside ASR, the diarizing stage can be over as soon as it starts).
        # Serve takes 2-4 s to replace a killed tracker on this box (its health check
        # runs every 2 s); 7 minutes of audio keep the task running through both.
        for kill in range(2):
            pid = await asyncio.to_thread(_tracker_pid_when_up)  # looked up ahead
            if kill == 0:
                await asyncio.to_thread(_wait_for_progress_in, service, task_id, "transcribing")
            else:
                await asyncio.to_thread(_wait_for_new_progress, service, task_id)
            await asyncio.to_thread(_sigkill_tracker_and_wait_replaced, APP, pid)
        stream = await watcher
    finally:
        watcher.cancel()
    seqs = _assert_ends_in_order(stream.frames, stream.close_code)
    assert stream.events[-1]["status"] == "completed", stream.events[-1]
    row = _finished(service, task_id, timeout=30)
    assert row.status == "completed" and row.progress_seq == seqs[-1]


def test_ws_from_the_tracker_alone_ends_across_restarts(service: Service, tmp_path: Path) -> None:
    """The same without Redis (``make run``'s setup), where every event comes from the
    tracker: a tracker deployment of its own (an app of one), its replica killed twice
    mid-stage while its in-stage progress is newer than the database copy, then the task
    finishes. Runner and model replica are played by calls to its handle, the watcher is
    the real WebSocket route."""
    from ray import serve
    from starlette.testclient import TestClient
    from starlette.websockets import WebSocketDisconnect

    from common.schemas import (
        Segment,
        TaskParams,
        TaskProgressStage,
        TaskStatus,
        TaskType,
        Transcript,
    )
    from deployments.clients import ProgressClient
    from deployments.progress import TrackerDeployment
    from ingress.app import create_app
    from storage import lifecycle, repository
    from tests.fakes import make_ingress_services

    url = f"sqlite:///{tmp_path / 'ingress.db'}"
    name = f"faults-{uuid.uuid4().hex[:8]}"
    services = make_ingress_services(tmp_path, ws_wait_seconds=2.0)  # migrates the database
    services.db.dispose()
    env = {"WHISPERX_SERVE_DATABASE_URL": url, "WHISPERX_SERVE_REDIS_URL": ""}
    tracker: Any = TrackerDeployment
    actor = serve.run(
        tracker.options(ray_actor_options={"num_cpus": 0, "runtime_env": {"env_vars": env}}).bind(
            app_name=name, mirror_interval_s=3600, retain_terminal_s=900
        ),
        name=name,
        route_prefix=None,
    )
    services = make_ingress_services(
        tmp_path, tracker=lambda db: ProgressClient(actor), ws_wait_seconds=2.0
    )
    assert services.settings.resolved_database_url() == url
    repository.create_task(
        services.db,
        task_id="t",
        task_type=TaskType.speech_to_text,
        params=TaskParams(align=False),
        file_name=None,
        audio_key=None,
    )
    lifecycle.claim(services.db, worker_id="w", limit=1, lease_seconds=600)
    diarizing = TaskProgressStage.diarizing.value
    try:
        assert actor.effective_settings.remote().result()["redis"] is False
        actor.start.remote("t", [TaskProgressStage.transcribing.value, diarizing]).result()
        actor.enter_stage.remote("t", diarizing).result()
        frames: list[dict[str, Any]] = []
        closed: list[int] = []

        def watch() -> None:
            with TestClient(create_app(services)) as tc, tc.websocket_connect("/ws/tasks/t") as ws:
                try:
                    while True:
                        frames.append(ws.receive_json())
                except WebSocketDisconnect as exc:
                    closed.append(exc.code)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        for pct in (20, 40, 60, 80):
            for step in range(5):  # progress newer than the database's copy of it
                actor.report.remote("t", diarizing, pct + step).result()
            seq = actor.snapshot.remote("t").result().seq
            wait_until(
                lambda s=seq: frames and frames[-1]["seq"] >= s, timeout=30, what=f"seq {seq}"
            )
            if pct in (40, 60):
                _sigkill_tracker_and_wait_replaced(name)
        result = Transcript(language="en", segments=[Segment(start=0, end=1, text=" hi")])
        # as the runner does: the row first (with the terminal event's seq), then the event
        seq = actor.snapshot.remote("t").result().seq + 1
        assert lifecycle.finish(
            services.db,
            task_id="t",
            status=TaskStatus.completed,
            result=result,
            seq=seq,
            worker_id="w",
        )
        actor.finished.remote("t", "completed").result()
        watcher.join(timeout=60)
        assert not watcher.is_alive(), f"the watcher still waits; it has {frames[-2:]}"
        seqs = _assert_ends_in_order(frames, closed[0] if closed else None)
        pcts = [f["percentage"] for f in frames[1:]]
        assert pcts == sorted(pcts), pcts
        row = repository.get_task(services.db, task_id="t")
        assert row is not None and row.status == "completed" and row.progress_seq == seqs[-1]
    finally:
        serve.delete(name)
        services.db.dispose()
