"""The database blob store on the local PostgreSQL server (the cluster's store), each test
in a fresh schema; the same checks as tests/unit/test_blobs.py runs on SQLite."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from common.schemas import TaskParams, TaskType
from storage import Database, migrate
from storage import repository as repo
from storage.blobs import DatabaseBlobStore
from tests.integration.conftest import pg_schema
from tests.unit.test_blobs import (
    CHUNK,
    check_failed_put_leaves_nothing,
    check_round_trip,
    check_streamed,
    pieces,
)

pytestmark = [pytest.mark.integration, pytest.mark.postgres]


@pytest.fixture
def pg_db() -> Iterator[Database]:
    with pg_schema() as url:
        migrate(url)
        db = Database(url)
        yield db
        db.dispose()


def test_round_trip_and_ranges(pg_db: Database) -> None:
    check_round_trip(DatabaseBlobStore(pg_db, chunk_bytes=CHUNK))


def test_streamed_both_ways(pg_db: Database) -> None:
    check_streamed(DatabaseBlobStore(pg_db, chunk_bytes=CHUNK))


def test_failed_put_leaves_nothing(pg_db: Database) -> None:
    check_failed_put_leaves_nothing(DatabaseBlobStore(pg_db, chunk_bytes=CHUNK))


def test_deleting_a_task_deletes_its_blob_in_the_same_transaction(pg_db: Database) -> None:
    store = DatabaseBlobStore(pg_db, chunk_bytes=CHUNK)
    store.put("t1.flac", pieces(5 * CHUNK))
    repo.create_task(
        pg_db,
        task_id="t1",
        task_type=TaskType.speech_to_text,
        params=TaskParams(),
        file_name="t1.flac",
        audio_key="t1.flac",
    )
    assert repo.delete_task(pg_db, task_id="t1") is not None
    assert not store.exists("t1.flac")
