"""Uploaded audio in a blob store: ``tasks.audio_path`` becomes ``tasks.audio_key``, and the
``blobs``/``blob_chunks`` tables hold the files when the database is the store.

Existing rows keep working with the local directory store: their absolute path under
``<data_dir>/uploads`` becomes the file name there, which is the local store's key.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from storage.coltypes import UtcDateTime

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.alter_column("audio_path", new_column_name="audio_key", existing_type=sa.String(1024))
    tasks = sa.table("tasks", sa.column("id", sa.String), sa.column("audio_key", sa.String))
    conn = op.get_bind()
    legacy = conn.execute(
        sa.select(tasks.c.id, tasks.c.audio_key).where(tasks.c.audio_key.like("%/%"))
    ).all()
    for task_id, path in legacy:
        conn.execute(
            tasks.update()
            .where(tasks.c.id == task_id)
            .values(audio_key=posixpath.basename(path) or None)
        )
    op.create_table(
        "blobs",
        sa.Column("key", sa.String(128), primary_key=True),
        sa.Column("size", sa.BigInteger(), nullable=True),
        sa.Column("chunk_size", sa.Integer(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
    )
    op.create_table(
        "blob_chunks",
        sa.Column(
            "key",
            sa.String(128),
            sa.ForeignKey("blobs.key", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("seq", sa.Integer(), primary_key=True),
        sa.Column("data", sa.LargeBinary(), nullable=False),
    )


def downgrade() -> None:
    """Drops the database store's files; the keys stay as they are (file names)."""
    op.drop_table("blob_chunks")
    op.drop_table("blobs")
    with op.batch_alter_table("tasks") as batch:
        batch.alter_column("audio_key", new_column_name="audio_path", existing_type=sa.String(1024))
