"""API keys, tenancy, limits and CORS through the ASGI app (real SQLite, fake tracker)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from common.config import CallerLimits, IngressConfig
from common.schemas import TaskParams, TaskType
from ingress import auth
from ingress.app import create_app
from ingress.auth import create_key
from ingress.services import IngressServices
from storage import api_keys, lifecycle, repository
from storage.models import ApiKeyRow
from storage.quota import Quota, QuotaExceeded
from tests.fakes import make_ingress_services

MB = 1024 * 1024


def _services(tmp_path: Path, **config: Any) -> IngressServices:
    return make_ingress_services(
        tmp_path,
        config=IngressConfig(max_upload_bytes=4 * MB, **config),
        ready={"deployment:AsrDeployment": "ok"},
        ws_wait_seconds=0.2,
    )


@pytest.fixture(autouse=True)
def no_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each request sees the keys as they are now (the replica cache is tested apart)."""
    monkeypatch.setattr(auth, "KEY_CACHE_SECONDS", 0.0)
    monkeypatch.setattr(auth, "NO_KEYS_CACHE_SECONDS", 0.0)


@pytest.fixture
def services(tmp_path: Path) -> IngressServices:
    return _services(tmp_path)


@pytest.fixture
async def client(services: IngressServices) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(services))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def new_key(services: IngressServices, name: str, **kwargs: Any) -> str:
    return create_key(services.db, name=name, **kwargs)[0].key


async def submit(
    client: httpx.AsyncClient, audio: bytes, key: str | None = None, **params: Any
) -> httpx.Response:
    return await client.post(
        "/speech-to-text",
        params={"diarize": "false", **params},
        files={"file": ("a.flac", audio)},
        headers=bearer(key) if key else {},
    )


def _unauthorized(r: httpx.Response) -> None:
    assert r.status_code == 401, r.text
    assert r.json()["error_code"] == "unauthorized" and r.json()["user_message"]
    assert r.headers["www-authenticate"] == "Bearer"


# ---------------------------------------------------------------- on or off


async def test_auto_is_off_until_a_key_exists_then_on(
    client: httpx.AsyncClient, services: IngressServices, jfk_path: Path
) -> None:
    open_task = await submit(client, jfk_path.read_bytes(), key="anything")  # ignored: off
    assert open_task.status_code == 200, open_task.text
    assert (await client.get("/task/all")).json()["total"] == 1

    key = new_key(services, "alice")
    _unauthorized(await client.get("/task/all"))
    _unauthorized(await client.get("/task/all", headers=bearer("wxs_" + "x" * 43)))
    _unauthorized(await client.get("/task/all", headers={"Authorization": f"Basic {key}"}))
    _unauthorized(await client.get("/task/all", params={"api_key": key}))  # never the query
    _unauthorized(await submit(client, jfk_path.read_bytes()))
    assert (await client.get("/task/all", headers=bearer(key))).json()["total"] == 0
    # The task from before auth has no owner: only an admin sees it now.
    admin = new_key(services, "root", is_admin=True)
    assert (await client.get("/task/all", headers=bearer(admin))).json()["total"] == 1


async def test_health_probes_stay_open_and_nothing_else(
    client: httpx.AsyncClient, services: IngressServices
) -> None:
    new_key(services, "alice")
    for path in ("/health", "/health/live", "/health/ready"):
        assert (await client.get(path)).status_code == 200, path
    for path in ("/docs", "/openapi.json", "/redoc", "/task/x", "/tasks/x/progress", "/nope"):
        _unauthorized(await client.get(path))
    _unauthorized(await client.delete("/task/x/delete"))
    _unauthorized(await client.post("/task/x/cancel"))


async def test_public_docs_opens_only_the_docs(tmp_path: Path) -> None:
    services = _services(tmp_path, public_docs=True)
    new_key(services, "alice")
    transport = httpx.ASGITransport(app=create_app(services))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        assert (await c.get("/openapi.json")).status_code == 200
        assert (await c.get("/docs")).status_code == 200
        _unauthorized(await c.get("/task/all"))


async def test_required_without_keys_refuses_and_off_ignores_keys(tmp_path: Path) -> None:
    required = _services(tmp_path / "r", auth="required")
    transport = httpx.ASGITransport(app=create_app(required))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        _unauthorized(await c.get("/task/all"))
        assert (await c.get("/health/ready")).status_code == 200

    off = _services(tmp_path / "o", auth="off")
    new_key(off, "alice")
    transport = httpx.ASGITransport(app=create_app(off))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        assert (await c.get("/task/all")).status_code == 200


async def test_revoked_key_is_refused(client: httpx.AsyncClient, services: IngressServices) -> None:
    new, row = create_key(services.db, name="alice")
    assert (await client.get("/task/all", headers=bearer(new.key))).status_code == 200
    assert api_keys.revoke_api_key(services.db, key_id=row.id)
    _unauthorized(await client.get("/task/all", headers=bearer(new.key)))


async def test_replica_cache_forgets_a_revoked_key_after_its_ttl(
    services: IngressServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(auth.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(auth, "KEY_CACHE_SECONDS", 5.0)
    gate = auth.AuthGate(services.db, services.config)
    new, row = create_key(services.db, name="alice")
    assert (await gate.caller(new.key)).key_id == row.id
    api_keys.revoke_api_key(services.db, key_id=row.id)
    assert (await gate.caller(new.key)).key_id == row.id  # cached
    clock[0] += 5.1
    with pytest.raises(auth.UnauthorizedError):
        await gate.caller(new.key)


def test_database_holds_only_the_hash(services: IngressServices, tmp_path: Path) -> None:
    new, row = create_key(services.db, name="alice")
    assert new.key.startswith("wxs_") and len(new.key) == 4 + 43
    assert row.key_hash == auth.hash_key(new.key) and new.key not in repr(row)
    with sqlite3.connect(tmp_path / "ingress.db") as conn:
        dumped = "\n".join(conn.iterdump())
    assert new.key not in dumped and new.key[4:] not in dumped
    assert row.prefix == new.key[:12] and row.prefix in dumped


# ---------------------------------------------------------------- tenancy


async def test_another_keys_task_is_404_on_every_route(
    client: httpx.AsyncClient, services: IngressServices, jfk_path: Path
) -> None:
    alice, bob = new_key(services, "alice"), new_key(services, "bob")
    admin = new_key(services, "root", is_admin=True)
    r = await submit(client, jfk_path.read_bytes(), key=alice)
    assert r.status_code == 200, r.text
    task_id = r.json()["identifier"]
    assert repository.get_task(services.db, task_id=task_id).owner_key_id is not None  # type: ignore[union-attr]

    routes: list[tuple[str, str]] = [
        ("GET", f"/task/{task_id}"),
        ("GET", f"/task/{task_id}/result"),
        ("GET", f"/tasks/{task_id}/progress"),
        ("POST", f"/task/{task_id}/cancel"),
        ("DELETE", f"/task/{task_id}/delete"),
    ]
    for method, url in routes:
        r = await client.request(method, url, headers=bearer(bob))
        assert r.status_code == 404 and r.json()["error_code"] == "task_not_found", (url, r.text)
    page = (await client.get("/task/all", headers=bearer(bob))).json()
    assert page["tasks"] == [] and page["total"] == 0
    assert repository.get_task(services.db, task_id=task_id).status == "queued"  # type: ignore[union-attr]

    mine = (await client.get("/task/all", headers=bearer(alice))).json()
    assert [t["identifier"] for t in mine["tasks"]] == [task_id] and mine["total"] == 1
    assert (await client.get(f"/task/{task_id}", headers=bearer(alice))).status_code == 200
    assert (await client.get(f"/tasks/{task_id}/progress", headers=bearer(admin))).is_success
    assert (await client.get("/task/all", headers=bearer(admin))).json()["total"] == 1
    r = await client.post(f"/task/{task_id}/cancel", headers=bearer(admin))
    assert r.json()["status"] == "cancelled"
    assert (await client.delete(f"/task/{task_id}/delete", headers=bearer(alice))).is_success


async def test_single_stage_and_combine_tasks_belong_to_their_key(
    client: httpx.AsyncClient, services: IngressServices
) -> None:
    alice, bob = new_key(services, "alice"), new_key(services, "bob")
    transcript = b'{"segments": [{"start": 0, "end": 1, "text": "hi"}], "language": "en"}'
    turns = b'[{"start": 0, "end": 1, "speaker": "A"}]'
    r = await client.post(
        "/service/combine",
        files={"aligned_transcript": ("t.json", transcript), "diarization_result": ("d", turns)},
        headers=bearer(alice),
    )
    assert r.status_code == 200, r.text
    task_id = r.json()["identifier"]
    assert (await client.get(f"/task/{task_id}", headers=bearer(bob))).status_code == 404
    assert (await client.get(f"/task/{task_id}", headers=bearer(alice))).status_code == 200


def test_websocket_auth_and_tenancy(services: IngressServices, jfk_path: Path) -> None:
    with TestClient(create_app(services)) as tc:
        alice, bob = new_key(services, "alice"), new_key(services, "bob")
        r = tc.post(
            "/speech-to-text",
            files={"file": ("a.flac", jfk_path.read_bytes())},
            headers=bearer(alice),
        )
        task_id = r.json()["identifier"]
        url = f"/ws/tasks/{task_id}"

        def closed_with(**kwargs: Any) -> int:
            with tc.websocket_connect(url, **kwargs) as ws, pytest.raises(WebSocketDisconnect) as e:
                ws.receive_json()
            return e.value.code

        assert closed_with() == 4401
        assert closed_with(headers=bearer("wxs_nope")) == 4401
        assert closed_with(subprotocols=["whisperx-serve", "bearer.wxs_nope"]) == 4401
        # A key in the query string is never read.
        with (
            tc.websocket_connect(f"{url}?api_key={alice}") as ws,
            pytest.raises(WebSocketDisconnect) as e,
        ):
            ws.receive_json()
        assert e.value.code == 4401
        assert closed_with(headers=bearer(bob)) == 4404  # another key's task: "not found"

        with tc.websocket_connect(url, headers=bearer(alice)) as ws:
            assert ws.receive_json()["type"] == "snapshot"
        # A browser: no headers, the key in the second subprotocol.
        with tc.websocket_connect(url, subprotocols=["whisperx-serve", f"bearer.{alice}"]) as ws:
            assert ws.accepted_subprotocol == "whisperx-serve"
            assert ws.receive_json()["task_id"] == task_id


# ---------------------------------------------------------------- limits


async def test_active_tasks_limit_is_429_with_retry_after(tmp_path: Path, jfk_path: Path) -> None:
    services = _services(
        tmp_path, limits=CallerLimits(max_active_tasks=2, busy_retry_after_seconds=7)
    )
    alice, bob = new_key(services, "alice"), new_key(services, "bob", max_active_tasks=1)
    transport = httpx.ASGITransport(app=create_app(services))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        audio = jfk_path.read_bytes()
        first = [await submit(c, audio, key=alice) for _ in range(2)]
        assert [r.status_code for r in first] == [200, 200]
        over = await submit(c, audio, key=alice)
        assert over.status_code == 429 and over.json()["error_code"] == "rate_limited"
        assert over.headers["retry-after"] == "7" and "2" in over.json()["user_message"]
        assert (await submit(c, audio, key=bob)).status_code == 200  # limits are per key
        assert (await submit(c, audio, key=bob)).status_code == 429  # its own override: 1
        # A finished task frees its slot.
        done = first[0].json()["identifier"]
        assert (await c.post(f"/task/{done}/cancel", headers=bearer(alice))).is_success
        assert (await submit(c, audio, key=alice)).status_code == 200
    uploads = {p.stem for p in services.settings.upload_dir().iterdir()}
    assert len(uploads) == 4  # the refused ones left nothing behind
    assert repository.list_tasks(services.db)[1] == 4


async def test_per_minute_limit_is_a_bucket_that_deleting_does_not_refill(
    tmp_path: Path, jfk_path: Path
) -> None:
    services = _services(tmp_path, limits=CallerLimits(max_submissions_per_minute=3))
    new, row = create_key(services.db, name="alice")
    audio = jfk_path.read_bytes()
    transport = httpx.ASGITransport(app=create_app(services))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        accepted = [await submit(c, audio, key=new.key) for _ in range(3)]  # a burst of 3
        assert [r.status_code for r in accepted] == [200, 200, 200]
        over = await submit(c, audio, key=new.key)
        assert over.status_code == 429 and "per minute" in over.json()["user_message"]
        assert 19 <= int(over.headers["retry-after"]) <= 20  # one submission per 20 s
        for r in accepted:  # deleting its tasks gives a key no submissions back
            gone = await c.delete(f"/task/{r.json()['identifier']}/delete", headers=bearer(new.key))
            assert gone.status_code == 200
        assert (await submit(c, audio, key=new.key)).status_code == 429
        with services.db.session() as s:  # 25 s later: one submission has come back
            key_row = s.get(ApiKeyRow, row.id)
            assert key_row is not None and key_row.rate_checked_at is not None
            key_row.rate_checked_at -= timedelta(seconds=25)
        assert (await submit(c, audio, key=new.key)).status_code == 200
        assert (await submit(c, audio, key=new.key)).status_code == 429


async def test_queue_bound_is_503_and_keeps_what_was_accepted(
    tmp_path: Path, jfk_path: Path
) -> None:
    services = _services(tmp_path, max_queued_tasks=2, overload_retry_after_seconds=3)
    transport = httpx.ASGITransport(app=create_app(services))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        audio = jfk_path.read_bytes()
        accepted = [await submit(c, audio) for _ in range(2)]  # auth off: the bound still holds
        over = await submit(c, audio)
        assert over.status_code == 503 and over.json()["error_code"] == "overloaded"
        assert over.headers["retry-after"] == "3"
        ids = {r.json()["identifier"] for r in accepted}
        assert {r.id for r in repository.list_tasks(services.db)[0]} == ids
        lifecycle.claim(services.db, worker_id="w", limit=1, lease_seconds=60)
        assert (await submit(c, audio)).status_code == 200  # one left the queue: room again


def test_quota_is_exact_under_concurrent_submissions(services: IngressServices) -> None:
    """Ten threads race to insert one key's tasks; the limit of 3 holds exactly."""
    quota = Quota(max_active=3)
    barrier = threading.Barrier(10)
    outcomes: list[str] = []

    def race(i: int) -> None:
        barrier.wait()
        try:
            repository.create_task(
                services.db,
                task_id=f"t{i}",
                task_type=TaskType.speech_to_text,
                params=TaskParams(),
                file_name=None,
                audio_key=None,
                owner_key_id="k1",
                quota=quota,
            )
            outcomes.append("ok")
        except QuotaExceeded:
            outcomes.append("refused")

    threads = [threading.Thread(target=race, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["ok"] * 3 + ["refused"] * 7
    assert repository.list_tasks(services.db)[1] == 3


# ---------------------------------------------------------------- CORS and OpenAPI


def _preflight(app: Any, origin: str) -> httpx.Response:
    with TestClient(app) as tc:
        return tc.options(  # type: ignore[return-value]
            "/task/all",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization",
            },
        )


def test_cors_is_off_by_default_and_follows_the_origin_list(tmp_path: Path) -> None:
    r = _preflight(create_app(_services(tmp_path / "a")), "https://app.example.org")
    assert "access-control-allow-origin" not in r.headers
    app = create_app(_services(tmp_path / "b", cors_origins=["https://app.example.org"]))
    r = _preflight(app, "https://app.example.org")
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "https://app.example.org"
    assert "authorization" in r.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-origin" not in _preflight(app, "https://evil.example").headers


def test_openapi_documents_the_bearer_scheme(services: IngressServices) -> None:
    spec = create_app(services).openapi()
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert "security" not in spec["paths"]["/health/ready"]["get"]
    task = spec["paths"]["/task/{identifier}"]["get"]
    assert task["security"] == [{"bearer": []}, {}] and "401" in task["responses"]
    assert "429" in spec["paths"]["/speech-to-text"]["post"]["responses"]


def test_startup_says_loudly_when_auth_is_off(
    services: IngressServices, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("INFO", logger="ingress.auth"):
        auth.log_auth_state(services.db, services.config)
        create_key(services.db, name="alice")
        auth.log_auth_state(services.db, services.config)
    off, on = caplog.records
    assert off.levelname == "WARNING" and "AUTH IS OFF" in off.getMessage()
    assert "anyone who can reach this port" in off.getMessage()
    assert on.levelname == "INFO" and "auth is on" in on.getMessage()


async def test_the_insert_decides_even_when_the_early_check_let_it_through(
    tmp_path: Path, jfk_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two submissions racing past the early check: the insert refuses the second, and its
    stored upload is removed."""

    async def let_through(*_: object) -> None:
        return None

    monkeypatch.setattr(auth, "admit", let_through)
    services = _services(tmp_path, limits=CallerLimits(max_active_tasks=1))
    key = new_key(services, "alice")
    transport = httpx.ASGITransport(app=create_app(services))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        assert (await submit(c, jfk_path.read_bytes(), key=key)).status_code == 200
        over = await submit(c, jfk_path.read_bytes(), key=key)
    assert over.status_code == 429 and over.headers["retry-after"] == "5"
    assert len(list(services.settings.upload_dir().iterdir())) == 1
    assert repository.list_tasks(services.db)[1] == 1
