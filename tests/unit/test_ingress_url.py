"""``POST /speech-to-text-url`` through ASGI, fetching from real local HTTP servers.

The media server listens on 127.0.0.2 (allowlisted through Settings, as an operator
would); a second server on 127.0.0.1 stands for an internal service that must never be
reached.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler
from ipaddress import ip_network
from pathlib import Path

import httpx
import pytest

from common.config import IngressConfig
from ingress.app import create_app
from ingress.services import IngressServices
from storage import repository
from tests.fakes import make_ingress_services
from tests.local_http import LocalHTTPServer, Route, reply

MAX_DOWNLOAD = 2 * 1024 * 1024


@pytest.fixture
def services(tmp_path: Path) -> IngressServices:
    return make_ingress_services(
        tmp_path,
        config=IngressConfig(
            max_upload_bytes=4 * 1024 * 1024,
            max_download_bytes=MAX_DOWNLOAD,
            download_read_timeout_seconds=2,
            download_timeout_seconds=10,
        ),
        url_fetch_allow_networks=[ip_network("127.0.0.2/32")],
    )


@pytest.fixture
async def client(services: IngressServices) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(services))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


def _serving(body: bytes, *, content_length: bool = True) -> Route:
    def route(h: BaseHTTPRequestHandler) -> None:
        reply(h, 200, body, {"Content-Type": "audio/flac"}, content_length=content_length)

    return route


@pytest.fixture
def media(jfk_path: Path) -> Iterator[LocalHTTPServer]:
    with LocalHTTPServer("127.0.0.2") as server:
        server.routes["/media/jfk.flac"] = _serving(jfk_path.read_bytes())
        yield server


@pytest.fixture
def internal(jfk_path: Path) -> Iterator[LocalHTTPServer]:
    with LocalHTTPServer("127.0.0.1") as server:
        server.routes["/jfk.flac"] = _serving(jfk_path.read_bytes())
        yield server


async def submit_url(client: httpx.AsyncClient, url: str, **params: str | int) -> httpx.Response:
    return await client.post("/speech-to-text-url", params=params, data={"url": url})


def stored(services: IngressServices) -> list[Path]:
    upload_dir = services.settings.upload_dir()
    return sorted(upload_dir.iterdir()) if upload_dir.exists() else []


async def test_url_download_queues_task(
    client: httpx.AsyncClient, services: IngressServices, media: LocalHTTPServer
) -> None:
    r = await submit_url(
        client, media.url("/media/jfk.flac?sig=secret"), min_speakers=1, max_speakers=2
    )
    assert r.status_code == 200, r.text
    task_id = r.json()["identifier"]
    assert r.json()["status"] == "queued"
    assert services.runner.count == 1  # type: ignore[attr-defined]
    task = (await client.get(f"/task/{task_id}")).json()
    assert task["status"] == "queued" and task["file_name"] == "jfk.flac"
    assert task["params"]["max_speakers"] == 2
    assert task["audio_duration"] == pytest.approx(11.0, abs=0.1)
    assert [p.name for p in stored(services)] == [f"{task_id}.flac"]
    assert media.paths() == ["/media/jfk.flac"]


async def test_file_name_from_hostile_url_path_is_sanitised(
    client: httpx.AsyncClient, services: IngressServices, media: LocalHTTPServer, jfk_path: Path
) -> None:
    media.routes["/x/..%2F..%2Fetc%2Fpasswd.flac"] = _serving(jfk_path.read_bytes())
    r = await submit_url(client, media.url("/x/..%2F..%2Fetc%2Fpasswd.flac"))
    assert r.status_code == 200, r.text
    task = (await client.get(f"/task/{r.json()['identifier']}")).json()
    assert task["file_name"] == "passwd.flac"
    assert all(p.parent == services.settings.upload_dir() for p in stored(services))


@pytest.mark.parametrize(
    "target",
    [
        "INTERNAL",  # the 127.0.0.1 server, not allowlisted
        "http://localhost:{port}/jfk.flac",
        "http://[::1]:{port}/jfk.flac",
        "http://[::ffff:127.0.0.1]:{port}/jfk.flac",
        "http://10.0.0.1/a.flac",
        "http://192.168.0.10/a.flac",
        "http://100.64.0.1/a.flac",
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "ftp://127.0.0.2/a.flac",
        "file:///etc/passwd",
        "http://user:pass@127.0.0.2/a.flac",
    ],
)
async def test_refused_urls_are_422_and_never_fetched(
    client: httpx.AsyncClient,
    services: IngressServices,
    internal: LocalHTTPServer,
    target: str,
) -> None:
    url = internal.url("/jfk.flac") if target == "INTERNAL" else target.format(port=internal.port)
    r = await submit_url(client, url)
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error_code"] == "url_not_allowed" and body["user_message"]
    assert "pass" not in body["technical_detail"]
    assert internal.requests == [] and stored(services) == []
    assert services.runner.count == 0  # type: ignore[attr-defined]


async def test_redirect_to_internal_server_is_refused(
    client: httpx.AsyncClient, media: LocalHTTPServer, internal: LocalHTTPServer
) -> None:
    def redirect(h: BaseHTTPRequestHandler) -> None:
        reply(h, 302, headers={"Location": internal.url("/jfk.flac")})

    media.routes["/r"] = redirect
    r = await submit_url(client, media.url("/r"))
    assert r.status_code == 422 and r.json()["error_code"] == "url_not_allowed"
    assert internal.requests == []


@pytest.mark.parametrize(
    ("body", "code"),
    [(b"this is not audio at all" * 100, "invalid_audio"), (b"", "empty_upload")],
    ids=["non-audio", "empty"],
)
async def test_bad_content_is_422_and_not_stored(
    client: httpx.AsyncClient,
    services: IngressServices,
    media: LocalHTTPServer,
    body: bytes,
    code: str,
) -> None:
    media.routes["/bad.flac"] = _serving(body)
    r = await submit_url(client, media.url("/bad.flac"))
    assert r.status_code == 422, r.text
    assert r.json()["error_code"] == code
    assert stored(services) == [] and services.runner.count == 0  # type: ignore[attr-defined]


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "streamed"])
async def test_too_big_is_413(
    client: httpx.AsyncClient, services: IngressServices, media: LocalHTTPServer, declared: bool
) -> None:
    media.routes["/big.flac"] = _serving(b"\0" * (MAX_DOWNLOAD + 1), content_length=declared)
    r = await submit_url(client, media.url("/big.flac"))
    assert r.status_code == 413, r.text
    assert r.json()["error_code"] == "upload_too_large"
    assert stored(services) == []


async def test_unavailable_file_is_download_failed(
    client: httpx.AsyncClient, media: LocalHTTPServer
) -> None:
    r = await submit_url(client, media.url("/missing.flac?token=abc"))
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error_code"] == "download_failed" and "404" in body["technical_detail"]
    assert "abc" not in body["technical_detail"]


async def test_missing_url_is_invalid_request(client: httpx.AsyncClient) -> None:
    r = await client.post("/speech-to-text-url", data={})
    assert r.status_code == 422 and r.json()["error_code"] == "invalid_request"


@pytest.mark.parametrize(
    "callback", ["ftp://example.com/hook", "javascript:alert(1)", "http://u:p@example.com/"]
)
async def test_bad_callback_url_is_refused_at_submission(
    client: httpx.AsyncClient,
    services: IngressServices,
    media: LocalHTTPServer,
    jfk_path: Path,
    callback: str,
) -> None:
    r = await submit_url(client, media.url("/media/jfk.flac"), callback_url=callback)
    assert r.status_code == 422 and r.json()["error_code"] == "url_not_allowed", r.text
    r = await client.post(
        "/speech-to-text",
        params={"callback_url": callback},
        files={"file": ("a.flac", jfk_path.read_bytes())},
    )
    assert r.status_code == 422 and r.json()["error_code"] == "url_not_allowed", r.text
    assert media.requests == [] and services.runner.count == 0  # type: ignore[attr-defined]


async def test_good_callback_url_is_kept(
    client: httpx.AsyncClient, services: IngressServices, media: LocalHTTPServer
) -> None:
    hook = "https://hooks.example.com/whisperx?key=1&n=2"
    r = await submit_url(client, media.url("/media/jfk.flac"), callback_url=hook)
    assert r.status_code == 200, r.text
    task = (await client.get(f"/task/{r.json()['identifier']}")).json()
    assert task["params"]["callback_url"] == "https://hooks.example.com/whisperx?key=***&n=2"
    row = repository.get_task(services.db, task_id=r.json()["identifier"])
    assert row is not None and row.to_public().params.callback_url == hook  # delivered as given


async def test_openapi_documents_the_route(client: httpx.AsyncClient) -> None:
    op = (await client.get("/openapi.json")).json()["paths"]["/speech-to-text-url"]["post"]
    assert {"413", "422"} <= set(op["responses"])
    form = op["requestBody"]["content"]["application/x-www-form-urlencoded"]["schema"]
    assert "url" in str(form)
    names = {p["name"] for p in op["parameters"]}
    assert {"language", "min_speakers", "callback_url", "diarize"} <= names
