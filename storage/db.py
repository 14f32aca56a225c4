"""Engine, sessions and schema migration for one database URL (SQLite or PostgreSQL)."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, func, select, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000
# pg_advisory_xact_lock key serialising migrate() across processes: int64 of b"wxsmigr1".
MIGRATION_LOCK_KEY = int.from_bytes(b"wxsmigr1", "big", signed=True)
_ALEMBIC_LOCK = threading.Lock()


def _sqlite_path(url: URL) -> Path | None:
    """The file behind a SQLite URL, or None for an in-memory database."""
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return None
    return Path(database)


def _set_sqlite_pragmas(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
    finally:
        cursor.close()


class Database:
    """One engine and session factory; safe to share between threads of a process."""

    def __init__(self, url: str) -> None:
        parsed = make_url(url)
        self.backend = parsed.get_backend_name()
        kwargs: dict[str, Any] = {}
        if self.backend == "sqlite":
            path = _sqlite_path(parsed)
            if path is not None:
                path.expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
            else:
                kwargs["poolclass"] = StaticPool  # one shared in-memory database
            kwargs["connect_args"] = {
                "check_same_thread": False,
                "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000,
            }
        else:
            kwargs["pool_pre_ping"] = True
        self.engine: Engine = create_engine(parsed, **kwargs)
        if self.backend == "sqlite":
            event.listen(self.engine, "connect", _set_sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def url(self) -> str:
        """The URL with any password masked, safe to log."""
        return self.engine.url.render_as_string(hide_password=True)

    def __repr__(self) -> str:
        return f"Database({self.url!r})"

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on error."""
        with self._sessions() as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def ping(self) -> None:
        """Run ``SELECT 1``; raises if the database cannot be reached."""
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()


@contextlib.contextmanager
def _sqlite_file_lock(db: Database) -> Iterator[None]:
    """Serialise migrations of one SQLite file across processes with a sidecar flock."""
    path = _sqlite_path(db.engine.url) if db.backend == "sqlite" else None
    if path is None:
        yield
        return
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX; rely on SQLite's own locking
        yield
        return
    lock_path = path.expanduser().resolve().with_name(path.name + ".migrate.lock")
    with open(lock_path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def migration_connection(db: Database) -> Iterator[Connection]:
    """A connection in one transaction that holds the cross-process migration lock."""
    with _sqlite_file_lock(db), db.engine.begin() as conn:
        if db.backend == "postgresql":
            conn.execute(select(func.pg_advisory_xact_lock(MIGRATION_LOCK_KEY)))
        yield conn


def _run_alembic(target: str | Database, action: str, revision: str) -> None:
    """Run ``alembic <action> <revision>`` on one connection, holding the migration lock."""
    from alembic import command
    from alembic.config import Config

    db = target if isinstance(target, Database) else Database(target)
    try:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        # Cross-process lock first; then alembic's process-global `context` proxy allows
        # one command at a time per process (uncontended unless the database is in memory).
        with migration_connection(db) as conn, _ALEMBIC_LOCK:
            config.attributes["connection"] = conn  # env.py runs on this connection
            getattr(command, action)(config, revision)
        logger.info("database %s: alembic %s %s done", db.url, action, revision)
    finally:
        if not isinstance(target, Database):
            db.dispose()


def migrate(url: str | Database, revision: str = "head") -> None:
    """Upgrade the schema to ``revision`` (default head); a no-op when already there.

    Safe to call from several processes at startup: PostgreSQL callers serialise on a
    transaction-scoped advisory lock, SQLite callers on a lock file beside the database,
    and a caller that finds the schema at head changes nothing. Pass a ``Database``
    instead of a URL to migrate an in-memory SQLite database.
    """
    _run_alembic(url, "upgrade", revision)


def downgrade(url: str | Database, revision: str = "base") -> None:
    """Downgrade the schema (tests and operators; the service never calls this)."""
    _run_alembic(url, "downgrade", revision)
