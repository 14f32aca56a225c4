"""The Python client against the deployed graph: real Ray, real models, real HTTP and WS."""

from __future__ import annotations

from pathlib import Path

from whisperx_serve_client import APIError, Client, ProgressEvent, TaskStatus

from tests.conftest import normalise
from tests.integration.conftest import Service

PHRASE = "ask not what your country can do for you"
NOT_AUDIO = b"this is not audio at all" * 100


def test_transcribe_one_file(service: Service, jfk_path: Path) -> None:
    with Client(service.base_url, timeout=120) as client:
        transcript = client.transcribe(jfk_path, min_speakers=1, max_speakers=2)
    assert PHRASE in normalise(transcript.text)
    assert transcript.language == "en" and transcript.speakers == ["SPEAKER_00"]
    assert transcript.task_id is not None


def test_live_progress_then_result_formats(service: Service, jfk_path: Path) -> None:
    with Client(service.base_url, timeout=120) as client:
        handle = client.submit(jfk_path, diarize=False)
        events = list(handle.events())
        assert [e.seq for e in events] == list(range(events[0].seq, events[-1].seq + 1))
        assert events[-1].status is TaskStatus.completed
        stages = {e.stage for e in events if isinstance(e, ProgressEvent)}
        assert "transcribing" in stages and "diarizing" not in stages
        assert PHRASE in normalise(handle.wait(timeout=60).text)
        srt = handle.result("srt")
        assert "-->" in srt and PHRASE in normalise(srt)


def test_transcribe_many_with_one_bad_file(service: Service, jfk_path: Path) -> None:
    with Client(service.base_url, timeout=120) as client:
        batch = client.transcribe_many(
            [jfk_path, jfk_path, NOT_AUDIO], concurrency=2, progress=False, max_speakers=2
        )
    assert [item.ok for item in batch] == [True, True, False]
    assert len(batch.succeeded) == 2 and len(batch.failed) == 1
    error = batch.failed[0].error
    assert isinstance(error, APIError) and error.status_code == 422
    frame = batch.to_dataframe()
    assert "speaker" in frame.columns and frame["speaker"].notna().all()
    assert frame["task_id"].nunique() == 2
    assert all(PHRASE in normalise(t.text) for t in batch.transcripts)
