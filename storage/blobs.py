"""The blob store: where uploaded and downloaded audio lives, readable from every node.

A task row keeps the file's *key* (``<task_id><ext>``), never a node's path. Two stores:

- :class:`LocalBlobStore`, a directory (``<data_dir>/uploads``): the embedded default for
  one node. On several nodes only if that directory is a volume every node mounts.
- :class:`DatabaseBlobStore`, the task database itself (``blobs`` + ``blob_chunks``, about
  1 MiB a chunk): every node that reaches the database reads the file; it goes with its
  task in the same transaction (:func:`delete_rows`). Writes and reads are streamed chunk
  by chunk, so no file is ever held whole in memory.

All methods are blocking; async callers run them in a thread.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, BinaryIO, Protocol

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from common.errors import ConfigurationError
from common.schemas import utcnow
from common.settings import Settings
from storage.db import Database
from storage.models import BlobChunkRow, BlobRow

CHUNK_BYTES = 1024 * 1024
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class BlobInfo:
    size: int
    modified: datetime


class BlobStore(Protocol):
    """Files by key. ``node_local`` says whether only this node can read what it wrote."""

    @property
    def node_local(self) -> bool: ...

    def put(self, key: str, chunks: Iterable[bytes]) -> int:
        """Store ``chunks`` as ``key`` (replacing it); returns the bytes written."""
        ...

    def read(self, key: str, start: int = 0, length: int | None = None) -> Iterator[bytes]:
        """The bytes ``[start, start + length)`` of ``key``, a chunk at a time.

        Raises FileNotFoundError (when iterated) if there is no such blob."""
        ...

    def info(self, key: str) -> BlobInfo | None: ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None:
        """Remove ``key``; nothing happens when it does not exist."""
        ...


def check_key(key: str) -> str:
    """A key is a plain file name (no directory part), so no store can be led elsewhere."""
    if not _KEY.match(key) or key.startswith(".") or ".." in key:
        raise ValueError(f"invalid blob key {key[:64]!r}")
    return key


def iter_file(src: BinaryIO, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    while chunk := src.read(chunk_bytes):
        yield chunk


def put_file(store: BlobStore, key: str, path: Path) -> int:
    with path.open("rb") as src:
        return store.put(key, iter_file(src))


def copy_to_file(store: BlobStore, key: str, dest: IO[bytes]) -> int:
    """Write blob ``key`` into the open file ``dest``; returns its size."""
    written = 0
    for chunk in store.read(key):
        dest.write(chunk)
        written += len(chunk)
    dest.flush()
    return written


class LocalBlobStore:
    """Files in one directory, named by their key. ``shared`` when the operator says the
    directory is a volume every node mounts (``WHISPERX_SERVE_BLOB_DIR_SHARED``)."""

    def __init__(self, root: Path, *, shared: bool = False) -> None:
        self.root = root.resolve()
        self._shared = shared

    @property
    def node_local(self) -> bool:
        return not self._shared

    def __repr__(self) -> str:
        return f"LocalBlobStore({str(self.root)!r}, shared={self._shared})"

    def path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, chunks: Iterable[bytes]) -> int:
        dest = self.path(key)
        self.root.mkdir(parents=True, exist_ok=True)
        fd, partial = tempfile.mkstemp(dir=self.root, prefix=".partial-")
        written = 0
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    out.write(chunk)
                    written += len(chunk)
            os.replace(partial, dest)  # readers never see half a file
        except BaseException:
            Path(partial).unlink(missing_ok=True)
            raise
        return written

    def read(self, key: str, start: int = 0, length: int | None = None) -> Iterator[bytes]:
        path = self.path(key)
        with path.open("rb") as f:
            f.seek(start)
            left = length if length is not None else -1
            while left != 0:
                chunk = f.read(CHUNK_BYTES if left < 0 else min(CHUNK_BYTES, left))
                if not chunk:
                    return
                if left > 0:
                    left -= len(chunk)
                yield chunk

    def info(self, key: str) -> BlobInfo | None:
        try:
            stat = self.path(key).stat()
        except (FileNotFoundError, ValueError):
            return None
        return BlobInfo(stat.st_size, datetime.fromtimestamp(stat.st_mtime, tz=UTC))

    def exists(self, key: str) -> bool:
        return self.info(key) is not None

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)


class DatabaseBlobStore:
    """Files as ~1 MiB chunks in the task database (SQLite or PostgreSQL).

    A blob is visible once complete (``size`` set): each chunk is committed as it arrives,
    so a long upload never holds a write transaction open (SQLite has one writer)."""

    node_local = False

    def __init__(self, db: Database, *, chunk_bytes: int = CHUNK_BYTES) -> None:
        self._db = db
        self._chunk = chunk_bytes

    def __repr__(self) -> str:
        return f"DatabaseBlobStore({self._db.url!r})"

    def put(self, key: str, chunks: Iterable[bytes]) -> int:
        check_key(key)
        self.delete(key)
        with self._db.session() as session:
            session.add(BlobRow(key=key, size=None, chunk_size=self._chunk, created_at=utcnow()))
        seq = written = 0
        buffer = bytearray()
        try:
            for chunk in chunks:
                buffer += chunk
                while len(buffer) >= self._chunk:
                    self._add_chunk(key, seq, bytes(buffer[: self._chunk]))
                    del buffer[: self._chunk]
                    seq += 1
                written += len(chunk)
            if buffer:
                self._add_chunk(key, seq, bytes(buffer))
            with self._db.session() as session:
                session.execute(update(BlobRow).where(BlobRow.key == key).values(size=written))
        except BaseException:
            self.delete(key)
            raise
        return written

    def _add_chunk(self, key: str, seq: int, data: bytes) -> None:
        with self._db.session() as session:
            session.add(BlobChunkRow(key=key, seq=seq, data=data))

    def _row(self, key: str) -> BlobRow | None:
        with self._db.session() as session:
            row = session.get(BlobRow, key)
            return row if row is not None and row.size is not None else None

    def read(self, key: str, start: int = 0, length: int | None = None) -> Iterator[bytes]:
        row = self._row(key)
        if row is None or row.size is None:
            raise FileNotFoundError(key)
        end = row.size if length is None else min(row.size, start + length)
        seq = start // row.chunk_size
        offset = start - seq * row.chunk_size
        position = start
        while position < end:
            with self._db.session() as session:  # one chunk per query: memory stays bounded
                data = session.scalar(
                    select(BlobChunkRow.data).where(
                        BlobChunkRow.key == key, BlobChunkRow.seq == seq
                    )
                )
            if data is None:  # deleted while being read
                raise FileNotFoundError(key)
            piece = bytes(data[offset : offset + end - position])
            yield piece
            position += len(piece)
            seq, offset = seq + 1, 0

    def info(self, key: str) -> BlobInfo | None:
        row = self._row(key)
        if row is None or row.size is None:
            return None
        return BlobInfo(row.size, row.created_at)

    def exists(self, key: str) -> bool:
        return self._row(key) is not None

    def delete(self, key: str) -> None:
        with self._db.session() as session:
            delete_rows(session, key)


def delete_rows(session: Session, key: str) -> None:
    """Delete blob ``key`` of the database store inside the caller's transaction (a task's
    deletion takes its audio with it); a no-op for keys the database does not hold."""
    session.execute(delete(BlobChunkRow).where(BlobChunkRow.key == key))
    session.execute(delete(BlobRow).where(BlobRow.key == key))


def open_blob_store(kind: str, *, db: Database, directory: Path, shared: bool = False) -> BlobStore:
    """The store ``kind`` (``local`` or ``database``) names."""
    if kind == "database":
        return DatabaseBlobStore(db)
    if kind == "local":
        return LocalBlobStore(directory, shared=shared)
    raise ConfigurationError(
        "The service is misconfigured.", f"unknown blob store {kind!r}: use local or database"
    )


def require_cluster_readable(store: BlobStore, alive_nodes: int) -> None:
    """Refuse to start when several nodes would share a node-local store: a task whose
    runner or decoder lands on another node than its upload would find no audio."""
    if alive_nodes > 1 and store.node_local:
        raise ConfigurationError(
            "The service is misconfigured: uploads would stay on one node of a cluster.",
            f"the Ray cluster has {alive_nodes} alive nodes but the blob store is the "
            f"node-local {store!r}; set WHISPERX_SERVE_BLOB_STORE=database (the task "
            "database, PostgreSQL), or WHISPERX_SERVE_BLOB_DIR_SHARED=1 if "
            "WHISPERX_SERVE_BLOB_DIR is a volume every node mounts",
        )


def blob_store_from(settings: Settings, db: Database) -> BlobStore:
    """The store the settings choose, on ``db`` (the task database) when it is ``database``."""
    return open_blob_store(
        settings.blob_store, db=db, directory=settings.upload_dir(), shared=settings.blob_dir_shared
    )
