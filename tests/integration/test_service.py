"""The deployed graph on a real local Ray with the real bundle models, over HTTP and WS."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from storage import repository
from storage.db import Database
from storage.models import TaskRow
from tests.audio import sample_wav, tiled_wav
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


def _replica_pids(deployment: str, app: str = APP) -> list[int]:
    title = f"ServeReplica:{app}:{deployment}"
    return [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if any(title in c for c in (p.info["cmdline"] or []))
    ]


def _tracker_pid(app: str = APP) -> int | None:
    """The process of the app's one ProgressTracker replica (None while it is replaced)."""
    pids = _replica_pids("ProgressTracker", app)
    return pids[0] if len(pids) == 1 else None


def _answers(handle: Any) -> bool:
    try:
        return bool(handle.ping.remote().result(timeout_s=5))
    except Exception:  # the replica died, or its replacement is not up yet
        return False


def _tracker_answers(app: str = APP) -> bool:
    from ray import serve

    return _answers(serve.get_deployment_handle("ProgressTracker", app))


def _sigkill_tracker_and_wait_replaced(app: str = APP, pid: int | None = None) -> None:
    """SIGKILL the tracker replica's process (``pid``, if the caller looked it up ahead);
    return once Serve's replacement answers."""
    pid = pid or wait_until(lambda: _tracker_pid(app), timeout=60, what="the tracker replica")
    os.kill(pid, signal.SIGKILL)
    wait_until(
        lambda: (p := _tracker_pid(app)) is not None and p != pid and _tracker_answers(app),
        timeout=120,
        what="the replaced tracker",
    )


def _tracker_processes() -> list[str]:
    """Processes of this test's Ray that run a ProgressTracker (a replica of any app, or a
    tracker actor left behind), by their titles."""
    titles = []
    for proc in psutil.Process().children(recursive=True):  # the local Ray ray.init started
        with contextlib.suppress(psutil.Error):
            title = " ".join(proc.cmdline())
            if "ProgressTracker" in title:
                titles.append(title)
    return titles


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
    task_id = submit(service.base_url, jfk_path, diarize="false")
    assert _finished(service, task_id, timeout=120).status == "completed"
    from ray import serve

    handle = serve.get_deployment_handle("ProgressTracker", APP)
    assert handle.ping.remote().result(timeout_s=30)
    _sigkill_tracker_and_wait_replaced()  # Serve replaces it with empty memory

    def polled() -> dict | None:  # type: ignore[type-arg]
        r = httpx.get(f"{service.base_url}/tasks/{task_id}/progress", timeout=10)
        return r.json() if r.status_code == 200 else None

    body = wait_until(polled, timeout=60, what="progress after the tracker restart")
    assert (body["status"], body["progress_percentage"], body["progress_stage"]) == (
        "completed",
        100.0,
        "complete",
    )
    # a handle got before the kill reaches the new replica
    wait_until(lambda: _answers(handle), timeout=30, what="the old handle's answer")


def test_a_redeploy_with_new_settings_reaches_the_tracker_and_deleting_removes_it(
    service: Service, jfk_path: Path
) -> None:
    """The tracker is part of the app: a redeploy with a changed mirror interval runs a new
    replica with it (a detached actor kept its first arguments), and deleting the app
    leaves no tracker behind."""
    import copy

    from ray import serve

    from ingress.builder import build_app

    def effective() -> dict[str, object]:
        handle = serve.get_deployment_handle("ProgressTracker", APP)
        settings: dict[str, object] = handle.effective_settings.remote().result(timeout_s=30)
        return settings

    def ready() -> bool:
        return httpx.get(f"{service.base_url}/health/ready", timeout=5).status_code == 200

    before = effective()
    assert before["mirror_interval_s"] == 1.0 and before["redis"] is True
    assert service.database_url.split("?")[0].rsplit("@", 1)[-1] in str(before["database_url"])
    old_pid = _tracker_pid()
    changed = copy.deepcopy(service.app_args)
    changed.setdefault("runner", {})["db_mirror_interval_seconds"] = 0.25  # type: ignore[index]
    try:
        serve.run(build_app(changed), name=APP, route_prefix="/")
        after = effective()
        assert after["mirror_interval_s"] == 0.25, after
        assert _tracker_pid() != old_pid
        wait_until(ready, timeout=120, what="ready after the redeploy")
        task_id = submit(service.base_url, jfk_path, diarize="false")  # the new graph works
        assert _finished(service, task_id, timeout=120).status == "completed"

        assert _tracker_processes(), "the probe sees the tracker's process while it runs"
        serve.delete(APP)
        wait_until(lambda: not _tracker_processes(), timeout=60, what="no tracker process")
    finally:
        serve.run(build_app(service.app_args), name=APP, route_prefix="/")
        wait_until(ready, timeout=120, what="ready after restoring the app")
    assert effective()["mirror_interval_s"] == 1.0


def _long_clip(jfk_path: Path, path: Path, repeats: int = 6) -> Path:
    """~66 s of speech, long enough that a redeploy lands mid-task."""
    return tiled_wav(jfk_path, path, repeats)


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
