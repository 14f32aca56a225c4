"""The task-management and single-stage routes through ASGI (real SQLite, fake tracker)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from common.schemas import TaskParams, TaskStatus, TaskType
from ingress.services import IngressServices
from storage import lifecycle, repository
from tests.unit.test_ingress import client, services, submit

__all__ = ["client", "services"]  # fixtures shared with test_ingress

TRANSCRIPT = {"language": "en", "segments": [{"start": 0.0, "end": 2.5, "text": "Ask not."}]}


def _files(**named: tuple[str, bytes]) -> dict[str, tuple[str, bytes]]:
    return named


async def _queued(client: httpx.AsyncClient, jfk_path: Path, n: int) -> list[str]:
    ids = []
    for _ in range(n):
        r = await submit(client, jfk_path.read_bytes())
        assert r.status_code == 200, r.text
        ids.append(r.json()["identifier"])
    return ids


async def test_every_option_is_stored_with_the_task(
    client: httpx.AsyncClient, jfk_path: Path
) -> None:
    options: dict[str, Any] = {
        "model": "tiny.en",
        "language": "en",
        "compute_type": "int8",
        "batch_size": 2,
        "beam_size": 3,
        "best_of": 2,
        "patience": 1.5,
        "length_penalty": 0.9,
        "temperatures": [0.0, 0.4],
        "compression_ratio_threshold": 2.2,
        "log_prob_threshold": -0.8,
        "no_speech_threshold": 0.5,
        "condition_on_previous_text": True,
        "initial_prompt": "Kennedy",
        "hotwords": "Berlin",
        "suppress_numerals": True,
        "vad_onset": 0.4,
        "vad_offset": 0.3,
        "chunk_size": 20,
        "align_model": "custom",
        "interpolate_method": "linear",
        "return_char_alignments": True,
        "num_speakers": 2,
        "callback_url": "http://example.com/hook",
    }
    r = await submit(client, jfk_path.read_bytes(), **options)
    assert r.status_code == 200, r.text
    params = TaskParams.model_validate(
        (await client.get(f"/task/{r.json()['identifier']}")).json()["params"]
    )
    asr, alignment = params.asr, params.alignment
    assert (asr.model, asr.compute_type, asr.beam_size, asr.best_of) == ("tiny.en", "int8", 3, 2)
    assert asr.temperatures == [0.0, 0.4] and asr.hotwords == "Berlin" and asr.suppress_numerals
    assert (asr.vad_onset, asr.vad_offset, asr.chunk_size) == (0.4, 0.3, 20)
    assert asr.condition_on_previous_text is True and asr.log_prob_threshold == -0.8
    assert (alignment.align_model, alignment.interpolate_method) == ("custom", "linear")
    assert alignment.return_char_alignments and params.num_speakers == 2
    assert params.callback_url == "http://example.com/hook"


@pytest.mark.parametrize(
    "params",
    [
        {"compute_type": "int3"},
        {"temperatures": 1.5},
        {"interpolate_method": "cubic"},
        {"num_speakers": 5, "max_speakers": 2},
        {"no_speech_threshold": -1},
    ],
    ids=["compute_type", "temperature", "interpolate", "num>max", "no_speech"],
)
async def test_bad_options_are_422(
    client: httpx.AsyncClient, jfk_path: Path, params: dict[str, object]
) -> None:
    r = await submit(client, jfk_path.read_bytes(), **params)
    assert r.status_code == 422, r.text
    assert r.json()["error_code"] == "invalid_request"


async def test_list_filters_paging_and_sorting(
    client: httpx.AsyncClient, services: IngressServices, jfk_path: Path
) -> None:
    ids = await _queued(client, jfk_path, 3)
    r = await client.post("/service/diarize", files={"file": ("d.flac", jfk_path.read_bytes())})
    assert r.status_code == 200, r.text
    diarize_id = r.json()["identifier"]
    page = (await client.get("/task/all", params={"limit": 2})).json()
    assert page["total"] == 4 and [t["identifier"] for t in page["tasks"]] == [diarize_id, ids[2]]
    page = (await client.get("/task/all", params={"limit": 2, "offset": 2})).json()
    assert [t["identifier"] for t in page["tasks"]] == [ids[1], ids[0]]
    oldest = (await client.get("/task/all", params={"sort": "oldest", "limit": 1})).json()
    assert oldest["tasks"][0]["identifier"] == ids[0]
    only = (await client.get("/task/all", params={"task_type": "diarize"})).json()
    assert [t["identifier"] for t in only["tasks"]] == [diarize_id]
    assert only["tasks"][0]["task_type"] == "diarize"
    created = only["tasks"][0]["created_at"]
    later = (await client.get("/task/all", params={"created_after": created})).json()
    assert [t["identifier"] for t in later["tasks"]] == [diarize_id]
    none = (await client.get("/task/all", params={"created_before": "2000-01-01T00:00:00"})).json()
    assert none == {"tasks": [], "total": 0, "limit": 100, "offset": 0}
    assert (await client.get("/task/all", params={"status": "done"})).status_code == 422


async def test_queue_position_then_cancel(
    client: httpx.AsyncClient, services: IngressServices, jfk_path: Path
) -> None:
    ids = await _queued(client, jfk_path, 3)
    positions = [(await client.get(f"/tasks/{i}/progress")).json()["queue_position"] for i in ids]
    assert positions == [1, 2, 3]
    r = await client.post(f"/task/{ids[0]}/cancel")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "cancelled" and r.json()["queue_position"] is None
    assert (await client.get(f"/tasks/{ids[2]}/progress")).json()["queue_position"] == 2
    assert (await client.get(f"/task/{ids[0]}")).json()["status"] == "cancelled"
    assert (await client.post(f"/task/{ids[0]}/cancel")).json()["status"] == "cancelled"
    assert (await client.post("/task/nope/cancel")).status_code == 404
    assert services.runner.ended == [ids[0]]  # type: ignore[attr-defined]  # callback sent


async def test_cancel_running_task_is_requested(
    client: httpx.AsyncClient, services: IngressServices, jfk_path: Path
) -> None:
    (task_id,) = await _queued(client, jfk_path, 1)
    lifecycle.claim(services.db, worker_id="w", limit=1, lease_seconds=30)
    r = await client.post(f"/task/{task_id}/cancel")
    assert r.status_code == 200 and r.json()["status"] != "cancelled"  # the runner finishes it
    assert lifecycle.cancel_requested(services.db, task_id=task_id)
    assert services.runner.stopping == [task_id]  # type: ignore[attr-defined]  # asked the runner


async def test_delete_removes_row_and_audio(
    client: httpx.AsyncClient, services: IngressServices, jfk_path: Path
) -> None:
    keep, gone = await _queued(client, jfk_path, 2)
    r = await client.delete(f"/task/{gone}/delete")
    assert r.status_code == 200 and r.json()["identifier"] == gone
    assert (await client.get(f"/task/{gone}")).status_code == 404
    assert (await client.get(f"/tasks/{gone}/progress")).status_code == 404
    stored = [p.name for p in services.settings.upload_dir().iterdir()]
    assert stored == [f"{keep}.flac"]
    assert (await client.delete(f"/task/{gone}/delete")).status_code == 404


async def test_service_transcribe_and_diarize_queue_single_stage_tasks(
    client: httpx.AsyncClient, jfk_path: Path
) -> None:
    audio = {"file": ("a.flac", jfk_path.read_bytes())}
    r = await client.post("/service/transcribe", params={"beam_size": 2}, files=audio)
    task = (await client.get(f"/task/{r.json()['identifier']}")).json()
    assert task["task_type"] == "transcribe" and task["params"]["asr"]["beam_size"] == 2
    assert task["params"]["align"] is False and task["params"]["diarize"] is False
    r = await client.post("/service/diarize", params={"min_speakers": 1}, files=audio)
    task = (await client.get(f"/task/{r.json()['identifier']}")).json()
    assert task["task_type"] == "diarize" and task["params"]["min_speakers"] == 1


async def test_service_align_stores_the_given_transcript(
    client: httpx.AsyncClient, services: IngressServices, jfk_path: Path
) -> None:
    files = {
        "transcript": ("t.json", json.dumps(TRANSCRIPT).encode()),
        "file": ("a.flac", jfk_path.read_bytes()),
    }
    r = await client.post("/service/align", params={"interpolate_method": "linear"}, files=files)
    assert r.status_code == 200, r.text
    row = repository.get_task(services.db, task_id=r.json()["identifier"])
    assert row is not None and row.task_type == TaskType.align.value
    assert row.inputs is not None and row.inputs["transcript"]["segments"][0]["text"] == "Ask not."


async def test_service_combine_accepts_label_shaped_turns(
    client: httpx.AsyncClient, services: IngressServices
) -> None:
    turns = [{"start": 0.0, "end": 3.0, "label": "SPEAKER_00"}]
    files = {
        "aligned_transcript": ("t.json", json.dumps(TRANSCRIPT).encode()),
        "diarization_result": ("d.json", json.dumps(turns).encode()),
    }
    r = await client.post("/service/combine", files=files)
    assert r.status_code == 200, r.text
    row = repository.get_task(services.db, task_id=r.json()["identifier"])
    assert row is not None and row.audio_key is None and row.status == TaskStatus.queued.value
    assert row.inputs is not None and row.inputs["speaker_turns"][0]["speaker"] == "SPEAKER_00"


@pytest.mark.parametrize(
    ("transcript", "diarization", "fragment"),
    [
        (b"{not json", b"[]", "not valid JSON"),
        (json.dumps({"segments": [{"start": "x"}]}).encode(), b"[]", "expected shape"),
        (json.dumps({"segments": []}).encode(), b"[]", "no segments"),
        (json.dumps(TRANSCRIPT).encode(), b"[]", "no speaker turns"),
        (json.dumps(TRANSCRIPT).encode(), b'[{"start": 0}]', "expected shape"),
        (b"\xff\xfe\x00", b"[]", "not valid JSON"),
    ],
    ids=["syntax", "types", "empty", "no-turns", "turn-fields", "binary"],
)
async def test_malformed_json_inputs_are_422(
    client: httpx.AsyncClient,
    services: IngressServices,
    transcript: bytes,
    diarization: bytes,
    fragment: str,
) -> None:
    files = {
        "aligned_transcript": ("t.json", transcript),
        "diarization_result": ("d.json", diarization),
    }
    r = await client.post("/service/combine", files=files)
    assert r.status_code == 422, r.text
    assert r.json()["error_code"] == "invalid_request" and fragment in r.json()["user_message"]
    assert repository.list_tasks(services.db)[1] == 0


async def test_framework_rejections_use_the_error_shape(client: httpx.AsyncClient) -> None:
    headers = {"content-type": "multipart/form-data"}  # no boundary
    for route in ("/speech-to-text", "/v1/audio/transcriptions"):
        r = await client.post(route, headers=headers, content=b"x")
        assert r.status_code == 400, (route, r.text)
    assert (await client.post("/speech-to-text", headers=headers)).json()["error_code"] == (
        "malformed_request"
    )
    r = await client.get("/no/such/route")
    assert r.status_code == 404 and r.json()["error_code"] == "not_found"
    r = await client.put("/task/all")
    assert r.status_code == 405 and r.json()["error_code"] == "method_not_allowed"
