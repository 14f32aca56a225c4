"""Task inputs for single-stage tasks, cancellation requests, and list-filter indexes.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from storage.coltypes import JsonType, UtcDateTime

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # batch mode: SQLite rebuilds the table, PostgreSQL gets plain ALTERs; rows are kept.
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("inputs", JsonType, nullable=True))
        batch.add_column(sa.Column("cancel_requested_at", UtcDateTime, nullable=True))
        batch.create_index("ix_tasks_task_type", ["task_type"])


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_index("ix_tasks_task_type")
        batch.drop_column("cancel_requested_at")
        batch.drop_column("inputs")
