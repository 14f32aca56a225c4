"""API keys, and the key that owns each task.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from storage.coltypes import UtcDateTime

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("is_admin", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("callback_secret", sa.String(100), nullable=False),
        sa.Column("max_active_tasks", sa.Integer(), nullable=True),
        sa.Column("max_submissions_per_minute", sa.Integer(), nullable=True),
        sa.Column("rate_tokens", sa.Float(), nullable=True),
        sa.Column("rate_checked_at", UtcDateTime(), nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("revoked_at", UtcDateTime(), nullable=True),
    )
    op.create_index("ix_api_keys_name", "api_keys", ["name"])
    # Existing tasks keep owner NULL: with auth on, only admin keys see them.
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("owner_key_id", sa.String(32), nullable=True))
        batch.create_index("ix_tasks_owner_created", ["owner_key_id", "created_at"])
        batch.create_index("ix_tasks_owner_status", ["owner_key_id", "status"])


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_index("ix_tasks_owner_status")
        batch.drop_index("ix_tasks_owner_created")
        batch.drop_column("owner_key_id")
    op.drop_index("ix_api_keys_name", table_name="api_keys")
    op.drop_table("api_keys")
