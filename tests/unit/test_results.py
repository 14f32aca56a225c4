"""``GET /task/{id}/result`` through ASGI, with real SQLite storage."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from common.schemas import (
    Segment,
    TaskError,
    TaskParams,
    TaskStatus,
    TaskType,
    Timings,
    Transcript,
    Word,
)
from ingress.app import create_app
from ingress.formats import ResultFormat
from ingress.services import IngressServices
from storage import lifecycle, repository
from tests.fakes import make_ingress_services

TRANSCRIPT = Transcript(
    language="en",
    segments=[
        Segment(
            start=0.0,
            end=1.0,
            text=" Hello.",
            speaker="SPEAKER_00",
            words=[Word(word="Hello.", start=0.0, end=1.0, speaker="SPEAKER_00")],
        ),
        Segment(
            start=1.2,
            end=2.0,
            text=" Hi!",
            speaker="SPEAKER_01",
            words=[Word(word="Hi!", start=1.2, end=2.0, speaker="SPEAKER_01")],
        ),
    ],
    speakers=["SPEAKER_00", "SPEAKER_01"],
)


@pytest.fixture
def services(tmp_path: Path) -> IngressServices:
    return make_ingress_services(tmp_path, db_name="results.db")


@pytest.fixture
async def client(services: IngressServices) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(services))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


def add_task(
    services: IngressServices,
    task_id: str,
    *,
    file_name: str | None = "talk.final.flac",
    result: Transcript | None = TRANSCRIPT,
) -> None:
    repository.create_task(
        services.db,
        task_id=task_id,
        task_type=TaskType.speech_to_text,
        params=TaskParams(),
        file_name=file_name,
        audio_key=None,
    )
    if result is not None:
        assert lifecycle.finish(
            services.db,
            status=TaskStatus.completed,
            task_id=task_id,
            result=result,
            timings=Timings(),
            seq=5,
        )


async def test_unknown_task_is_404(client: httpx.AsyncClient) -> None:
    r = await client.get("/task/nope/result")
    assert r.status_code == 404
    assert r.json()["error_code"] == "task_not_found"


async def test_unfinished_task_is_409(client: httpx.AsyncClient, services: IngressServices) -> None:
    add_task(services, "queued1", result=None)
    r = await client.get("/task/queued1/result", params={"format": "srt"})
    assert r.status_code == 409
    body = r.json()
    assert body["error_code"] == "task_not_finished" and "queued" in body["user_message"]


async def test_failed_task_is_409_naming_its_status(
    client: httpx.AsyncClient, services: IngressServices
) -> None:
    add_task(services, "failed1", result=None)
    lifecycle.finish(
        services.db,
        status=TaskStatus.failed,
        task_id="failed1",
        error=TaskError(error_code="invalid_audio", user_message="bad"),
    )
    r = await client.get("/task/failed1/result")
    assert r.status_code == 409 and "failed" in r.json()["user_message"]


@pytest.mark.parametrize(
    ("fmt", "media", "marker"),
    [
        ("srt", "application/x-subrip", "00:00:01,200 --> 00:00:02,000\n[SPEAKER_01]: Hi!"),
        ("vtt", "text/vtt", "WEBVTT\n\n00:00.000 --> 00:01.000\n[SPEAKER_00]: Hello."),
        ("txt", "text/plain", "[SPEAKER_00]: Hello.\n[SPEAKER_01]: Hi!\n"),
        (
            "tsv",
            "text/tab-separated-values",
            "start\tend\ttext\tspeaker\n0\t1000\tHello.\tSPEAKER_00\n1200\t2000\tHi!\tSPEAKER_01",
        ),
    ],
)
async def test_each_text_format_downloads_as_attachment(
    client: httpx.AsyncClient, services: IngressServices, fmt: str, media: str, marker: str
) -> None:
    add_task(services, "done1")
    r = await client.get("/task/done1/result", params={"format": fmt})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == f"{media}; charset=utf-8"
    assert r.headers["content-disposition"] == f'attachment; filename="talk.final.{fmt}"'
    assert marker in r.text


async def test_json_is_the_default_and_is_the_transcript(
    client: httpx.AsyncClient, services: IngressServices
) -> None:
    add_task(services, "done2", file_name=None)
    r = await client.get("/task/done2/result")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json; charset=utf-8"
    assert r.headers["content-disposition"] == 'attachment; filename="done2.json"'
    assert Transcript.model_validate(r.json()) == TRANSCRIPT


async def test_hostile_file_name_is_sanitised_in_header(
    client: httpx.AsyncClient, services: IngressServices
) -> None:
    add_task(services, "done3", file_name='a"b\r\nSet-Cookie: x=1;/..\\évil.mp3')
    r = await client.get("/task/done3/result", params={"format": "txt"})
    disposition = r.headers["content-disposition"]
    stem = disposition.removeprefix('attachment; filename="').removesuffix('.txt"')
    assert stem and all(c.isascii() and (c.isalnum() or c in "._-") for c in stem)


async def test_subtitle_options_apply_and_are_validated(
    client: httpx.AsyncClient, services: IngressServices
) -> None:
    add_task(services, "done4")
    r = await client.get("/task/done4/result", params={"format": "vtt", "highlight_words": "true"})
    assert "<u>Hello.</u>" in r.text
    bad = await client.get("/task/done4/result", params={"format": "srt", "max_line_width": 0})
    assert bad.status_code == 422 and bad.json()["error_code"] == "invalid_request"
    unknown = await client.get("/task/done4/result", params={"format": "docx"})
    assert unknown.status_code == 422


async def test_openapi_documents_every_result_media_type(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    op = spec["paths"]["/task/{identifier}/result"]["get"]
    content = op["responses"]["200"]["content"]
    assert set(content) == {f.media_type.split(";")[0] for f in ResultFormat}
    assert {"404", "409", "422"} <= set(op["responses"])


async def test_openapi_documents_repetition_and_warnings(client: httpx.AsyncClient) -> None:
    schemas = (await client.get("/openapi.json")).json()["components"]["schemas"]
    repetition = schemas["Segment"]["properties"]["repetition"]
    assert {"redecoded", "cut", "kept"} <= set(repetition["anyOf"][0]["enum"])
    assert "repeated itself" in repetition["description"]
    warning = schemas["TranscriptWarning"]
    assert {"code", "message", "start", "end"} <= set(warning["properties"])
    assert "no_aligner" in warning["properties"]["code"]["enum"]
    assert schemas["Transcript"]["properties"]["warnings"]["items"]["$ref"].endswith(
        "/TranscriptWarning"
    )
