"""The web page's routes through ASGI: the page and its assets, the stored audio with range
requests, and speaker names kept with the task (real SQLite, fake tracker)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from common.config import AsrConfig
from common.errors import RangeNotSatisfiableError
from common.schemas import Segment, TaskParams, TaskStatus, TaskType, Timings, Transcript, Word
from ingress.app import create_app
from ingress.catalog import AsrCatalog
from ingress.media import parse_range
from ingress.services import IngressServices
from storage import lifecycle, repository
from tests.unit.test_ingress import client, services, submit

__all__ = ["client", "services"]  # fixtures shared with test_ingress


# ---------------------------------------------------------------- the page


async def test_page_and_assets_have_validators_and_cache_headers(
    client: httpx.AsyncClient,
) -> None:
    page = await client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script src="/static/app.js"' in page.text
    assert page.headers["cache-control"] == "no-cache" and page.headers["etag"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    again = await client.get("/", headers={"If-None-Match": page.headers["etag"]})
    assert again.status_code == 304
    for path, kind in (("/static/app.js", "javascript"), ("/static/style.css", "text/css")):
        r = await client.get(path)
        assert r.status_code == 200 and kind in r.headers["content-type"], path
        assert r.headers["cache-control"] == "no-cache" and r.headers["etag"]
    missing = await client.get("/static/nope.js")
    assert missing.status_code == 404 and missing.json()["error_code"] == "not_found"
    assert (await client.get("/static/../ingress/app.py")).status_code == 404


async def test_models_lists_the_names_a_request_may_choose(
    client: httpx.AsyncClient, services: IngressServices
) -> None:
    assert (await client.get("/models")).json() == {"asr_models": []}
    services.asr_catalog = AsrCatalog.from_config(
        AsrConfig(model="asr/faster-whisper-tiny.en", models={"large-v3": "x", "tiny": "y"})
    )
    assert (await client.get("/models")).json() == {"asr_models": ["large-v3", "tiny"]}


async def test_page_is_not_an_api_operation(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert "/" not in paths and not any(p.startswith("/static") for p in paths)
    assert "get" in paths["/task/{identifier}/audio"]
    assert "put" in paths["/task/{identifier}/speakers"]
    responses = paths["/task/{identifier}/audio"]["get"]["responses"]
    assert {"200", "206", "404", "416"} <= set(responses)
    assert "audio/flac" in responses["206"]["content"]


# ---------------------------------------------------------------- audio with ranges


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        ("bytes=0-99", 1000, (0, 99)),
        ("bytes=990-", 1000, (990, 999)),
        ("bytes=-10", 1000, (990, 999)),
        ("bytes=-5000", 1000, (0, 999)),
        ("bytes=500-9999", 1000, (500, 999)),
        ("bytes = 1-2", 1000, (1, 2)),
        ("bytes=5-1", 1000, None),  # malformed: ignored, the whole file
        ("bytes=0-1,5-6", 1000, None),  # several ranges: the whole file
        ("items=0-1", 1000, None),
        ("bytes=-", 1000, None),
        ("bytes=abc", 1000, None),
    ],
)
def test_parse_range(header: str, size: int, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize(
    ("header", "size"), [("bytes=1000-", 1000), ("bytes=-0", 1000), ("bytes=0-", 0)]
)
def test_unsatisfiable_ranges(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiableError):
        parse_range(header, size)


async def _upload(client: httpx.AsyncClient, jfk_path: Path) -> str:
    r = await submit(client, jfk_path.read_bytes(), name="jfk.flac")
    assert r.status_code == 200, r.text
    return str(r.json()["identifier"])


async def test_audio_whole_file_and_ranges(client: httpx.AsyncClient, jfk_path: Path) -> None:
    data = jfk_path.read_bytes()
    size = len(data)
    task_id = await _upload(client, jfk_path)
    url = f"/task/{task_id}/audio"

    whole = await client.get(url)
    assert whole.status_code == 200 and whole.content == data
    assert whole.headers["content-type"] == "audio/flac"
    assert whole.headers["accept-ranges"] == "bytes"
    assert int(whole.headers["content-length"]) == size

    part = await client.get(url, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == data[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{size}"
    assert part.headers["content-length"] == "100"

    tail = await client.get(url, headers={"Range": "bytes=-16"})
    assert tail.status_code == 206 and tail.content == data[-16:]
    assert tail.headers["content-range"] == f"bytes {size - 16}-{size - 1}/{size}"

    rest = await client.get(url, headers={"Range": f"bytes={size - 5}-"})
    assert rest.status_code == 206 and rest.content == data[-5:]

    outside = await client.get(url, headers={"Range": f"bytes={size}-"})
    assert outside.status_code == 416 and outside.headers["content-range"] == f"bytes */{size}"
    assert outside.json()["error_code"] == "range_not_satisfiable"

    for ignored in ("bytes=0-1,4-5", "bytes=9-3", "lines=1-2"):
        r = await client.get(url, headers={"Range": ignored})
        assert r.status_code == 200 and r.content == data, ignored

    etag = whole.headers["etag"]
    same = await client.get(url, headers={"Range": "bytes=0-9", "If-Range": etag})
    assert same.status_code == 206 and same.content == data[:10]
    changed = await client.get(url, headers={"Range": "bytes=0-9", "If-Range": '"other"'})
    assert changed.status_code == 200 and changed.content == data


async def test_audio_404s(
    client: httpx.AsyncClient, services: IngressServices, jfk_path: Path
) -> None:
    unknown = await client.get("/task/nope/audio")
    assert unknown.status_code == 404 and unknown.json()["error_code"] == "task_not_found"

    repository.create_task(
        services.db,
        task_id="no-audio",
        task_type=TaskType.combine,
        params=TaskParams(),
        file_name=None,
        audio_key=None,
    )
    none = await client.get("/task/no-audio/audio")
    assert none.status_code == 404 and none.json()["error_code"] == "audio_not_found"

    # a key that is a path (not a file name in the store) is never served
    repository.create_task(
        services.db,
        task_id="outside",
        task_type=TaskType.speech_to_text,
        params=TaskParams(),
        file_name="x.flac",
        audio_key=str(jfk_path),
    )
    outside = await client.get("/task/outside/audio")
    assert outside.status_code == 404 and outside.json()["error_code"] == "audio_not_found"

    task_id = await _upload(client, jfk_path)
    assert (await client.get(f"/task/{task_id}/audio")).status_code == 200
    assert (await client.delete(f"/task/{task_id}/delete")).status_code == 200
    gone = await client.get(f"/task/{task_id}/audio")
    assert gone.status_code == 404 and gone.json()["error_code"] == "task_not_found"


# ---------------------------------------------------------------- speaker names


def _two_speakers() -> Transcript:
    def words(text: str, start: float, speaker: str) -> list[Word]:
        return [
            Word(word=w, start=start + i * 0.5, end=start + i * 0.5 + 0.4, speaker=speaker)
            for i, w in enumerate(text.split())
        ]

    return Transcript(
        language="en",
        segments=[
            Segment(
                start=0.0,
                end=1.0,
                text="Hello there.",
                speaker="SPEAKER_00",
                words=words("Hello there.", 0.0, "SPEAKER_00"),
            ),
            Segment(
                start=1.5,
                end=2.5,
                text="Hi back.",
                speaker="SPEAKER_01",
                words=words("Hi back.", 1.5, "SPEAKER_01"),
            ),
        ],
        word_timestamps="whisper",
        speakers=["SPEAKER_00", "SPEAKER_01"],
    )


def _completed(services: IngressServices, task_id: str = "done") -> str:
    repository.create_task(
        services.db,
        task_id=task_id,
        task_type=TaskType.speech_to_text,
        params=TaskParams(),
        file_name="talk.wav",
        audio_key=None,
    )
    assert lifecycle.finish(
        services.db,
        status=TaskStatus.completed,
        task_id=task_id,
        result=_two_speakers(),
        timings=Timings(),
        seq=5,
    )
    return task_id


async def test_speaker_names_are_kept_and_shown_in_downloads(
    client: httpx.AsyncClient, services: IngressServices
) -> None:
    task_id = _completed(services)
    r = await client.put(
        f"/task/{task_id}/speakers", json={"names": {"SPEAKER_00": "  Alice ", "SPEAKER_01": "Bob"}}
    )
    assert r.status_code == 200, r.text
    assert r.json() == {
        "identifier": task_id,
        "names": {"SPEAKER_00": "Alice", "SPEAKER_01": "Bob"},
    }

    task = (await client.get(f"/task/{task_id}")).json()
    assert task["speaker_names"] == {"SPEAKER_00": "Alice", "SPEAKER_01": "Bob"}
    assert task["result"]["speakers"] == ["SPEAKER_00", "SPEAKER_01"]  # labels kept

    srt = (await client.get(f"/task/{task_id}/result", params={"format": "srt"})).text
    vtt = (await client.get(f"/task/{task_id}/result", params={"format": "vtt"})).text
    txt = (await client.get(f"/task/{task_id}/result", params={"format": "txt"})).text
    for body in (srt, vtt, txt):
        assert "[Alice]: Hello there." in body and "[Bob]: Hi back." in body
        assert "SPEAKER_0" not in body
    as_json = (await client.get(f"/task/{task_id}/result", params={"format": "json"})).json()
    assert as_json["speakers"] == ["Alice", "Bob"]
    assert {w["speaker"] for w in as_json["segments"][1]["words"]} == {"Bob"}

    # a new mapping replaces the old; an empty name shows the label again
    r = await client.put(
        f"/task/{task_id}/speakers", json={"names": {"SPEAKER_00": "", "SPEAKER_01": "Carol"}}
    )
    assert r.status_code == 200 and r.json()["names"] == {"SPEAKER_01": "Carol"}
    srt = (await client.get(f"/task/{task_id}/result", params={"format": "srt"})).text
    assert "[SPEAKER_00]: Hello there." in srt and "[Carol]: Hi back." in srt
    r = await client.put(f"/task/{task_id}/speakers", json={"names": {}})
    assert (
        r.status_code == 200
        and (await client.get(f"/task/{task_id}")).json()["speaker_names"] == {}
    )


async def test_speaker_names_refused(
    client: httpx.AsyncClient, services: IngressServices, jfk_path: Path
) -> None:
    task_id = _completed(services)
    unknown = await client.put(f"/task/{task_id}/speakers", json={"names": {"SPEAKER_07": "X"}})
    assert unknown.status_code == 422 and "SPEAKER_07" in unknown.json()["user_message"]
    for bad in (
        {"names": {"SPEAKER_00": "two\nlines"}},
        {"names": {"SPEAKER_00": "x" * 101}},
        {"names": ["SPEAKER_00"]},
        {"other": {}},
    ):
        r = await client.put(f"/task/{task_id}/speakers", json=bad)
        assert r.status_code == 422 and r.json()["error_code"] == "invalid_request", bad
    assert (await client.get(f"/task/{task_id}")).json()["speaker_names"] == {}

    missing = await client.put("/task/nope/speakers", json={"names": {}})
    assert missing.status_code == 404 and missing.json()["error_code"] == "task_not_found"
    queued = await _upload(client, jfk_path)
    early = await client.put(f"/task/{queued}/speakers", json={"names": {"SPEAKER_00": "A"}})
    assert early.status_code == 409 and early.json()["error_code"] == "task_not_finished"


# ---------------------------------------------------------------- the browser's WebSocket


def test_websocket_answers_the_browser_subprotocol(services: IngressServices) -> None:
    """A browser offering ["whisperx-serve", "bearer.<key>"] drops a connection whose answer
    names none of them; clients offering nothing get no subprotocol."""
    _completed(services, "ws-done")
    with TestClient(create_app(services)) as tc:
        offered = ["whisperx-serve", "bearer.wxs_x"]
        with tc.websocket_connect("/ws/tasks/ws-done", subprotocols=offered) as ws:
            assert ws.accepted_subprotocol == "whisperx-serve"
            assert ws.receive_json()["type"] == "snapshot"
        with tc.websocket_connect("/ws/tasks/ws-done") as ws:
            assert ws.accepted_subprotocol is None
            assert ws.receive_json()["type"] == "snapshot"
