"""Options, single-stage routes, cancellation and deletion on the real deployed graph."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import normalise
from tests.integration.conftest import Service
from tests.integration.test_service import PHRASE, _long_clip, sample_wav, task
from tests.streams import assert_well_ordered, collect, submit
from tests.waiting import wait_until


def post_files(service: Service, route: str, files: dict[str, Any], **params: Any) -> str:
    r = httpx.post(f"{service.base_url}{route}", params=params, files=files, timeout=60)
    assert r.status_code == 200, r.text
    return str(r.json()["identifier"])


async def finished(service: Service, task_id: str) -> dict[str, Any]:
    stream = await collect(service.ws_url, task_id, after_seq=0)
    assert_well_ordered(stream)
    return task(service, task_id)


async def test_decoding_options_reach_whisper(service: Service, jfk_path: Path) -> None:
    task_id = submit(
        service.base_url,
        jfk_path,
        diarize="false",
        beam_size=1,
        best_of=1,
        temperatures=[0.0],
        initial_prompt="President Kennedy's inaugural address.",
        suppress_numerals="true",
        no_speech_threshold=0.5,
        vad_onset=0.45,
        chunk_size=15,
        interpolate_method="linear",
    )
    body = await finished(service, task_id)
    assert body["status"] == "completed", body["error"]
    assert PHRASE in normalise(" ".join(s["text"] for s in body["result"]["segments"]))


async def test_unknown_model_is_refused_at_the_route(service: Service, jfk_path: Path) -> None:
    r = httpx.post(
        f"{service.base_url}/speech-to-text",
        params={"model": "large-v9"},
        files={"file": (jfk_path.name, jfk_path.read_bytes())},
        timeout=60,
    )
    assert r.status_code == 422 and r.json()["error_code"] == "invalid_request"
    assert "large-v9" in r.json()["user_message"]


async def test_service_routes_chain_transcribe_align_diarize_combine(
    service: Service, jfk_path: Path
) -> None:
    audio = jfk_path.read_bytes()
    transcribed = await finished(
        service, post_files(service, "/service/transcribe", {"file": ("jfk.flac", audio)})
    )
    assert transcribed["task_type"] == "transcribe" and transcribed["status"] == "completed"
    transcript = transcribed["result"]
    assert transcript["word_timestamps"] is None and transcript["speaker_turns"] is None
    assert PHRASE in normalise(" ".join(s["text"] for s in transcript["segments"]))

    aligned = await finished(
        service,
        post_files(
            service,
            "/service/align",
            {
                "transcript": ("t.json", json.dumps(transcript).encode()),
                "file": ("jfk.flac", audio),
            },
            return_char_alignments="true",
        ),
    )
    assert aligned["status"] == "completed", aligned["error"]
    assert aligned["result"]["word_timestamps"] == "wav2vec2"  # the random tiny aligner: path
    assert all(s["chars"] is not None for s in aligned["result"]["segments"])

    sample = sample_wav().read_bytes()
    diarized = await finished(
        service,
        post_files(service, "/service/diarize", {"file": ("sample.wav", sample)}, max_speakers=3),
    )
    assert diarized["status"] == "completed" and diarized["result"]["segments"] == []
    assert len(diarized["result"]["speakers"]) == 2

    # combine: words with known times and a two-speaker split at 5 s
    words = [
        {"word": w, "start": start, "end": start + 0.4}
        for w, start in [("ask", 1.0), ("not", 2.0), ("what", 6.0), ("your", 7.0)]
    ]
    given = {
        "language": "en",
        "segments": [{"start": 1.0, "end": 7.4, "text": "ask not what your", "words": words}],
    }
    turns = [
        {"start": 0.0, "end": 5.0, "speaker": "A"},
        {"start": 5.0, "end": 11.5, "speaker": "B"},
    ]
    combined = await finished(
        service,
        post_files(
            service,
            "/service/combine",
            {
                "aligned_transcript": ("t.json", json.dumps(given).encode()),
                "diarization_result": ("d.json", json.dumps(turns).encode()),
            },
        ),
    )
    assert combined["status"] == "completed" and combined["audio_duration"] is None
    assert combined["result"]["speakers"] == ["A", "B"]
    labelled = [w.get("speaker") for s in combined["result"]["segments"] for w in s["words"]]
    assert labelled == ["A", "A", "B", "B"]


async def test_cancel_running_task_stops_it_and_frees_the_model(
    service: Service, jfk_path: Path, tmp_path: Path
) -> None:
    long_id = submit(service.base_url, _long_clip(jfk_path, tmp_path / "long.wav", repeats=12))
    watcher = asyncio.create_task(collect(service.ws_url, long_id, after_seq=0))

    def transcribing() -> bool:
        r = httpx.get(f"{service.base_url}/tasks/{long_id}/progress", timeout=10).json()
        return bool(r["status"] == "processing" and r["progress_percentage"] > 0)

    wait_until(transcribing, timeout=120, what="long task under way")
    r = httpx.post(f"{service.base_url}/task/{long_id}/cancel", timeout=10)
    assert r.status_code == 200, r.text
    stream = await watcher
    assert stream.events[-1]["status"] == "cancelled" and stream.close_code == 1000
    assert_well_ordered(stream)
    body = task(service, long_id)
    assert body["status"] == "cancelled" and body["result"] is None

    # the ASR replica stopped at its next progress step: a new task gets it at once
    quick = submit(service.base_url, jfk_path, align="false", diarize="false")
    done = await finished(service, quick)
    assert done["status"] == "completed"
    assert done["timings"]["transcribing"] < 30


def _stored_audio(service: Service, task_id: str) -> list[str]:
    """The task's files in the blob store: the database's ``blobs`` table on PostgreSQL,
    the upload directory on SQLite (tests/integration/conftest.py)."""
    if service.database_url.startswith("postgresql"):
        import sqlalchemy as sa

        engine = sa.create_engine(service.database_url)
        with engine.connect() as conn:
            keys = conn.execute(
                sa.text("SELECT key FROM blobs WHERE key LIKE :k"), {"k": f"{task_id}%"}
            ).scalars()
            found = list(keys)
        engine.dispose()
        return found
    return [p.name for p in (service.data_dir / "uploads").glob(f"{task_id}*")]


async def test_cancel_queued_and_delete(service: Service, jfk_path: Path) -> None:
    # keep the runner busy (2 slots) so the third task stays queued
    busy = [submit(service.base_url, jfk_path) for _ in range(2)]
    queued = submit(service.base_url, jfk_path)
    progress = httpx.get(f"{service.base_url}/tasks/{queued}/progress", timeout=10).json()
    if progress["status"] == "queued":
        assert progress["queue_position"] >= 1
    r = httpx.post(f"{service.base_url}/task/{queued}/cancel", timeout=10).json()
    assert r["status"] in ("cancelled", "processing")
    stream = await collect(service.ws_url, queued, after_seq=0)
    assert stream.events[-1]["status"] == "cancelled"

    for task_id in busy:
        await collect(service.ws_url, task_id, after_seq=0)
    assert httpx.get(f"{service.base_url}/task/{busy[0]}/audio", timeout=10).status_code == 200
    stored = _stored_audio(service, busy[0])
    assert len(stored) == 1
    r = httpx.delete(f"{service.base_url}/task/{busy[0]}/delete", timeout=10)
    assert r.status_code == 200, r.text
    assert _stored_audio(service, busy[0]) == []
    assert httpx.get(f"{service.base_url}/task/{busy[0]}", timeout=10).status_code == 404
    page = httpx.get(
        f"{service.base_url}/task/all", params={"status": "cancelled"}, timeout=10
    ).json()
    assert queued in {t["identifier"] for t in page["tasks"]}
