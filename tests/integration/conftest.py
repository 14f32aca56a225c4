"""One real local Ray cluster and one deployed app for the whole integration tier.

The app runs the real bundle models on CPU, with a random-init tiny wav2vec2 so the
alignment code path runs. The tier runs twice: against the local PostgreSQL server (a
fresh schema) and against SQLite, the embedded default.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from tests.conftest import REPO
from tests.serving import Service, bundle_args, local_service, run_cli
from tests.waiting import wait_until

PG_BASE = os.environ.get(
    "WHISPERX_SERVE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
APP = "whisperx-it"
QUEUE_BOUND = 1_500
DB_PASSWORD_MARKER = "MARKERdbpass7f3a"
HF_TOKEN_MARKER = "MARKERhf9c2e"
"""Recognisable secrets the service is given; no response, event, log line or task record
may show them (tests/integration/test_observability.py scans for them)."""
BASE_MODEL = REPO / "models" / "whisper-base"
"""The optional multilingual Whisper base (``make models`` / scripts/fetch_models.py)."""

__all__ = ["APP", "Service"]


@contextmanager
def pg_schema() -> Iterator[str]:
    """A fresh PostgreSQL schema for one app; dropped afterwards."""
    schema = f"it_{uuid.uuid4().hex[:10]}"
    engine = sa.create_engine(PG_BASE)
    with engine.begin() as conn:  # fails loudly if PostgreSQL is down: these tests must run
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{PG_BASE}?options=-csearch_path%3D{schema}"
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


@pytest.fixture(scope="session", params=["postgresql", "sqlite"])
def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The whole integration tier runs once per database: PostgreSQL, then SQLite."""
    if request.param == "postgresql":
        with pg_schema() as url:
            yield url
    else:
        yield f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'whisperx-serve.db'}"


@pytest.fixture(scope="session")
def tiny_aligner(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.fixtures_models import build_tiny_wav2vec2

    return build_tiny_wav2vec2(tmp_path_factory.mktemp("tiny-wav2vec2"))


@pytest.fixture(scope="session")
def service(
    tmp_path_factory: pytest.TempPathFactory,
    database_url: str,
    models_dir: Path,
    tiny_aligner: Path,
) -> Iterator[Service]:
    env = {
        # a password in the URL (the local PostgreSQL trusts, so it still connects)
        "WHISPERX_SERVE_DATABASE_URL": database_url.replace(
            "postgres@", f"postgres:{DB_PASSWORD_MARKER}@", 1
        ),
        "WHISPERX_SERVE_HF_TOKEN": f"hf_{HF_TOKEN_MARKER}0123456789abcdef",
        # progress events also go to the local Redis, under keys of this session only
        "WHISPERX_SERVE_REDIS_URL": "redis://127.0.0.1:6379/0",
        "WHISPERX_SERVE_REDIS_PREFIX": f"whisperx-it-{uuid.uuid4().hex[:10]}",
        "WHISPERX_SERVE_REDIS_TTL_SECONDS": "600",
        # URL downloads and callbacks may reach test servers on 127.0.0.1 (nothing else)
        "WHISPERX_SERVE_URL_FETCH_ALLOW_NETWORKS": "127.0.0.1/32",
        # uploads in PostgreSQL itself (the cluster's store) or the local directory (default)
        "WHISPERX_SERVE_BLOB_STORE": "database"
        if database_url.startswith("postgresql")
        else "local",
    }
    args = bundle_args(APP, models_dir, aligner=tiny_aligner)
    # loaded on its first request (tests/integration/test_multilingual.py)
    args["asr"]["models"] = {"base": str(BASE_MODEL)} if BASE_MODEL.is_dir() else {}
    # The queue bound sits above test_backpressure's burst of 1,000 (test_auth fills the
    # queue past it); the upload limit is small enough that the hostile-input tests can
    # pass it quickly.
    args["ingress"] = {
        "max_queued_tasks": QUEUE_BOUND,
        "overload_retry_after_seconds": 2,
        "max_upload_bytes": 16 * 1024 * 1024,
        "body_idle_timeout_seconds": 5,
    }
    with local_service(
        args,
        data_dir=tmp_path_factory.mktemp("data"),
        database_url=database_url,
        env=env,
        logging_config={"encoding": "JSON"},  # as serve_config.yaml has it in production
    ) as service:
        yield service


@dataclass
class Keys:
    """API keys made with the real ``whisperx-serve keys create`` on the service's database."""

    secrets: dict[str, str]
    """name -> the API key"""
    signing: dict[str, str]
    """name -> its callback signing secret"""

    def headers(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secrets[name]}"}


@pytest.fixture(scope="module")
def keys(service: Service) -> Iterator[Keys]:
    """Keys for one module: ``ingress.auth: auto`` turns auth on as soon as the first one
    exists. Afterwards the rows are deleted (a test-only step; the command only revokes),
    and auth is off again for the modules after it."""
    import re

    made = Keys({}, {})
    for name, *flags in (
        ("alice",),
        ("bob",),
        ("root", "--admin"),
        ("carol", "--max-active", "1"),
        ("dave", "--per-minute", "2"),
    ):
        out = run_cli(service, "keys", "create", "--name", name, *flags)
        key = re.search(r"api key:\s+(wxs_\S{43})\n", out)
        signing = re.search(r"signing secret:\s+(\S+)\n", out)
        assert key and signing, out
        made.secrets[name], made.signing[name] = key.group(1), signing.group(1)

    def task_all_status() -> int:
        return httpx.get(
            f"{service.base_url}/task/all", params={"limit": 1}, timeout=10
        ).status_code

    wait_until(lambda: task_all_status() == 401, timeout=30, what="auth on")
    try:
        yield made
    finally:
        engine = sa.create_engine(service.database_url)
        with engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM api_keys"))
        engine.dispose()
        wait_until(lambda: task_all_status() == 200, timeout=30, what="auth off again")
