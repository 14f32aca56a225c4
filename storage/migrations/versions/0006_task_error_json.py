"""A task's error as one JSON column (``TaskError``) instead of three text columns.

Existing failed rows keep their error: ``error_code``, ``error_message`` and
``error_detail`` are copied into ``error`` as ``{"error_code", "user_message",
"technical_detail"}`` (and back on downgrade) before the old columns go.

Revision ID: 0006
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from storage.coltypes import JsonType

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_tasks = sa.table(
    "tasks",
    sa.column("id", sa.String),
    sa.column("error", JsonType),
    sa.column("error_code", sa.String),
    sa.column("error_message", sa.Text),
    sa.column("error_detail", sa.Text),
)


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("error", JsonType, nullable=True))
    conn = op.get_bind()
    old = conn.execute(
        sa.select(
            _tasks.c.id, _tasks.c.error_code, _tasks.c.error_message, _tasks.c.error_detail
        ).where(_tasks.c.error_code.is_not(None))
    ).all()
    for task_id, code, message, detail in old:
        error = {
            "error_code": code,
            "user_message": message or "",
            "technical_detail": detail or "",
        }
        conn.execute(sa.update(_tasks).where(_tasks.c.id == task_id).values(error=error))
    # batch mode: SQLite rebuilds the table, PostgreSQL gets plain ALTERs; rows are kept.
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("error_detail")
        batch.drop_column("error_message")
        batch.drop_column("error_code")


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("error_code", sa.String(64), nullable=True))
        batch.add_column(sa.Column("error_message", sa.Text(), nullable=True))
        batch.add_column(sa.Column("error_detail", sa.Text(), nullable=True))
    conn = op.get_bind()
    rows = conn.execute(
        sa.select(_tasks.c.id, _tasks.c.error).where(_tasks.c.error.is_not(None))
    ).all()
    for task_id, error in rows:
        if not isinstance(error, dict) or not error.get("error_code"):
            continue  # JSON null, or not an error this revision can hold
        conn.execute(
            sa.update(_tasks)
            .where(_tasks.c.id == task_id)
            .values(
                error_code=str(error["error_code"])[:64],
                error_message=error.get("user_message", ""),
                error_detail=error.get("technical_detail", ""),
            )
        )
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("error")
