"""The deployed graph on a real local Ray with the real bundle models, over HTTP and WS."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import psutil
import pytest

from storage import repository
from storage.db import Database
from storage.models import TaskRow
from tests.audio import sample_wav, write_wav
from tests.conftest import normalise
from tests.integration.conftest import APP, Service
from tests.streams import assert_well_ordered, collect, submit
from tests.waiting import wait_until

PHRASE = "ask not what your country can do for you"


def task(service: Service, task_id: str) -> dict:  # type: ignore[type-arg]
    r = httpx.get(f"{service.base_url}/task/{task_id}", timeout=10)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


async def test_jfk_end_to_end_with_live_progress(service: Service, jfk_path: Path) -> None:
    task_id = submit(service.base_url, jfk_path, min_speakers=1, max_speakers=2)
    stream = await collect(service.ws_url, task_id, after_seq=0)
    assert stream.snapshot["type"] == "snapshot" and stream.snapshot["task_id"] == task_id
    assert_well_ordered(stream)
    stages = [e["stage"] for e in stream.events]
    assert stages.index("transcribing") < stages.index("aligning") < stages.index("diarizing")
    assert stream.events[-1]["stage"] == "complete" and stream.events[-1]["percentage"] == 100
    in_stage = [e for e in stream.events if e["stage"] == "transcribing"]
    assert len(in_stage) >= 2, "no fine-grained progress inside transcription"

    body = task(service, task_id)
    assert body["status"] == "completed"
    result = body["result"]
    assert PHRASE in normalise(" ".join(s["text"] for s in result["segments"]))
    assert result["word_timestamps"] == "wav2vec2"  # the random tiny aligner: path only
    assert result["speakers"] == ["SPEAKER_00"]
    assert all(s["speaker"] == "SPEAKER_00" for s in result["segments"])
    assert any(w.get("start") is not None for s in result["segments"] for w in s["words"])
    assert body["timings"]["transcribing"] > 0 and body["audio_duration"] == pytest.approx(
        11.0, abs=0.1
    )

    row = repository.get_task(Database(service.database_url), task_id=task_id)
    assert row is not None and row.status == "completed"
    assert (row.progress_percentage, row.progress_stage) == (100.0, "complete")
    assert row.progress_seq == stream.events[-1]["seq"]


async def test_two_speaker_sample_diarizes_into_two(service: Service) -> None:
    task_id = submit(service.base_url, sample_wav(), align="false")
    stream = await collect(service.ws_url, task_id, after_seq=0)
    assert_well_ordered(stream)
    assert "aligning" not in {
        e["stage"] for e in stream.events
    }  # skipped stage, skipped in progress
    result = task(service, task_id)["result"]
    assert len(result["speakers"]) == 2
    assert {t["speaker"] for t in result["speaker_turns"]} == set(result["speakers"])


async def test_failure_inside_task_streams_error_event(service: Service, jfk_path: Path) -> None:
    # an aligner nobody serves fails the task at its alignment stage (a language tiny.en
    # cannot do is refused at the route now, before any task exists)
    task_id = submit(service.base_url, jfk_path, align_model="no-such-aligner", diarize="false")
    stream = await collect(service.ws_url, task_id, after_seq=0)
    assert_well_ordered(stream)
    error = stream.events[-1]
    assert error["type"] == "error" and error["error_code"] == "invalid_request"
    assert (
        error["user_message"]
        and error["technical_detail"]
        and "\n" not in error["technical_detail"]
    )
    progress = httpx.get(f"{service.base_url}/tasks/{task_id}/progress", timeout=10).json()
    assert progress["status"] == "failed" and progress["error_code"] == "invalid_request"
    # the service is still healthy afterwards
    assert httpx.get(f"{service.base_url}/health/ready", timeout=10).status_code == 200


async def test_late_and_resuming_subscribers(service: Service, jfk_path: Path) -> None:
    task_id = submit(service.base_url, jfk_path, diarize="false")
    first = await collect(service.ws_url, task_id, after_seq=0)
    late = await collect(service.ws_url, task_id)  # after the end: snapshot + terminal event
    assert late.snapshot["status"] == "completed" and [e["status"] for e in late.events] == [
        "completed"
    ]
    middle = first.events[len(first.events) // 2]["seq"]
    resumed = await collect(service.ws_url, task_id, after_seq=middle)
    assert [e["seq"] for e in resumed.events] == [
        e["seq"] for e in first.events if e["seq"] > middle
    ]


async def test_unknown_task_ws_close_code(service: Service) -> None:
    stream = await collect(service.ws_url, "does-not-exist")
    assert stream.close_code == 4404 and stream.frames == []


def _replica_pids(deployment: str) -> list[int]:
    title = f"ServeReplica:{APP}:{deployment}"
    return [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if any(title in c for c in (p.info["cmdline"] or []))
    ]


def _row(service: Service, task_id: str) -> TaskRow | None:
    return repository.get_task(Database(service.database_url), task_id=task_id)


def _finished(service: Service, task_id: str, timeout: float) -> TaskRow:
    """Poll the database (not the ingress, which may be down) until the task is terminal."""

    def probe() -> TaskRow | None:
        row = _row(service, task_id)
        return row if row is not None and row.status in ("completed", "failed") else None

    return wait_until(probe, timeout=timeout, what=f"task {task_id} to finish")


def _kill_mid_task(service: Service, deployment: str, task_id: str) -> None:
    """SIGKILL every replica process of ``deployment`` while ``task_id`` is processing."""
    wait_until(
        lambda: (r := _row(service, task_id)) is not None and r.status == "processing",
        timeout=60,
        what="processing",
    )
    pids = _replica_pids(deployment)
    assert pids, f"{deployment} replica process not found"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)


def test_task_survives_ingress_crash(service: Service, jfk_path: Path) -> None:
    task_id = submit(service.base_url, jfk_path)
    _kill_mid_task(service, "Ingress", task_id)
    row = _finished(service, task_id, timeout=240)
    assert row.status == "completed" and row.attempts == 1  # the runner never noticed
    wait_until(
        lambda: httpx.get(f"{service.base_url}/health/ready", timeout=5).status_code == 200,
        timeout=120,
        what="the restarted ingress to be ready",
    )


def test_runner_crash_reruns_task(service: Service, jfk_path: Path) -> None:
    task_id = submit(service.base_url, jfk_path)
    _kill_mid_task(service, "TaskRunner", task_id)
    row = _finished(service, task_id, timeout=300)
    assert row.status == "completed" and row.attempts == 2
    result = row.to_public().result
    assert result is not None and PHRASE in normalise(result.text)


def test_truncated_audio_ends_cleanly(service: Service, jfk_path: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.flac"
    truncated.write_bytes(jfk_path.read_bytes()[: 64 * 1024])
    r = httpx.post(
        f"{service.base_url}/speech-to-text",
        files={"file": ("t.flac", truncated.read_bytes())},
        timeout=60,
    )
    if r.status_code == 422:  # rejected at upload: also a clear answer
        assert r.json()["error_code"] == "invalid_audio"
        return
    row = _finished(service, r.json()["identifier"], timeout=120)
    assert row.status == "completed" or (row.error or {}).get("error_code") == "invalid_audio"
    assert httpx.get(f"{service.base_url}/health/ready", timeout=10).status_code == 200


def test_polling_survives_a_tracker_restart(service: Service, jfk_path: Path) -> None:
    import ray

    from deployments.progress import TRACKER_NAMESPACE, tracker_name

    task_id = submit(service.base_url, jfk_path, diarize="false")
    assert _finished(service, task_id, timeout=120).status == "completed"
    tracker = ray.get_actor(tracker_name(APP), namespace=TRACKER_NAMESPACE)
    ray.kill(tracker, no_restart=False)  # crash it; Ray restarts it with empty memory

    def polled() -> dict | None:  # type: ignore[type-arg]
        r = httpx.get(f"{service.base_url}/tasks/{task_id}/progress", timeout=10)
        return r.json() if r.status_code == 200 else None

    body = wait_until(polled, timeout=60, what="progress after the tracker restart")
    assert (body["status"], body["progress_percentage"], body["progress_stage"]) == (
        "completed",
        100.0,
        "complete",
    )
    assert ray.get(tracker.ping.remote(), timeout=30)  # the old handle reaches the new actor


def _long_clip(jfk_path: Path, path: Path, repeats: int = 6) -> Path:
    """~66 s of speech, long enough that a redeploy lands mid-task."""
    import numpy as np

    from deployments.audio import decode_audio

    return write_wav(np.tile(decode_audio(jfk_path), repeats), path)


def test_redeploy_of_the_whole_app_never_strands_a_task(
    service: Service, jfk_path: Path, tmp_path: Path
) -> None:
    from ray import serve

    from ingress.builder import build_app

    task_id = submit(service.base_url, _long_clip(jfk_path, tmp_path / "long.wav"))
    wait_until(
        lambda: (r := _row(service, task_id)) is not None and r.status == "processing",
        timeout=60,
        what="processing",
    )
    serve.delete(APP)  # graceful: the runner hands its task back to the queue
    row = _row(service, task_id)
    assert row is not None and row.status == "queued" and row.claimed_by is None  # handed back
    serve.run(build_app(service.app_args), name=APP, route_prefix="/")
    row = _finished(service, task_id, timeout=300)
    assert row.status == "completed" and row.attempts == 1  # a hand-back is no failed attempt
    wait_until(
        lambda: httpx.get(f"{service.base_url}/health/ready", timeout=5).status_code == 200,
        timeout=120,
        what="ready after the redeploy",
    )
