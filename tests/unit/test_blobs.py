"""The blob stores (storage/blobs.py): a directory and the task database, streamed both ways.

The database store runs here on SQLite; tests/integration/test_blob_store.py runs the same
checks on PostgreSQL.
"""

from __future__ import annotations

import hashlib
import sqlite3
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common.errors import ConfigurationError
from common.schemas import TaskParams, TaskType
from common.settings import Settings
from storage import Database, migrate
from storage import repository as repo
from storage.blobs import (
    BlobStore,
    DatabaseBlobStore,
    LocalBlobStore,
    blob_store_from,
    check_key,
    require_cluster_readable,
)
from storage.db import downgrade

pytestmark = pytest.mark.unit

CHUNK = 64 * 1024
SIZE = 16 * 1024 * 1024 + 12_345  # 256 chunks and a bit: far larger than one chunk


def pieces(size: int = SIZE, piece: int = 10_007) -> Iterator[bytes]:
    """Deterministic bytes, made as they are consumed (never all at once)."""
    made = 0
    n = 0
    while made < size:
        block = hashlib.sha256(str(n).encode()).digest() * (piece // 32 + 1)
        block = block[: min(piece, size - made)]
        made += len(block)
        n += 1
        yield block


def digest(chunks: Iterator[bytes]) -> tuple[str, int, int]:
    """(sha256, total bytes, largest piece) of a stream."""
    h, total, largest = hashlib.sha256(), 0, 0
    for chunk in chunks:
        h.update(chunk)
        total += len(chunk)
        largest = max(largest, len(chunk))
    return h.hexdigest(), total, largest


def expected(size: int = SIZE, start: int = 0, length: int | None = None) -> str:
    data = b"".join(pieces(size))
    return hashlib.sha256(data[start : None if length is None else start + length]).hexdigest()


def check_round_trip(store: BlobStore) -> None:
    assert not store.exists("a.wav") and store.info("a.wav") is None
    assert store.put("a.wav", pieces()) == SIZE
    info = store.info("a.wav")
    assert store.exists("a.wav") and info is not None and info.size == SIZE
    sha, total, largest = digest(store.read("a.wav"))
    assert (sha, total) == (expected(), SIZE) and largest <= 1024 * 1024
    # ranges: inside one chunk, across chunk borders, to the end
    for start, length in ((5, 10), (CHUNK - 3, 2 * CHUNK + 7), (SIZE - 100, None), (0, 1)):
        sha, total, _ = digest(store.read("a.wav", start, length))
        want = SIZE - start if length is None else length
        assert (sha, total) == (expected(start=start, length=length), want)
    assert store.put("a.wav", iter([b"short"])) == 5  # replaces
    assert b"".join(store.read("a.wav")) == b"short"
    store.delete("a.wav")
    store.delete("a.wav")  # twice: no error
    assert not store.exists("a.wav")
    with pytest.raises(FileNotFoundError):
        b"".join(store.read("a.wav"))


def check_streamed(store: BlobStore) -> None:
    """Neither writing nor reading a 16 MiB blob ever holds it whole in memory."""
    tracemalloc.start()
    try:
        store.put("big.flac", pieces())
        _, put_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        sha, total, _ = digest(store.read("big.flac"))
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (sha, total) == (expected(), SIZE)
    assert put_peak < SIZE / 4 and read_peak < SIZE / 4, (put_peak, read_peak)


def check_failed_put_leaves_nothing(store: BlobStore) -> None:
    def broken() -> Iterator[bytes]:
        yield from pieces(3 * CHUNK)
        raise OSError("client went away")

    with pytest.raises(OSError, match="went away"):
        store.put("half.wav", broken())
    assert not store.exists("half.wav")


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[Database]:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    migrate(url)
    db = Database(url)
    yield db
    db.dispose()


@pytest.fixture(params=["local", "database"])
def store(request: pytest.FixtureRequest, tmp_path: Path, sqlite_db: Database) -> BlobStore:
    if request.param == "local":
        return LocalBlobStore(tmp_path / "uploads")
    return DatabaseBlobStore(sqlite_db, chunk_bytes=CHUNK)


def test_round_trip_and_ranges(store: BlobStore) -> None:
    check_round_trip(store)


def test_streamed_both_ways(store: BlobStore) -> None:
    check_streamed(store)


def test_failed_put_leaves_nothing(store: BlobStore, tmp_path: Path) -> None:
    check_failed_put_leaves_nothing(store)
    if isinstance(store, LocalBlobStore):
        assert list(store.root.iterdir()) == []  # no partial file left behind


def test_database_store_keeps_chunks_of_the_chunk_size(sqlite_db: Database) -> None:
    store = DatabaseBlobStore(sqlite_db, chunk_bytes=CHUNK)
    store.put("c.wav", pieces())
    path = sqlite_db.engine.url.database
    assert path is not None
    with sqlite3.connect(path) as conn:
        sizes = [r[0] for r in conn.execute("SELECT length(data) FROM blob_chunks ORDER BY seq")]
    assert len(sizes) == SIZE // CHUNK + 1 and set(sizes[:-1]) == {CHUNK}


def test_keys_are_plain_file_names(tmp_path: Path) -> None:
    for bad in ("../x", "a/b", "/etc/passwd", ".hidden", "", "a" * 200, "x..y"):
        with pytest.raises(ValueError):
            check_key(bad)
    assert check_key("0123abcd.flac") == "0123abcd.flac"
    local = LocalBlobStore(tmp_path)
    with pytest.raises(ValueError):
        local.put("../escape", iter([b"x"]))
    assert local.info("../escape") is None and not (tmp_path.parent / "escape").exists()


def test_deleting_a_task_deletes_its_database_blob(sqlite_db: Database) -> None:
    store = DatabaseBlobStore(sqlite_db, chunk_bytes=CHUNK)
    store.put("t1.wav", pieces(3 * CHUNK))
    store.put("t2.wav", pieces(10))
    for task_id in ("t1", "t2"):
        repo.create_task(
            sqlite_db,
            task_id=task_id,
            task_type=TaskType.speech_to_text,
            params=TaskParams(),
            file_name=None,
            audio_key=f"{task_id}.wav",
        )
    assert repo.delete_task(sqlite_db, task_id="t1") is not None
    assert not store.exists("t1.wav") and store.exists("t2.wav")
    path = sqlite_db.engine.url.database
    assert path is not None
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM blob_chunks WHERE key='t1.wav'").fetchone() == (
            0,
        )


def test_settings_choose_the_store(tmp_path: Path, sqlite_db: Database) -> None:
    local = blob_store_from(Settings(data_dir=tmp_path), sqlite_db)
    assert isinstance(local, LocalBlobStore) and local.root == (tmp_path / "uploads").resolve()
    assert local.node_local
    shared = blob_store_from(
        Settings(data_dir=tmp_path, blob_dir=tmp_path / "nfs", blob_dir_shared=True), sqlite_db
    )
    assert isinstance(shared, LocalBlobStore) and not shared.node_local
    assert shared.root == (tmp_path / "nfs").resolve()
    database = blob_store_from(Settings(data_dir=tmp_path, blob_store="database"), sqlite_db)
    assert isinstance(database, DatabaseBlobStore) and not database.node_local


def test_several_nodes_refuse_a_node_local_store(tmp_path: Path, sqlite_db: Database) -> None:
    local = LocalBlobStore(tmp_path)
    require_cluster_readable(local, 1)  # one node: fine
    with pytest.raises(ConfigurationError) as refused:
        require_cluster_readable(local, 3)
    detail = refused.value.technical_detail
    assert "3 alive nodes" in detail and "WHISPERX_SERVE_BLOB_STORE=database" in detail
    require_cluster_readable(LocalBlobStore(tmp_path, shared=True), 3)
    require_cluster_readable(DatabaseBlobStore(sqlite_db), 3)


def test_migration_turns_stored_paths_into_keys(tmp_path: Path) -> None:
    """Rows from before the blob store keep their audio: the path under the old upload
    directory becomes the local store's key (the file name); downgrading keeps the rows."""
    path = tmp_path / "db.sqlite"
    url = f"sqlite:///{path}"
    migrate(url, "0004")
    with sqlite3.connect(path) as conn:
        for task_id, audio in (("old", str(tmp_path / "uploads" / "old.flac")), ("none", None)):
            conn.execute(
                "INSERT INTO tasks (id, status, task_type, params, timings, progress_percentage,"
                " progress_stage, progress_seq, attempts, created_at, updated_at, audio_path)"
                " VALUES (?, 'completed', 'speech-to-text', '{}', '{}', 100, 'completed', 0, 1,"
                " '2026-01-01 00:00:00', '2026-01-01 00:00:00', ?)",
                (task_id, audio),
            )
    migrate(url)
    db = Database(url)
    old, none = repo.get_task(db, task_id="old"), repo.get_task(db, task_id="none")
    assert old is not None and old.audio_key == "old.flac"
    assert none is not None and none.audio_key is None
    db.dispose()
    downgrade(url, "0004")
    with sqlite3.connect(path) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert "blobs" not in tables
        assert conn.execute("SELECT audio_path FROM tasks WHERE id='old'").fetchone() == (
            "old.flac",
        )


# ---------------------------------------------------------------- the ingress on each store


@pytest.fixture(params=["local", "database"])
def ingress(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    from common.config import IngressConfig
    from tests.fakes import make_ingress_services

    return make_ingress_services(
        tmp_path,
        config=IngressConfig(max_upload_bytes=4 * 1024 * 1024),
        ready={"deployment:AsrDeployment": "ok"},
        blob_store=request.param,
    )


async def test_upload_is_stored_played_and_deleted_with_its_task(
    ingress: Any, jfk_path: Path
) -> None:
    import httpx

    from ingress.app import create_app

    transport = httpx.ASGITransport(app=create_app(ingress))
    data = jfk_path.read_bytes()
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        r = await client.post("/speech-to-text", files={"file": ("talk.FLAC", data)})
        assert r.status_code == 200, r.text
        task_id = r.json()["identifier"]
        row = repo.get_task(ingress.db, task_id=task_id)
        assert row is not None and row.audio_key == f"{task_id}.flac"
        assert ingress.blobs.info(row.audio_key).size == len(data)
        uploads = ingress.settings.upload_dir()
        in_database = ingress.settings.blob_store == "database"
        assert list(uploads.glob("*")) == ([] if in_database else [uploads / row.audio_key])
        assert not list(ingress.settings.spool_dir().glob("*"))  # the probe's copy is gone

        played = await client.get(f"/task/{task_id}/audio")
        assert played.status_code == 200 and played.content == data
        assert played.headers["content-type"] == "audio/flac"
        part = await client.get(f"/task/{task_id}/audio", headers={"Range": "bytes=10-19"})
        assert part.status_code == 206 and part.content == data[10:20]

        rejected = await client.post("/speech-to-text", files={"file": ("x.wav", b"no" * 500)})
        assert rejected.status_code == 422
        assert not list(ingress.settings.spool_dir().glob("*"))

        assert (await client.delete(f"/task/{task_id}/delete")).status_code == 200
        assert not ingress.blobs.exists(row.audio_key)
        assert not list(ingress.settings.upload_dir().glob("*"))


# ---------------------------------------------------------------- decoding from the store


@pytest.mark.parametrize("kind", ["local", "database"])
def test_decode_blob_reads_the_store_this_node_is_configured_with(
    kind: str, tmp_path: Path, jfk_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the Ray decode task runs: the node's own settings say where the file is; the
    copy it decodes from is removed; a missing file is an invalid_audio error."""
    from common.errors import InvalidAudioError
    from deployments.audio import SAMPLE_RATE, decode_blob
    from storage.blobs import put_file

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    migrate(url)
    monkeypatch.setenv("WHISPERX_SERVE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("WHISPERX_SERVE_DATABASE_URL", url)
    monkeypatch.setenv("WHISPERX_SERVE_BLOB_STORE", kind)
    db = Database(url)
    put_file(blob_store_from(Settings(), db), "t1.flac", jfk_path)
    samples, duration = decode_blob("t1.flac")
    assert samples.dtype.str == "<f4" and duration == pytest.approx(11.0, abs=0.1)
    assert duration == samples.size / SAMPLE_RATE
    assert not list((tmp_path / "spool").glob("*"))
    with pytest.raises(InvalidAudioError, match="no longer stored"):
        decode_blob("gone.flac")
    db.dispose()
