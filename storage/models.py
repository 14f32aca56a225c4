"""The ``tasks`` table (one row per transcription task, the durable copy of its state), the
``api_keys`` table (who may call the service; tasks belong to the key that made them) and
the ``blobs``/``blob_chunks`` tables (uploaded audio when the database is the blob store)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, synonym

from common.schemas import TaskProgressStage, TaskPublic, utcnow
from storage.coltypes import JsonType, UtcDateTime


class Base(DeclarativeBase):
    pass


class TaskRow(Base):
    __tablename__ = "tasks"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    identifier: Mapped[str] = synonym("id")
    """The name the API gives ``id`` (so the row validates into ``TaskPublic`` as is)."""
    status: Mapped[str] = mapped_column(String(16), index=True)
    task_type: Mapped[str] = mapped_column(String(32), index=True)
    file_name: Mapped[str | None] = mapped_column(String(255))
    audio_key: Mapped[str | None] = mapped_column(String(1024))
    """The upload's key in the blob store (``storage.blobs``); ``None``: no audio."""
    audio_duration: Mapped[float | None] = mapped_column(Float)
    params: Mapped[dict[str, Any]] = mapped_column(JsonType)
    inputs: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    """Single-stage tasks' given inputs (a transcript to align, diarization to combine)."""
    result: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    speaker_names: Mapped[dict[str, str] | None] = mapped_column(JsonType)
    """Display names for diarized labels (``SPEAKER_00`` → ``Alice``); the result keeps labels."""
    error: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    """Why the task failed: a ``TaskError`` as JSON (``error_code``, ``user_message``,
    ``technical_detail``); ``None`` unless failed."""
    progress_percentage: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    progress_stage: Mapped[str] = mapped_column(
        String(16), default=TaskProgressStage.queued.value, server_default="queued"
    )
    progress_seq: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    progress_message: Mapped[str | None] = mapped_column(Text)
    timings: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime, index=True)
    cancel_requested_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    owner_key_id: Mapped[str | None] = mapped_column(String(32))
    """The API key that submitted the task; ``None`` when auth was off (or the Ray-native
    DeploymentHandle path): such tasks are visible to admin keys only once auth is on."""

    __table_args__ = (
        Index("ix_tasks_owner_created", "owner_key_id", "created_at"),
        Index("ix_tasks_owner_status", "owner_key_id", "status"),
    )

    def __repr__(self) -> str:
        return f"TaskRow(id={self.id!r}, status={self.status!r}, attempts={self.attempts})"

    def to_public(self) -> TaskPublic:
        return TaskPublic.model_validate(self, from_attributes=True)


class ApiKeyRow(Base):
    """One API key. Only the SHA-256 of the secret is stored; the secret is shown once."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    """Hex SHA-256 of the whole key (``wxs_…``)."""
    prefix: Mapped[str] = mapped_column(String(16))
    """The key's first characters, to tell keys apart in listings (not enough to use it)."""
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    callback_secret: Mapped[str] = mapped_column(String(100))
    """HMAC-SHA256 secret that signs this key's task callbacks (receivers hold a copy)."""
    max_active_tasks: Mapped[int | None] = mapped_column(Integer)
    max_submissions_per_minute: Mapped[int | None] = mapped_column(Integer)
    rate_tokens: Mapped[float | None] = mapped_column(Float)
    """The per-minute limit's token bucket: submissions left, as of ``rate_checked_at``
    (``None``: full). Deleting tasks gives none back."""
    rate_checked_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime)

    def __repr__(self) -> str:  # never the hash or the callback secret
        return f"ApiKeyRow(id={self.id!r}, name={self.name!r}, prefix={self.prefix!r})"


class BlobRow(Base):
    """One stored file of the database blob store; its bytes are in ``blob_chunks``."""

    __tablename__ = "blobs"

    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    size: Mapped[int | None] = mapped_column(BigInteger)
    """Total bytes; ``None`` while the upload is still being written."""
    chunk_size: Mapped[int] = mapped_column(Integer)
    """Bytes per chunk (every chunk but the last is this long)."""
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class BlobChunkRow(Base):
    __tablename__ = "blob_chunks"

    key: Mapped[str] = mapped_column(
        String(128), ForeignKey("blobs.key", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)
