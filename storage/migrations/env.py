"""Alembic environment: runs on a connection handed over by ``storage.db.migrate`` or, from
the CLI, on the URL of ``Settings().resolved_database_url()``
(env ``WHISPERX_SERVE_DATABASE_URL``)."""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection

from storage.models import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url")
    if url:
        return str(url)
    from common.settings import Settings

    return Settings.model_validate({}).resolved_database_url()  # env vars apply


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    # CLI: same SQLite pragmas and cross-process lock as the service's own migrate().
    from storage.db import Database, migration_connection

    db = Database(_url())
    try:
        with migration_connection(db) as conn:
            _run(conn)
    finally:
        db.dispose()


if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)

if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
