"""Security checks without Ray (issue 11, part 6): what the ASR deployment cannot do is
refused at the route, Ray internals stay out of task errors, credentials in a task's
``callback_url`` are never shown back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from common.config import AsrConfig, IngressConfig
from common.errors import ProcessingError, as_service_error
from common.redact import redact_url
from common.schemas import AsrOptions, TaskParams, TaskType
from ingress.app import create_app
from ingress.catalog import AsrCatalog
from ingress.services import IngressServices
from storage import repository
from tests.fakes import make_ingress_services

CATALOG = AsrCatalog.from_config(
    AsrConfig(model="asr/faster-whisper-tiny.en", models={"multi": "/models/large-v3"})
)


@pytest.fixture
def services(tmp_path: Path) -> IngressServices:
    services = make_ingress_services(tmp_path, config=IngressConfig())
    services.asr_catalog = CATALOG
    return services


@pytest.fixture
async def client(services: IngressServices) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(services))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


# ------------------------------------------------------------------ models and languages


def test_catalog_knows_english_only_models() -> None:
    assert CATALOG.english_only == {"asr/faster-whisper-tiny.en": True, "multi": False}


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"model": "large-v9"}, "not served"),
        ({"language": "de"}, "English-only"),
        ({"task": "translate"}, "cannot translate"),
        ({"model": "multi", "language": "xx"}, "not supported"),
    ],
)
async def test_what_the_model_cannot_do_is_a_422_at_the_route(
    client: httpx.AsyncClient,
    services: IngressServices,
    jfk_path: Path,
    options: dict[str, str],
    fragment: str,
) -> None:
    for route in ("/speech-to-text", "/service/transcribe"):
        r = await client.post(route, params=options, files={"file": ("a.flac", b"x" * 10)})
        assert r.status_code == 422, r.text
        assert r.json()["error_code"] == "invalid_request" and fragment in r.json()["user_message"]
    assert repository.list_tasks(services.db, limit=10)[1] == 0  # nothing queued
    assert not list(services.settings.upload_dir().glob("*"))  # checked before storing


@pytest.mark.parametrize(
    "options",
    [{}, {"language": "en"}, {"model": "multi", "language": "de"}, {"model": "whisper-1"}],
)
def test_what_the_model_can_do_passes(options: dict[str, str]) -> None:
    CATALOG.check(AsrOptions.model_validate(options))


async def test_url_route_checks_before_downloading(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/speech-to-text-url",
        params={"language": "fr"},
        data={"url": "http://198.51.100.1/never-fetched.flac"},
    )
    assert r.status_code == 422 and "English-only" in r.json()["user_message"]


# ------------------------------------------------------------------ Ray internals


def test_replica_crash_hides_ray_internals() -> None:
    from ray.exceptions import ActorDiedError, RayActorError

    for exc in (ActorDiedError(), RayActorError()):
        err = as_service_error(exc)
        assert isinstance(err, ProcessingError)
        assert err.technical_detail.endswith("the replica stopped unexpectedly")
        assert "replica stopped unexpectedly" in err.user_message


def test_ray_identifiers_never_reach_a_technical_detail() -> None:
    text = (
        "ray::AsrDeployment.transcribe() (pid=4242, ip=10.9.8.7, "
        "actor_id=0123456789abcdef0123, worker_id: fedcba9876543210)"
    )
    detail = ProcessingError("x", text).technical_detail
    for leaked in ("4242", "10.9.8.7", "0123456789abcdef0123", "fedcba9876543210"):
        assert leaked not in detail


# ------------------------------------------------------------------ callback_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "https://hooks.example.com/cb?token=SECRET1&task=1",
            "https://hooks.example.com/cb?token=***&task=1",
        ),
        ("https://u:SECRET2@hooks.example.com/cb", "https://***@hooks.example.com/cb"),
        (
            "https://hooks.example.com/cb?api_key=SECRET3&X-Amz-Signature=SECRET4",
            "https://hooks.example.com/cb?api_key=***&X-Amz-Signature=***",
        ),
        ("https://hooks.example.com/cb?id=7", "https://hooks.example.com/cb?id=7"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


async def test_task_routes_never_show_a_callback_token(
    client: httpx.AsyncClient, services: IngressServices
) -> None:
    url = "https://hooks.example.com/cb?access_token=MARKER-CB-SECRET&n=1"
    repository.create_task(
        services.db,
        task_id="cb1",
        task_type=TaskType.speech_to_text,
        params=TaskParams(callback_url=url),
        file_name=None,
        audio_key=None,
    )
    for path in ("/task/cb1", "/task/all"):
        r = await client.get(path)
        assert r.status_code == 200
        assert "MARKER-CB-SECRET" not in r.text and "access_token=***" in r.text
    row = repository.get_task(services.db, task_id="cb1")
    assert row is not None and row.to_public().params.callback_url == url  # still delivered
