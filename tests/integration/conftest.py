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
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.serving import Service, bundle_args, local_service

PG_BASE = os.environ.get(
    "WHISPERX_SERVE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
APP = "whisperx-it"

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
        # progress events also go to the local Redis, under keys of this session only
        "WHISPERX_SERVE_REDIS_URL": "redis://127.0.0.1:6379/0",
        "WHISPERX_SERVE_REDIS_PREFIX": f"whisperx-it-{uuid.uuid4().hex[:10]}",
        "WHISPERX_SERVE_REDIS_TTL_SECONDS": "600",
        # URL downloads and callbacks may reach test servers on 127.0.0.1 (nothing else)
        "WHISPERX_SERVE_URL_FETCH_ALLOW_NETWORKS": "127.0.0.1/32",
    }
    with local_service(
        bundle_args(APP, models_dir, aligner=tiny_aligner),
        data_dir=tmp_path_factory.mktemp("data"),
        database_url=database_url,
        env=env,
    ) as service:
        yield service
