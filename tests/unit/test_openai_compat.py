"""OpenAI-compatible routes through ASGI: real SQLite, a fake tracker, a fake runner.

The fake runner finishes each task the ingress queues (as the TaskRunner would), so the
synchronous wait, the OpenAI response shapes and the OpenAI error shape are all exercised
with the official ``openai`` client, without Ray.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import openai
import pytest

from common.config import IngressConfig
from common.schemas import (
    Segment,
    TaskError,
    TaskParams,
    TaskStatus,
    Timings,
    Transcript,
    Word,
)
from deployments.progress_state import Event
from ingress.app import create_app
from ingress.services import IngressServices
from storage import lifecycle, repository
from storage.db import Database
from tests.fakes import FakeTracker, Notifier, make_ingress_services

TRANSCRIPT = Transcript(
    language="en",
    segments=[
        Segment(
            start=0.0,
            end=2.0,
            text=" And so, my fellow Americans,",
            avg_logprob=-0.25,
            words=[
                Word(word="And", start=0.0, end=0.3),
                Word(word="so,", start=0.4, end=0.6),
                Word(word="my", start=0.7, end=0.9),
                Word(word="fellow"),  # unaligned: keeps to the previous word's end
                Word(word="Americans,", start=1.2, end=2.0),
            ],
        ),
        Segment(start=2.5, end=4.0, text=" ask not.", words=[Word(word="ask", start=2.5, end=3.0)]),
    ],
    word_timestamps="wav2vec2",
)


class FakeRunner(Notifier):
    """Claims every queued task when notified and completes (or fails) it."""

    def __init__(self, db: Database, tracker: FakeTracker) -> None:
        super().__init__(db, tracker)
        self._db, self.tracker = db, tracker
        self.outcome: Transcript | TaskError | None = TRANSCRIPT
        self.params: list[TaskParams] = []

    def notify(self) -> None:
        if self.outcome is not None:
            asyncio.get_running_loop().create_task(self._finish_all())

    async def _finish_all(self) -> None:
        await asyncio.sleep(0.05)  # the route is waiting by now (either order works)
        db, tracker = self._db, self.tracker
        outcome = self.outcome
        assert outcome is not None
        for row in lifecycle.claim(db, worker_id="fake", limit=10, lease_seconds=60):
            self.params.append(TaskParams.model_validate(row.params))
            state = tracker.state(row.id)
            assert state is not None
            if isinstance(outcome, Transcript):
                lifecycle.finish(
                    db,
                    status=TaskStatus.completed,
                    task_id=row.id,
                    result=outcome,
                    timings=Timings(),
                    seq=1,
                )
                state.finish(TaskStatus.completed)
            else:
                lifecycle.finish(db, status=TaskStatus.failed, task_id=row.id, error=outcome, seq=1)
                state.finish(TaskStatus.failed, outcome)
            tracker.changed.set()


class BrokenTracker(FakeTracker):
    async def events_after(
        self, task_id: str, after_seq: int, timeout_s: float
    ) -> list[Event] | None:
        raise ConnectionError("tracker actor died")


def make_services(tmp_path: Path, tracker_cls: type[FakeTracker] = FakeTracker) -> IngressServices:
    return make_ingress_services(
        tmp_path,
        db_name="oa.db",
        config=IngressConfig(max_upload_bytes=4 * 1024 * 1024, sync_timeout_seconds=10),
        tracker=tracker_cls,
        runner=FakeRunner,
    )


@pytest.fixture
def services(tmp_path: Path) -> IngressServices:
    return make_services(tmp_path)


def runner_of(services: IngressServices) -> FakeRunner:
    assert isinstance(services.runner, FakeRunner)
    return services.runner


@pytest.fixture
async def oai(services: IngressServices) -> AsyncIterator[openai.AsyncOpenAI]:
    transport = httpx2.ASGITransport(app=create_app(services))
    async with httpx2.AsyncClient(transport=transport, base_url="http://test") as http:
        yield openai.AsyncOpenAI(
            base_url="http://test/v1", api_key="unused", http_client=http, max_retries=0
        )


@pytest.fixture
async def client(services: IngressServices) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(services))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


async def test_json_text_and_task_params(
    oai: openai.AsyncOpenAI, services: IngressServices, jfk_path: Path
) -> None:
    result = await oai.audio.transcriptions.create(
        model="whisper-1", file=jfk_path.open("rb"), prompt="JFK", temperature=0.2
    )
    assert result.text == "And so, my fellow Americans, ask not."
    params = runner_of(services).params[0]
    assert params.diarize is False and params.align is False  # no words asked for
    assert params.asr.model is None and params.asr.task == "transcribe"
    assert params.asr.initial_prompt == "JFK" and params.asr.temperatures == [0.2]
    task = repository.list_tasks(services.db)[0][0].to_public()
    assert task.status is TaskStatus.completed and task.file_name == "jfk.flac"


async def test_verbose_json_with_words_and_segments(
    oai: openai.AsyncOpenAI, services: IngressServices, jfk_path: Path
) -> None:
    result = await oai.audio.transcriptions.create(
        model="tiny.en",
        file=jfk_path.open("rb"),
        language="en",
        response_format="verbose_json",
        timestamp_granularities=["word", "segment"],
    )
    assert result.language == "english"
    assert result.duration == pytest.approx(11.0, abs=0.1)  # the probed upload duration
    assert result.words is not None and result.segments is not None
    assert [w.word for w in result.words] == ["And", "so,", "my", "fellow", "Americans,", "ask"]
    fellow = result.words[3]
    assert fellow.start == fellow.end == 0.9
    assert [s.id for s in result.segments] == [0, 1]
    assert result.segments[0].avg_logprob == -0.25 and result.segments[0].seek == 0
    assert result.segments[1].seek == 250 and result.segments[1].compression_ratio > 0
    params = runner_of(services).params[0]
    assert params.align is True and params.asr.model == "tiny.en" and params.asr.language == "en"


async def test_verbose_json_defaults_to_segments_only(
    oai: openai.AsyncOpenAI, jfk_path: Path
) -> None:
    result = await oai.audio.transcriptions.create(
        model="whisper-1", file=jfk_path.open("rb"), response_format="verbose_json"
    )
    assert result.segments is not None and len(result.segments) == 2
    assert result.words is None


async def test_text_srt_vtt(oai: openai.AsyncOpenAI, jfk_path: Path) -> None:
    text = await oai.audio.transcriptions.create(
        model="whisper-1", file=jfk_path.open("rb"), response_format="text"
    )
    assert text == "And so, my fellow Americans, ask not.\n"
    srt = await oai.audio.transcriptions.create(
        model="whisper-1", file=jfk_path.open("rb"), response_format="srt"
    )
    assert srt.startswith("1\n00:00:00,000 --> 00:00:02,000\nAnd so, my fellow Americans,")
    vtt = await oai.audio.transcriptions.create(
        model="whisper-1", file=jfk_path.open("rb"), response_format="vtt"
    )
    assert vtt.startswith("WEBVTT\n\n00:00.000 --> 00:02.000\n")


async def test_translation_asks_for_translate_task(
    oai: openai.AsyncOpenAI, services: IngressServices, jfk_path: Path
) -> None:
    result = await oai.audio.translations.create(
        model="whisper-1", file=jfk_path.open("rb"), response_format="verbose_json"
    )
    assert result.language == "english" and result.text.startswith("And so")
    assert runner_of(services).params[0].asr.task == "translate"


async def test_failed_task_maps_its_error_code_to_status(
    oai: openai.AsyncOpenAI, services: IngressServices, jfk_path: Path
) -> None:
    runner_of(services).outcome = TaskError(
        error_code="invalid_request",
        user_message="The model cannot translate.",
        technical_detail="x",
    )
    with pytest.raises(openai.BadRequestError) as bad:
        await oai.audio.translations.create(model="whisper-1", file=jfk_path.open("rb"))
    assert bad.value.status_code == 400 and bad.value.code == "invalid_request"
    assert "cannot translate" in bad.value.message
    runner_of(services).outcome = TaskError(error_code="model_unavailable", user_message="down")
    with pytest.raises(openai.InternalServerError) as down:
        await oai.audio.transcriptions.create(model="whisper-1", file=jfk_path.open("rb"))
    assert down.value.status_code == 503
    assert down.value.response.headers["x-should-retry"] == "false"  # the task already ran


async def test_validation_errors_come_back_in_openai_shape(
    client: httpx.AsyncClient, services: IngressServices, jfk_path: Path
) -> None:
    audio = {"file": ("jfk.flac", jfk_path.read_bytes())}
    cases = [
        ({"response_format": "docx"}, audio, "response_format"),
        ({"temperature": "7"}, audio, "temperature"),
        ({"language": "not a language!"}, audio, "language"),  # documented: a pattern
        ({"response_format": "json", "timestamp_granularities[]": "word"}, audio, None),
        ({"model": "whisper-1"}, None, "file"),
    ]
    for data, files, param in cases:
        r = await client.post("/v1/audio/transcriptions", data=data, files=files)
        assert r.status_code == 400, (data, r.text)
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["type"] == "invalid_request_error" and error["message"]
        assert error["code"] == "invalid_request" and error["param"] == param
    empty = await client.post("/v1/audio/transcriptions", files={"file": ("e.wav", b"")})
    assert empty.status_code == 400 and empty.json()["error"]["code"] == "empty_upload"
    assert repository.list_tasks(services.db)[1] == 0  # nothing was queued


async def test_validation_error_raises_bad_request_in_client(
    oai: openai.AsyncOpenAI, jfk_path: Path
) -> None:
    bogus: Any = "bogus"
    with pytest.raises(openai.BadRequestError) as bad:
        await oai.audio.transcriptions.create(
            model="whisper-1", file=jfk_path.open("rb"), response_format=bogus
        )
    assert bad.value.param == "response_format"


async def test_timeout_leaves_task_running_and_says_where(
    client: httpx.AsyncClient, services: IngressServices, jfk_path: Path
) -> None:
    runner_of(services).outcome = None  # nothing runs the task
    services.config = services.config.model_copy(update={"sync_timeout_seconds": 0.3})
    r = await client.post(
        "/v1/audio/transcriptions", files={"file": ("jfk.flac", jfk_path.read_bytes())}
    )
    assert r.status_code == 504 and r.headers["x-should-retry"] == "false"
    error = r.json()["error"]
    rows, _ = repository.list_tasks(services.db)
    assert error["code"] == "timeout" and f"/task/{rows[0].id}" in error["message"]
    assert rows[0].status == TaskStatus.queued.value


async def test_wait_falls_back_to_polling_when_tracker_fails(
    tmp_path: Path, jfk_path: Path
) -> None:
    services = make_services(tmp_path, BrokenTracker)
    transport = httpx.ASGITransport(app=create_app(services))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        r = await c.post(
            "/v1/audio/transcriptions", files={"file": ("jfk.flac", jfk_path.read_bytes())}
        )
    assert r.status_code == 200, r.text
    assert r.json() == {"text": "And so, my fellow Americans, ask not."}


async def test_openapi_documents_openai_routes(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    op = spec["paths"]["/v1/audio/transcriptions"]["post"]
    assert {"application/json", "text/plain", "application/x-subrip", "text/vtt"} <= set(
        op["responses"]["200"]["content"]
    )
    assert "422" not in op["responses"]  # validation errors are OpenAI-style 400s
    body = op["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"].rsplit("/", 1)[1]
    fields = spec["components"]["schemas"][body]["properties"]
    assert {"file", "model", "language", "prompt", "response_format", "temperature"} <= set(fields)
    assert "timestamp_granularities[]" in fields


async def test_the_sdks_api_key_is_the_bearer_key(
    services: IngressServices, jfk_path: Path
) -> None:
    """With a key created, the official client works by passing it as ``api_key``; a wrong
    or missing key is its ``AuthenticationError`` (401, OpenAI's error shape)."""
    from ingress.auth import create_key

    key = create_key(services.db, name="sdk")[0].key
    transport = httpx2.ASGITransport(app=create_app(services))
    async with httpx2.AsyncClient(transport=transport, base_url="http://test") as http:

        def sdk(api_key: str) -> openai.AsyncOpenAI:
            return openai.AsyncOpenAI(
                base_url="http://test/v1", api_key=api_key, http_client=http, max_retries=0
            )

        result = await sdk(key).audio.transcriptions.create(
            model="whisper-1", file=jfk_path.open("rb")
        )
        assert result.text == "And so, my fellow Americans, ask not."
        with pytest.raises(openai.AuthenticationError) as refused:
            await sdk("unused").audio.transcriptions.create(
                model="whisper-1", file=jfk_path.open("rb")
            )
        assert refused.value.status_code == 401 and refused.value.code == "unauthorized"
    row = repository.list_tasks(services.db)[0][0]
    assert row.owner_key_id is not None  # the SDK's task belongs to its key


async def test_a_keys_limit_is_the_sdks_rate_limit_error(tmp_path: Path, jfk_path: Path) -> None:
    from common.config import CallerLimits
    from ingress.auth import create_key

    services = make_ingress_services(
        tmp_path,
        db_name="oa.db",
        config=IngressConfig(limits=CallerLimits(max_submissions_per_minute=1)),
        tracker=FakeTracker,
        runner=FakeRunner,
    )
    key = create_key(services.db, name="sdk")[0].key
    transport = httpx2.ASGITransport(app=create_app(services))
    async with httpx2.AsyncClient(transport=transport, base_url="http://test") as http:
        sdk = openai.AsyncOpenAI(
            base_url="http://test/v1", api_key=key, http_client=http, max_retries=0
        )
        await sdk.audio.transcriptions.create(model="whisper-1", file=jfk_path.open("rb"))
        with pytest.raises(openai.RateLimitError) as limited:
            await sdk.audio.transcriptions.create(model="whisper-1", file=jfk_path.open("rb"))
    assert limited.value.code == "rate_limited"
    assert 50 <= int(limited.value.response.headers["retry-after"]) <= 60
