"""Speaker names a person gave a task's diarized speakers (``PUT /task/{id}/speakers``).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from storage.coltypes import JsonType

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # batch mode: SQLite rebuilds the table, PostgreSQL gets a plain ALTER; rows are kept.
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("speaker_names", JsonType, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("speaker_names")
